//! Fuzz target: spool_scan.
//! See `sluice_fuzz::checks::spool_scan`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::checks::spool_scan(data));
