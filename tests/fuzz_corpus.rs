//! The fuzz corpus and every crash the fuzzers ever found, replayed through the same
//! checks the fuzz targets run (fuzz/harness.rs), as ordinary tests: a fixed crash stays
//! fixed without a nightly toolchain. `make fuzz` grows the corpus; a crash found there
//! is copied to fuzz/regressions/<target>/ once fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

include!("../fuzz/harness.rs");

fn replay(target: &str, run: fn(&[u8])) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in [root.join("corpus").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            n += 1;
        }
    }
    assert!(n >= 5, "{target}: the corpus went missing ({n} inputs)");
}

#[test]
fn config_corpus() {
    replay("config", config);
}

#[test]
fn sse_corpus() {
    replay("sse", sse);
}

#[test]
fn translate_corpus() {
    replay("translate", translate);
}

#[test]
fn body_corpus() {
    replay("body", body);
}

#[test]
fn guard_corpus() {
    replay("guard", guard);
}
