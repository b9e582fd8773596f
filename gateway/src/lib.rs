//! Herald: a horizontally scalable pub/sub notification gateway.
//!
//! Data flows one way:
//!
//! ```text
//! session ──> node ──> broker (memory | redis) ──> hub ──> sessions
//!    api  ──┘        (assigns epoch/offset)      (fan-out of one shared frame)
//! ```
//!
//! - [`session`]: one reader/writer task pair per WebSocket, bounded outbound queue
//!   ([`wsread`] parses its incoming frames).
//! - [`hub`]: this node's channel → sessions index and fan-out; synchronous.
//! - [`node`]: first/last local subscriber ↔ broker subscribe/unsubscribe.
//! - [`broker`]: publish + position assignment + history, atomic per channel;
//!   [`recovery`] beside it decides what a returning client may replay.
//! - [`api`]: HTTP publish API; [`server`]: listeners and lifecycle.
//! - [`config`], [`metrics`], [`token`], [`auth`], [`channels`]: leaves every
//!   layer may use (reconnect tokens, JWTs, channel rules).

pub mod api;
pub mod auth;
pub mod broker;
pub mod channels;
pub mod config;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod recovery;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod token;
pub mod wsread;
