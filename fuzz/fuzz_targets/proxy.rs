//! The PROXY protocol header reader, on arbitrary connection prefixes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzz_proxy(data));
