#![no_main]
//! Fuzz target: see kubepulse::fuzzing::http_response_head.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kubepulse::fuzzing::http_response_head(data);
});
