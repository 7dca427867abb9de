#![no_main]
//! Fuzz target: see kubepulse::fuzzing::icmp.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kubepulse::fuzzing::icmp(data);
});
