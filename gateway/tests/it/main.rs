//! Herald's integration tests, one binary: real `herald` processes (and a
//! real `redis-server` where a cluster is needed) driven through real
//! sockets, one module per area. The harness is `herald-testkit`, shared
//! with the load tool's tests; [`common`] binds it to this package's binary.
//!
//! Run one area with a filter: `cargo test -p herald --test it cluster::`.

mod common;

mod auth;
mod cli;
mod cluster;
mod connections;
mod dashboard;
mod docs_examples;
mod fuzz_corpus;
mod hooks;
mod hostile;
mod presence;
mod recovery;
mod redis_cluster;
mod redis_sentinel;
mod redis_shards;
mod redis_tls;
mod resume;
mod single_node;
mod sse;
mod telemetry;
mod webhooks;
