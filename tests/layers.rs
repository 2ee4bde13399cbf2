//! The crate's top-level modules import one way, down the layers the README names.
//!
//! The README's Layout table is the one statement of the order (docs/layout.md includes
//! it): this test reads it, then every `crate::<module>` path in src/ (outside
//! `#[cfg(test)]` code). It fails on an import that reaches up a layer, on any import
//! cycle, and on a module the table does not place or places but src/ does not have. So
//! the layering cannot rot silently, and the documented order cannot drift from the code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `module -> layer`, from the rows (`| 3 | `stream` | ... |`) of the README's table
/// between its `ANCHOR: layers` and `ANCHOR_END: layers` markers.
fn layers() -> BTreeMap<String, u32> {
    let text = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let table = text
        .split("ANCHOR: layers")
        .nth(1)
        .and_then(|rest| rest.split("ANCHOR_END: layers").next())
        .expect("README.md has the layers table between ANCHOR: layers and ANCHOR_END: layers");
    let mut out = BTreeMap::new();
    for line in table.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        let (Some(layer), Some(module)) = (cells.first(), cells.get(1)) else {
            continue;
        };
        let Ok(layer) = layer.parse::<u32>() else { continue };
        let module = module.trim_matches('`');
        assert!(
            out.insert(module.to_owned(), layer).is_none(),
            "{module} is in the layers table twice"
        );
    }
    assert!(!out.is_empty(), "the README's layers table has no rows");
    out
}

/// The top-level modules each top-level module names through `crate::`, read by parsing
/// src/ with syn: `use` trees, paths in types and expressions, and `crate::` inside macro
/// calls. Items under `#[cfg(test)]` are skipped, and so are the files of
/// `#[cfg(test)] mod name;`: tests may reach anywhere.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("src");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("read src") {
        let path = entry.expect("dir entry").path();
        let name = path.file_stem().expect("a name").to_string_lossy().into_owned();
        if name == "main" || name == "lib" {
            continue;
        }
        let file = if path.is_dir() {
            path.join("mod.rs")
        } else {
            path.clone()
        };
        let mut seen = BTreeSet::new();
        module_file(&file, &path, &mut seen);
        seen.remove(&name);
        edges.insert(name, seen);
    }
    edges
}

/// Reads one module file, and the files of the modules it declares (`mod x;`, in `dir`).
fn module_file(file: &Path, dir: &Path, seen: &mut BTreeSet<String>) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut v = Crate {
        seen: BTreeSet::new(),
        children: Vec::new(),
    };
    syn::visit::Visit::visit_file(&mut v, &ast);
    seen.extend(v.seen);
    for child in v.children {
        let (as_file, as_dir) = (dir.join(format!("{child}.rs")), dir.join(&child));
        if as_file.exists() {
            module_file(&as_file, &as_dir, seen);
        } else {
            module_file(&as_dir.join("mod.rs"), &as_dir, seen);
        }
    }
}

struct Crate {
    seen: BTreeSet<String>,
    /// `mod x;` declared outside test code.
    children: Vec<String>,
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string() == "test"))
}

impl<'ast> syn::visit::Visit<'ast> for Crate {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Type(t) => &t.attrs,
            syn::Item::Macro(m) => &m.attrs,
            _ => &[],
        };
        if is_test(attrs) {
            return;
        }
        if let syn::Item::Mod(m) = item {
            if m.content.is_none() {
                self.children.push(m.ident.to_string());
            }
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        if let syn::ImplItem::Fn(f) = item {
            if is_test(&f.attrs) {
                return;
            }
        }
        syn::visit::visit_impl_item(self, item);
    }

    fn visit_use_tree(&mut self, tree: &'ast syn::UseTree) {
        if let syn::UseTree::Path(p) = tree {
            if p.ident == "crate" {
                collect_use(&p.tree, &mut self.seen);
                return;
            }
        }
        syn::visit::visit_use_tree(self, tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let mut segments = path.segments.iter();
        if let (Some(first), Some(second)) = (segments.next(), segments.next()) {
            if first.ident == "crate" {
                self.seen.insert(second.ident.to_string());
            }
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Macro arguments are tokens, not paths: `crate :: x` in them names `x`.
        let tokens = mac.tokens.to_string();
        self.seen
            .extend(segments(&tokens.replace(" :: ", "::").replace(":: ", "::")));
        syn::visit::visit_macro(self, mac);
    }
}

/// The modules a `use crate::...` tree names at its first level.
fn collect_use(tree: &syn::UseTree, out: &mut BTreeSet<String>) {
    match tree {
        syn::UseTree::Path(p) => {
            out.insert(p.ident.to_string());
        }
        syn::UseTree::Name(n) => {
            out.insert(n.ident.to_string());
        }
        syn::UseTree::Rename(r) => {
            out.insert(r.ident.to_string());
        }
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| collect_use(t, out)),
        syn::UseTree::Glob(_) => {}
    }
}

/// The first path segment after each `crate::` in `code`; each item of a `crate::{..}` group.
fn segments(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            out.insert(first_segment(rest));
            continue;
        };
        let mut depth = 0;
        let mut item = String::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.insert(first_segment(&item));
                    item.clear();
                    continue;
                }
                _ => {}
            }
            if depth == 0 {
                item.push(c);
            }
        }
        out.insert(first_segment(&item));
    }
    out
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Strongly connected groups of more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.edges.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut group = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                group.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                t.out.push(group);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn top_level_modules_import_only_down_the_layers_and_never_in_a_cycle() {
    let layers = layers();
    let edges = imports();
    let mut problems = Vec::new();
    for (module, targets) in &edges {
        let Some(&from) = layers.get(module) else {
            problems.push(format!("src/{module} is in no layer of the README's layers table"));
            continue;
        };
        for target in targets {
            match layers.get(target) {
                Some(&to) if to > from => problems.push(format!(
                    "{module} (layer {from}) imports {target} (layer {to}): up a layer"
                )),
                Some(_) => {}
                None if edges.contains_key(target) => problems.push(format!("{target} is in no layer")),
                None => {} // not a module of this crate (a macro's `crate::` path, say)
            }
        }
    }
    for group in cycles(&edges) {
        problems.push(format!("import cycle: {}", group.join(", ")));
    }
    for module in layers.keys() {
        if !edges.contains_key(module) {
            problems.push(format!(
                "the README's layers table places {module}, which is not a top-level module of src/"
            ));
        }
    }
    assert!(problems.is_empty(), "layering broken:\n  {}", problems.join("\n  "));
}

#[test]
fn the_reader_finds_grouped_and_nested_imports_and_cycles() {
    // The reader this test relies on, on the forms the crate uses; test code is skipped
    // wherever it stands in the file.
    let ast = syn::parse_file(
        "use crate::{a::{X, Y}, b};\n#[cfg(test)]\nmod tests { use crate::t; }\n\
         fn f() -> crate::c::Z { crate::d::g(); tracing::info!(x = ?crate::e::H); }\n\
         #[cfg(test)]\nfn helper() { crate::u::v(); }",
    )
    .expect("parses");
    let mut v = Crate {
        seen: BTreeSet::new(),
        children: Vec::new(),
    };
    syn::visit::Visit::visit_file(&mut v, &ast);
    let want: BTreeSet<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
    assert_eq!(v.seen, want);
    let edges = BTreeMap::from([
        ("x".to_owned(), BTreeSet::from(["y".to_owned()])),
        ("y".to_owned(), BTreeSet::from(["x".to_owned()])),
        ("z".to_owned(), BTreeSet::from(["x".to_owned()])),
    ]);
    assert_eq!(cycles(&edges), vec![vec!["x".to_owned(), "y".to_owned()]]);
}
