//! Transports: each one carries sessions over one kind of connection.
//!
//! The top of the data flow. A transport decodes client commands from its
//! connection and hands them to the session core (`session`), and writes
//! what the core queues (replies, shared publications, the ending) in its
//! own wire format. It holds no protocol logic and never touches `node`,
//! `hub` or `broker`.
//!
//! - [`ws`]: Herald protocol v1, JSON text frames over WebSocket; also the
//!   connection machinery (reader loop, writer task) every protocol over
//!   WebSocket shares.
//! - [`socketio`]: Socket.IO v5 over Engine.IO v4: the WebSocket transport
//!   (on `ws`'s machinery) and HTTP long-polling, with the upgrade from
//!   polling to WebSocket.
//! - [`sse`]: Server-Sent Events over plain HTTP/1.1 (one-way: the request
//!   names the channels), resumable from `Last-Event-ID`.

pub(crate) mod socketio;
pub(crate) mod sse;
pub(crate) mod ws;
