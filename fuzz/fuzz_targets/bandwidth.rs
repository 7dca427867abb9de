#![no_main]
//! Fuzz target: see kubepulse::fuzzing::bandwidth.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kubepulse::fuzzing::bandwidth(data);
});
