#![no_main]

#[path = "../src/decode_check.rs"]
mod decode_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decode_check::check(data));
