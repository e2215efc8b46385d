//! Chunk headers (the input as text) and reassembly traffic driven by the input.
#![no_main]

#[path = "../../tests/fuzz_smoke/targets.rs"]
#[allow(dead_code)]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    targets::check_chunk_header(&String::from_utf8_lossy(data));
    targets::check_reassembly(&mut targets::Input::new(data), data.len() / 8 + 1);
});
