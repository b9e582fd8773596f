//! Replays the fuzz corpus (`fuzz/corpus/`) through the same entry points
//! the cargo-fuzz targets use, on stable Rust in every test run: whatever a
//! fuzzing session once found interesting must never panic.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read");
        run(&data);
        n += 1;
    }
    n
}

#[test]
fn command_corpus_never_panics() {
    assert!(replay("command", herald_proto::fuzz_command) >= 20);
}

#[test]
fn frames_corpus_never_panics() {
    assert!(replay("frames", herald::fuzz_frames) >= 10);
}

#[test]
fn proxy_corpus_never_panics() {
    assert!(replay("proxy", herald::fuzz_proxy) >= 10);
}

#[test]
fn socketio_corpus_never_panics() {
    assert!(replay("socketio", herald::fuzz_socketio) >= 10);
}
