//! cargo-fuzz target `review`: see `tailguard_fuzz::review` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailguard_fuzz::review(data));
