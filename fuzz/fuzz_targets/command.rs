//! The command parser: one WebSocket text frame's bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_proto::fuzz_command(data));
