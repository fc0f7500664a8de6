//! Fuzz target: cr_validation.
//! See `sluice_fuzz::checks::cr_validation`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::checks::cr_validation(data));
