//! Fuzz target: data_reader.
//! See `sluice_fuzz::checks::data_reader`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::checks::data_reader(data));
