#![no_main]
//! Fuzz target: see kubepulse::fuzzing::http_request.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kubepulse::fuzzing::http_request(data);
});
