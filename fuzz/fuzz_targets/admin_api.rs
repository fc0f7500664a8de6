//! Fuzz target: admin_api.
//! See `sluice_fuzz::checks::admin_api`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::checks::admin_api(data));
