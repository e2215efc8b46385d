//! Valid batches built from the input, encoded by the real encoder, then damaged (the CBOR
//! body before compression, or the whole message).
#![no_main]

#[path = "../../tests/fuzz_smoke/targets.rs"]
#[allow(dead_code)]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = targets::Input::new(data);
    targets::check_wire(&targets::gen_wire_message(&mut input));
});
