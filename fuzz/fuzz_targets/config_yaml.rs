#![no_main]
//! Fuzz target: see kubepulse::fuzzing::config_yaml.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kubepulse::fuzzing::config_yaml(data);
});
