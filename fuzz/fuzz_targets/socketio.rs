//! One Engine.IO / Socket.IO text message through every packet decoder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzz_socketio(data));
