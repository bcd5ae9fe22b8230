//! cargo-fuzz target `review_structured`: see `tailguard_fuzz::review_structured` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailguard_fuzz::review_structured(data));
