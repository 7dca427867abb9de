#![no_main]
//! Fuzz target: see kubepulse::fuzzing::probe_plan.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kubepulse::fuzzing::probe_plan(data);
});
