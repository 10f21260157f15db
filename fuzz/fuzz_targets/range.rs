#![no_main]
//! Property checks: see `chacha::fuzzing::range`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chacha::fuzzing::range(data));
