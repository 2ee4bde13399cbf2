//! The crate's top-level modules import one way, down the layers docs/layout.md names.
//!
//! docs/layout.md's "Layers" section is the one statement of the order: this test reads
//! its table and its list of upward imports still to remove, then every `crate::<module>`
//! path in src/ (outside `#[cfg(test)]` code). It fails on an upward import not in that
//! list, on a listed one the code no longer has (so the list only shrinks), on any import
//! cycle that does not run through a listed import, and on a module the table does not
//! place. So the layering cannot rot silently, and the documented order cannot drift
//! from the code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// docs/layout.md's Layers section: `module -> layer` from its table's rows
/// (`| 3 | `guard` | ... |`), and the upward imports still to remove, from its list
/// (`- `stream` -> `provider`: why`).
fn layers() -> (BTreeMap<String, u32>, BTreeSet<(String, String)>) {
    let text = std::fs::read_to_string(root().join("docs/layout.md")).expect("docs/layout.md");
    let section = text
        .split("\n## Layers")
        .nth(1)
        .expect("docs/layout.md has a '## Layers' section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut out = BTreeMap::new();
    let mut upward = BTreeSet::new();
    for line in section.lines() {
        if let Some(item) = line.strip_prefix("- `") {
            if let Some((from, rest)) = item.split_once("` -> `") {
                let to = rest.split('`').next().unwrap_or("");
                upward.insert((from.to_owned(), to.to_owned()));
            }
            continue;
        }
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        let (Some(layer), Some(module)) = (cells.first(), cells.get(1)) else {
            continue;
        };
        let Ok(layer) = layer.parse::<u32>() else { continue };
        let module = module.trim_matches('`').trim_end_matches('/').trim_end_matches(".rs");
        let module = module.strip_prefix("src/").unwrap_or(module);
        assert!(
            out.insert(module.to_owned(), layer).is_none(),
            "{module} is in the Layers table twice"
        );
    }
    assert!(!out.is_empty(), "docs/layout.md's Layers table has no rows");
    (out, upward)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules each top-level module names through `crate::`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .expect("a component")
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_owned();
        if top == "main" || top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        // Tests may reach anywhere; comments name modules freely.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let code: String = code
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let targets = edges.entry(top.clone()).or_default();
        targets.extend(segments(&code));
        targets.remove(&top);
        targets.remove("");
    }
    edges
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
    let (layers, upward) = layers();
    let mut edges = imports();
    let mut problems = Vec::new();
    for (from, to) in &upward {
        if !edges.get(from).is_some_and(|t| t.contains(to)) {
            problems.push(format!(
                "docs/layout.md lists {from} -> {to}, which the code no longer has: strike it"
            ));
        }
    }
    for (module, targets) in &edges {
        let Some(&from) = layers.get(module) else {
            problems.push(format!("src/{module} is in no layer of docs/layout.md's Layers table"));
            continue;
        };
        for target in targets {
            match layers.get(target) {
                Some(&to) if to > from && !upward.contains(&(module.clone(), target.clone())) => problems.push(
                    format!("{module} (layer {from}) imports {target} (layer {to}): up a layer"),
                ),
                Some(_) => {}
                None if edges.contains_key(target) => problems.push(format!("{target} is in no layer")),
                None => {} // not a module of this crate (a macro's `crate::` path, say)
            }
        }
    }
    // A cycle through a listed upward import is that import's; any other is new.
    for (from, to) in &upward {
        if let Some(targets) = edges.get_mut(from) {
            targets.remove(to);
        }
    }
    for group in cycles(&edges) {
        problems.push(format!("import cycle: {}", group.join(", ")));
    }
    for module in layers.keys() {
        if !edges.contains_key(module) {
            problems.push(format!(
                "docs/layout.md places {module}, which is not a top-level module of src/"
            ));
        }
    }
    assert!(problems.is_empty(), "layering broken:\n  {}", problems.join("\n  "));
}

#[test]
fn the_reader_finds_grouped_and_nested_imports_and_cycles() {
    // The reader this test relies on, on the forms the crate uses.
    let seen = segments("use crate::{a::{X, Y}, b, c::Z};\nfn f() { crate::d::g(); }");
    let want: BTreeSet<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, want);
    let edges = BTreeMap::from([
        ("x".to_owned(), BTreeSet::from(["y".to_owned()])),
        ("y".to_owned(), BTreeSet::from(["x".to_owned()])),
        ("z".to_owned(), BTreeSet::from(["x".to_owned()])),
    ]);
    assert_eq!(cycles(&edges), vec![vec!["x".to_owned(), "y".to_owned()]]);
}
