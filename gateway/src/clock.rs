//! Clock: wall-clock time as the protocol states it (UNIX seconds and milliseconds).
//!
//! A leaf every layer may use: token expiries, `expires_at` and the broker
//! lag are wall-clock figures. Deadlines inside a node use
//! `tokio::time::Instant` instead, so tests can pause time.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
