#![no_main]
//! Property checks: see `chacha::fuzzing::request_head`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chacha::fuzzing::request_head(data));
