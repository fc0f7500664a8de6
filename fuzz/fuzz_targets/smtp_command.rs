//! Fuzz target: smtp_command.
//! See `sluice_fuzz::checks::smtp_command`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::checks::smtp_command(data));
