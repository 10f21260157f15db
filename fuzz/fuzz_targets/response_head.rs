#![no_main]
//! Property checks: see `chacha::fuzzing::response_head`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chacha::fuzzing::response_head(data));
