//! Fuzz target: smtp_session.
//! See `sluice_fuzz::checks::smtp_session`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::checks::smtp_session(data));
