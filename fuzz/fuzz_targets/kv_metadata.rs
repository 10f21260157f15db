#![no_main]
//! Property checks: see `chacha::fuzzing::kv_metadata`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chacha::fuzzing::kv_metadata(data));
