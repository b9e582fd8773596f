//! Test harness shared by the gateway's integration tests and the load
//! tool's scenario tests: real `herald` processes ([`Herald`], [`Gateway`]),
//! real `redis-server` processes ([`Redis`], [`Sentinels`],
//! [`RedisCluster`]), a protocol-speaking WebSocket client ([`Client`]) and
//! raw HTTP helpers, and helper HTTP processes ([`Backend`]).
//!
//! Servers bind port 0 and report the port they got; `redis-server` cannot,
//! so it takes a random port outside the kernel's ephemeral range and moves
//! on when that one is taken. Every process is killed by PID when its handle
//! drops. Waits are on observable conditions ([`eventually`]), never on a
//! fixed delay.

mod backend;
mod client;
mod http;
mod node;
mod redis;
mod tls;

pub use backend::Backend;
pub use client::{Client, Event};
pub use http::{http, http_get, http_post, http_post_key, http_post_raw};
pub use node::{Gateway, Herald};
pub use redis::{Redis, RedisCluster, Sentinels};
pub use tls::TlsFiles;

use std::time::{Duration, Instant};

/// How long any single wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `f` every 25 ms until it returns true; fails the test after [`TIMEOUT`].
pub async fn eventually(what: &str, f: impl AsyncFnMut() -> bool) {
    eventually_within(what, TIMEOUT, f).await;
}

/// Like [`eventually`], for conditions that take longer than [`TIMEOUT`]
/// by nature (a Redis Cluster's failure detection and election).
pub async fn eventually_within(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
