//! A valid manifest with fields replaced, removed or added as the input directs.
#![no_main]

#[path = "../../tests/fuzz_smoke/targets.rs"]
#[allow(dead_code)]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = targets::Input::new(data);
    targets::check_manifest(&targets::gen_manifest(&mut input));
});
