//! A complete valid config, mutated line by line as the input directs.
#![no_main]

#[path = "../../tests/fuzz_smoke/targets.rs"]
#[allow(dead_code)]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = targets::Input::new(data);
    targets::check_config(&targets::gen_config(&mut input));
});
