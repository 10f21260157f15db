#![no_main]
//! Property checks: see `chacha::fuzzing::config`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chacha::fuzzing::config(data));
