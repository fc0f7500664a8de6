//! Fuzz target: headers.
//! See `sluice_fuzz::checks::headers`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::checks::headers(data));
