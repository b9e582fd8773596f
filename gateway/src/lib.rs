//! Herald: a horizontally scalable pub/sub notification gateway.
//!
//! Data flows one way:
//!
//! ```text
//! transport ──> session ──> node ──> broker (memory | redis) ──> hub ──> sessions
//!   (ws)        (core)  api ──┘     (assigns epoch/offset)     (fan-out of one
//!                                                               shared publication)
//! ```
//!
//! - `transport`: decodes commands from a connection and writes what the
//!   session queues, in its wire format (`ws`: Herald v1 over WebSocket;
//!   `socketio`: Socket.IO v5 over Engine.IO v4).
//! - `session`: the transport-independent protocol core, one per connection.
//! - `hub`: this node's channel → sessions index and fan-out; synchronous.
//!   Each `publication` is shared by every subscriber and encoded once per
//!   wire format.
//! - `hooks`: HTTP calls to the backend at connect, subscribe, emit and
//!   refresh, made by `session`.
//! - `node`: first/last local subscriber ↔ broker subscribe/unsubscribe.
//! - `broker`: publish + position assignment + history, atomic per channel;
//!   `recovery` beside it decides what a returning client may replay.
//! - `api`: HTTP publish API; [`server`]: listeners and lifecycle.
//! - [`config`], `metrics`, `token`, [`auth`], `channels`, [`clock`],
//!   `signal`: leaves every layer may use.
//!
//! The public surface is what the `herald` binary and the tests need.

mod api;
pub mod auth;
mod broker;
mod channels;
pub mod clock;
pub mod config;
mod hooks;
mod hub;
mod metrics;
mod node;
mod outbox;
mod presence;
mod proxy_protocol;
mod publication;
mod query;
mod recovery;
pub mod server;
mod session;
mod signal;
pub mod telemetry;
mod token;
mod transport;

/// Fuzzing entry point (the `frames` target in `fuzz/`, and the corpus
/// replay test): reads arbitrary bytes as a client's WebSocket stream.
#[doc(hidden)]
pub use transport::ws::read::fuzz_frames;

/// Fuzzing entry point (the `socketio` target in `fuzz/`, and the corpus
/// replay test): reads arbitrary bytes as one Engine.IO/Socket.IO packet.
#[doc(hidden)]
pub use transport::socketio::packet::fuzz_socketio;

/// Fuzzing entry point (the `proxy` target in `fuzz/`, and the corpus replay
/// test): reads arbitrary bytes as a PROXY protocol header.
#[doc(hidden)]
pub use proxy_protocol::fuzz_proxy;
