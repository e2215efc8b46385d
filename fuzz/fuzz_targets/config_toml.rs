//! Arbitrary text into the config loader (parse, then validate).
#![no_main]

#[path = "../../tests/fuzz_smoke/targets.rs"]
#[allow(dead_code)]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        targets::check_config(text);
    }
});
