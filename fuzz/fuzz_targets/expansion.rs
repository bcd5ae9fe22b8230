//! cargo-fuzz target `expansion`: see `tailguard_fuzz::expansion` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailguard_fuzz::expansion(data));
