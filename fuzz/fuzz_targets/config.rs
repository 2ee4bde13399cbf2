#![no_main]
//! See ../harness.rs for what this target checks.

include!("../harness.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| config(data));
