//! Arbitrary bytes into the wire decoder (seed it with real messages: fuzz/README.md).
#![no_main]

#[path = "../../tests/fuzz_smoke/targets.rs"]
#[allow(dead_code)]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::check_wire(data));
