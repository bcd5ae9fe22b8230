//! cargo-fuzz target `manifest`: see `tailguard_fuzz::manifest` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailguard_fuzz::manifest(data));
