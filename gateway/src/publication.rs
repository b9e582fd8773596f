//! Publication: one message as the hub hands it to every local subscriber.
//!
//! Sits between `broker`/`hub` (which build one per publication) and the
//! transports (which write it). A publication is shared by reference, never
//! copied per subscriber, and it is encoded at most once per wire format:
//! the Herald v1 `message` frame arrives complete from the broker (built in
//! process, or inside Redis by the publish script), and any other format is
//! made from it by the first subscriber that needs it, then kept in a
//! `OnceLock` slot for every other subscriber of that format (Socket.IO's
//! `42/channel,[...]` text, the SSE `event:`/`data:` lines:
//! [`Publication::encoded`]).

use bytes::Bytes;
use herald_proto::Reply;
use std::sync::{Arc, OnceLock};

/// A wire format a transport writes publications in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// Herald protocol v1 JSON text frames (WebSocket).
    Herald,
    /// Socket.IO v5 over Engine.IO v4 (`transport::socketio`). Replies are
    /// queued as Herald v1 JSON, like [`Wire::Herald`]: they concern one
    /// session, and its writer turns each into the Socket.IO packet it
    /// answers (an ack, a CONNECT reply). Publications get their own text.
    SocketIo,
    /// Server-Sent Events (`transport::sse`). Replies are queued as Herald
    /// v1 JSON too, read by the stream's writer. Publications are shared as
    /// their `event:` + `data:` lines ([`SseEvent`]); the `id:` line is the
    /// writer's, per stream.
    Sse,
}

impl Wire {
    /// The `protocol` metric label of connections speaking this format.
    pub(crate) fn protocol(self) -> crate::metrics::Protocol {
        match self {
            Self::Herald => crate::metrics::Protocol::Herald,
            Self::SocketIo => crate::metrics::Protocol::Socketio,
            Self::Sse => crate::metrics::Protocol::Sse,
        }
    }

    /// Encodes a reply or notice for this format.
    pub(crate) fn reply(self, reply: &Reply<'_>) -> Box<[u8]> {
        match self {
            Self::Herald | Self::SocketIo | Self::Sse => reply.to_vec().into_boxed_slice(),
        }
    }
}

/// One publication of one channel, at its broker-assigned position.
///
/// A format other than Herald v1 gets a `OnceLock<Bytes>` field here, filled
/// by [`Publication::encoded`] on first use, so that however many
/// subscribers speak it, the publication is encoded for it once.
#[derive(Debug)]
pub(crate) struct Publication {
    pub(crate) epoch: Arc<str>,
    pub(crate) offset: u64,
    /// The Herald v1 `message` frame: `{"op":"message","channel",...,"offset"}`.
    herald: Bytes,
    /// The Socket.IO `42/channel,["event",data,"EPOCH:OFFSET"]` text, made
    /// on first use.
    socketio: OnceLock<Box<[u8]>>,
    /// The SSE event's shared lines, made on first use.
    sse: OnceLock<SseEvent>,
}

/// A publication as every SSE stream shares it. Its `id:` line cannot be
/// shared: it carries the position of *every* channel of the stream (so one
/// `Last-Event-ID` resumes them all), which differs from stream to stream.
/// So only `event:` + `data:` are encoded here, once per publication, and
/// each stream's writer appends its own `id:` line and the blank line that
/// ends the event, keeping its positions up to date from `channel`.
#[derive(Debug, Default)]
pub(crate) struct SseEvent {
    pub(crate) channel: Box<str>,
    /// `event: NAME\ndata: JSON\n`.
    pub(crate) lines: Box<[u8]>,
}

impl Publication {
    pub(crate) fn new(epoch: Arc<str>, offset: u64, herald: Bytes) -> Arc<Self> {
        Arc::new(Self {
            epoch,
            offset,
            herald,
            socketio: OnceLock::new(),
            sse: OnceLock::new(),
        })
    }

    /// The publication in `wire`'s format, shared by every subscriber of
    /// that format (for SSE, the lines without `id:`: see [`SseEvent`]).
    pub(crate) fn encoded(&self, wire: Wire) -> &[u8] {
        match wire {
            Wire::Herald => &self.herald,
            Wire::SocketIo => self.socketio.get_or_init(|| self.socketio_text()),
            Wire::Sse => &self.sse().lines,
        }
    }

    /// The SSE form, built from the Herald frame once per publication.
    pub(crate) fn sse(&self) -> &SseEvent {
        self.sse.get_or_init(|| match self.frame() {
            Ok(f) => SseEvent {
                channel: f.channel.as_ref().into(),
                lines: crate::transport::sse::event_lines(&f.event, f.data.get()),
            },
            Err(e) => {
                tracing::error!(error = %e, "publication frame is not a message frame");
                SseEvent::default()
            }
        })
    }

    /// The Herald frame's fields other formats are made of.
    fn frame(&self) -> serde_json::Result<MessageView<'_>> {
        serde_json::from_slice(&self.herald)
    }

    /// Builds the Socket.IO event from the Herald frame (once per publication).
    fn socketio_text(&self) -> Box<[u8]> {
        match self.frame() {
            Ok(f) => crate::transport::socketio::packet::event(
                &f.channel,
                &f.event,
                f.data.get(),
                &self.epoch,
                self.offset,
            )
            .into_bytes()
            .into_boxed_slice(),
            Err(e) => {
                // Frames come from the broker, built by `MessageFrame`.
                tracing::error!(error = %e, "publication frame is not a message frame");
                Box::default()
            }
        }
    }

    /// Bytes this publication holds in an outbound queue (the Herald frame's size).
    pub(crate) fn size(&self) -> usize {
        self.herald.len()
    }
}

/// A Herald `message` frame, read.
#[derive(serde::Deserialize)]
struct MessageView<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

/// A presence notice (`join`/`leave`) for one channel's subscribers: not a
/// publication (no offset, not in history), but shared and encoded once per
/// wire format like one.
#[derive(Debug)]
pub(crate) struct Notice {
    /// The Herald v1 frame: `{"op":"join"|"leave","channel",...,"client":{...}}`.
    herald: Bytes,
    /// Socket.IO `42/channel,["herald:join",{client}]`, made on first use.
    socketio: OnceLock<Box<[u8]>>,
    /// SSE `event: herald:join` + `data:` the Herald frame, made on first use.
    sse: OnceLock<Box<[u8]>>,
}

impl Notice {
    pub(crate) fn new(herald: Bytes) -> Arc<Self> {
        Arc::new(Self {
            herald,
            socketio: OnceLock::new(),
            sse: OnceLock::new(),
        })
    }

    pub(crate) fn encoded(&self, wire: Wire) -> &[u8] {
        match wire {
            Wire::Herald => &self.herald,
            Wire::SocketIo => self.socketio.get_or_init(|| self.socketio_text()),
            Wire::Sse => self.sse.get_or_init(|| {
                let join = self.herald.starts_with(br#"{"op":"join""#);
                let name = if join { "herald:join" } else { "herald:leave" };
                let mut ev = crate::transport::sse::event_lines(
                    name,
                    &String::from_utf8_lossy(&self.herald),
                )
                .into_vec();
                ev.push(b'\n');
                ev.into_boxed_slice()
            }),
        }
    }

    fn socketio_text(&self) -> Box<[u8]> {
        #[derive(serde::Deserialize)]
        struct Frame<'a> {
            #[serde(borrow)]
            op: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            channel: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            client: &'a serde_json::value::RawValue,
        }
        match serde_json::from_slice::<Frame<'_>>(&self.herald) {
            Ok(f) => crate::transport::socketio::packet::notice(
                &f.channel,
                &format!("herald:{}", f.op),
                f.client.get(),
            )
            .into_bytes()
            .into_boxed_slice(),
            Err(e) => {
                tracing::error!(error = %e, "presence notice is not a join/leave frame");
                Box::default()
            }
        }
    }
}

/// One item of a session's outbound queue. Small on purpose (16 bytes):
/// every session's queue allocates a block of these up front, idle or not.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A reply or notice, already encoded for the session's wire format.
    Frame(Box<[u8]>),
    /// A publication, encoded by the writer through [`Publication::encoded`].
    Publication(Arc<Publication>),
    /// A join/leave notice, encoded by the writer through [`Notice::encoded`].
    Notice(Arc<Notice>),
}

impl Outbound {
    /// Bytes this item counts against the queue's byte bound.
    pub(crate) fn size(&self) -> usize {
        match self {
            Self::Frame(b) => b.len(),
            Self::Publication(p) => p.size(),
            Self::Notice(n) => n.herald.len(),
        }
    }

    /// The bytes to write in `wire`'s format.
    pub(crate) fn encoded(&self, wire: Wire) -> &[u8] {
        match self {
            Self::Frame(b) => b,
            Self::Publication(p) => p.encoded(wire),
            Self::Notice(n) => n.encoded(wire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_frames_are_shared_not_copied() {
        let frame = Bytes::from_static(br#"{"op":"message"}"#);
        let p = Publication::new("E".into(), 1, frame.clone());
        let item = Outbound::Publication(Arc::clone(&p));
        assert_eq!(p.encoded(Wire::Herald).as_ptr(), frame.as_ptr());
        assert_eq!(item.encoded(Wire::Herald).as_ptr(), frame.as_ptr());
        assert_eq!(p.size(), frame.len());
    }

    #[test]
    fn socketio_text_is_built_once_and_shared() {
        let mut frame = herald_proto::MessageFrame::prefix(
            "reviews",
            "added",
            &serde_json::value::RawValue::from_string(r#"{"a":[1]}"#.to_owned()).expect("json"),
        );
        herald_proto::MessageFrame::finish(&mut frame, "E1", 7);
        let p = Publication::new("E1".into(), 7, Bytes::from(frame));
        let first = p.encoded(Wire::SocketIo);
        assert_eq!(first, br#"42/reviews,["added",{"a":[1]},"E1:7"]"#);
        let again = Outbound::Publication(Arc::clone(&p));
        assert_eq!(again.encoded(Wire::SocketIo).as_ptr(), first.as_ptr());
    }

    #[test]
    fn sse_lines_are_built_once_and_shared() {
        let mut frame = herald_proto::MessageFrame::prefix(
            "user:1",
            "added",
            &serde_json::value::RawValue::from_string("{\"a\":\n[1]}".to_owned()).expect("json"),
        );
        herald_proto::MessageFrame::finish(&mut frame, "E1", 7);
        let p = Publication::new("E1".into(), 7, Bytes::from(frame));
        let first = p.encoded(Wire::Sse);
        assert_eq!(first, b"event: added\ndata: {\"a\": [1]}\n");
        assert_eq!(&*p.sse().channel, "user:1");
        let again = Outbound::Publication(Arc::clone(&p));
        assert_eq!(again.encoded(Wire::Sse).as_ptr(), first.as_ptr());
    }

    #[test]
    fn queue_items_stay_small() {
        // Every session's queue allocates blocks of 32 of these up front.
        assert!(std::mem::size_of::<Outbound>() <= 24);
    }
}
