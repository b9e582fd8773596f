//! The frame reader, then the command parser on every text frame it yields.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzz_frames(data));
