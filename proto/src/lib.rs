//! Herald client protocol v1: the wire vocabulary shared by every party.
//!
//! Sits at the very edge of the data flow: the gateway's `session` decodes
//! [`Command`]s from WebSocket text frames with it and encodes replies with
//! [`Reply`]; the broker builds every publication's `message` frame exactly
//! once with [`MessageFrame`]; tests and the load tool read the same types.
//! Nothing here does I/O. The full specification is `docs/protocol.md`.

#![warn(missing_docs)]

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

pub mod redis;
pub mod schema;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;
/// Longest event name, in bytes.
pub const MAX_EVENT_LEN: usize = 128;

/// A client frame, decoded without copying strings that need no unescaping.
///
/// Every field but `op` is optional at this level so that a frame with a bad
/// field can still be answered with its `id`; [`Command::op`] tells which
/// fields the operation needs and the session checks them.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct Command<'a> {
    /// What the client asks for.
    #[serde(borrow)]
    pub op: Op<'a>,
    /// Chosen by the client, echoed in the reply; absent on fire-and-forget frames.
    #[serde(default)]
    pub id: Option<u64>,
    /// `subscribe`, `unsubscribe`, `emit`: the channel.
    #[serde(default, borrow)]
    pub channel: Option<Cow<'a, str>>,
    /// `emit`: the event name.
    #[serde(default, borrow)]
    pub event: Option<Cow<'a, str>>,
    /// Kept as raw JSON: the gateway never re-encodes a payload.
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
    /// `subscribe`: the last position the client saw, to recover from.
    #[serde(default, borrow)]
    pub since: Option<Since<'a>>,
    /// `connect`: a reconnect token from an earlier session.
    #[serde(default, borrow)]
    pub resume: Option<Cow<'a, str>>,
    /// `connect` and `refresh`: the connection JWT; `subscribe`: a subscribe JWT.
    #[serde(default, borrow)]
    pub token: Option<Cow<'a, str>>,
    /// `connect` with `resume`: the last position seen per channel.
    #[serde(default, borrow)]
    pub positions: Option<std::collections::HashMap<Cow<'a, str>, Since<'a>>>,
}

/// The operation a client frame asks for.
///
/// An op the server does not know is kept as [`Op::Unknown`] (not a decode
/// error), so the reply can name it and keep the frame's `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// `connect`: start the session (with a token, or a resume).
    Connect,
    /// `subscribe`: receive a channel's publications.
    Subscribe,
    /// `unsubscribe`: stop receiving a channel.
    Unsubscribe,
    /// `emit`: publish on a channel.
    Emit,
    /// `refresh`: extend the connection with a new token.
    Refresh,
    /// `ping`: the client checks the connection; answered with `pong`.
    Ping,
    /// `pong`: the answer to a server `ping`.
    Pong,
    /// `presence`: who is subscribed to a channel, cluster-wide.
    Presence,
    /// `presence_stats`: how many clients and users are subscribed.
    PresenceStats,
    /// Any other string.
    Unknown(Cow<'a, str>),
}

/// An empty unknown op, so that adapters can build a [`Command`] field by field.
impl Default for Op<'_> {
    fn default() -> Self {
        Self::Unknown(Cow::Borrowed(""))
    }
}

impl<'a> Op<'a> {
    /// The spelling of every op the server knows, in the order the docs list them.
    pub const KNOWN: [&'static str; 9] = [
        "connect",
        "subscribe",
        "unsubscribe",
        "emit",
        "refresh",
        "presence",
        "presence_stats",
        "ping",
        "pong",
    ];

    fn from_str(s: &str) -> Option<Self> {
        Some(match s {
            "connect" => Self::Connect,
            "subscribe" => Self::Subscribe,
            "unsubscribe" => Self::Unsubscribe,
            "emit" => Self::Emit,
            "refresh" => Self::Refresh,
            "ping" => Self::Ping,
            "pong" => Self::Pong,
            "presence" => Self::Presence,
            "presence_stats" => Self::PresenceStats,
            _ => return None,
        })
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Op<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Op<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an op name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Op<'de>, E> {
                Ok(Op::from_str(s).unwrap_or(Op::Unknown(Cow::Borrowed(s))))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Op<'de>, E> {
                Ok(Op::from_str(s).unwrap_or_else(|| Op::Unknown(Cow::Owned(s.to_owned()))))
            }
        }
        d.deserialize_str(V)
    }
}

/// A client's last seen position on a channel.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct Since<'a> {
    /// The channel's epoch when the client saw `offset`.
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
    /// The last offset the client received.
    pub offset: u64,
}

/// Why a frame could not be decoded at all; the text is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(
    /// What was wrong with the frame.
    pub String,
);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl<'a> Command<'a> {
    /// Decodes one text frame. On failure, also returns the frame's `id` when
    /// it could be recovered, so the error reply can still be matched.
    pub fn decode(text: &'a str) -> Result<Self, (Option<u64>, DecodeError)> {
        match serde_json::from_str::<Command<'a>>(text) {
            Ok(cmd) => Ok(cmd),
            Err(e) => {
                #[derive(Deserialize)]
                struct IdOnly {
                    #[serde(default)]
                    id: Option<u64>,
                }
                let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|x| x.id);
                let msg = if e.is_syntax() || e.is_eof() {
                    format!("malformed JSON: {e}")
                } else {
                    format!("invalid frame: {e}")
                };
                Err((id, DecodeError(msg)))
            }
        }
    }
}

/// Checks a channel name: 1–255 bytes of UTF-8, no whitespace or control characters.
pub fn validate_channel(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("channel name is empty".to_owned());
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(format!(
            "channel name is {} bytes, the limit is {MAX_CHANNEL_LEN}",
            name.len()
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("channel name contains whitespace or a control character".to_owned());
    }
    Ok(())
}

/// Checks an event name: 1–128 bytes, no control characters.
pub fn validate_event(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("event name is empty".to_owned());
    }
    if name.len() > MAX_EVENT_LEN {
        return Err(format!(
            "event name is {} bytes, the limit is {MAX_EVENT_LEN}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("event name contains a control character".to_owned());
    }
    Ok(())
}

/// Deepest nesting of arrays and objects accepted in a `data` payload: the
/// gateway forwards payloads without parsing them, and a browser's
/// `JSON.parse` can overflow its stack on pathological nesting.
pub const MAX_DATA_DEPTH: usize = 64;

/// Checks a raw JSON payload's nesting depth in one pass (strings skipped).
pub fn validate_data_depth(raw: &str) -> Result<(), String> {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for b in raw.bytes() {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DATA_DEPTH {
                    return Err(format!(
                        "\"data\" is nested deeper than {MAX_DATA_DEPTH} levels"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Fuzzing entry point (the `command` target in `fuzz/`, and the corpus
/// replay test): decodes one frame's text the way the gateway does, and runs
/// every validator on what it finds. Must never panic.
#[doc(hidden)]
pub fn fuzz_command(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cmd) = Command::decode(text) {
        if let Some(ch) = &cmd.channel {
            let _ = validate_channel(ch);
        }
        if let Some(ev) = &cmd.event {
            let _ = validate_event(ev);
        }
        if let Some(d) = cmd.data {
            let _ = validate_data_depth(d.get());
        }
    }
}

/// Declares a unit enum with its wire spellings: `ALL` lists every value
/// (metric pre-creation loops over it) and `as_str` spells each, from one list.
macro_rules! spelled_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $var:ident => $s:literal,)+ }) => {
        $(#[$m])*
        pub enum $name {
            $($(#[$vm])* $var,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$var),+];

            /// The wire spelling, also used as a metric label.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$var => $s,)+
                }
            }
        }
    };
}

spelled_enum! {
    /// Error codes carried by `{"op":"error"}` frames and the HTTP API.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum ErrorCode {
        /// The command is malformed or invalid; the message says how.
        BadRequest => "bad_request",
        /// The token was refused.
        Unauthorized => "unauthorized",
        /// The channel rules refuse this.
        Forbidden => "forbidden",
        /// The command needs `connect` first.
        NotConnected => "not_connected",
        /// The connection is at its subscription limit.
        TooManySubscriptions => "too_many_subscriptions",
        /// The connection sends commands faster than its rate.
        RateLimited => "rate_limited",
        /// The user is at the node's per-user connection limit.
        TooManyConnections => "too_many_connections",
        /// The payload is over `max_payload`.
        PayloadTooLarge => "payload_too_large",
        /// The broker cannot be reached; nothing happened.
        Unavailable => "unavailable",
        /// A bug on the server side.
        Internal => "internal",
    }
}

/// Server-initiated close codes. 4000–4499: reconnect; 4500–4999: do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// The node is shutting down: reconnect elsewhere.
    Shutdown = 4000,
    /// The outbound queue overflowed: reconnect and recover.
    SlowConsumer = 4001,
    /// No pong in time.
    PingTimeout = 4002,
    /// The connection token expired: reconnect with a fresh one.
    TokenExpired = 4003,
    /// Publications may have been missed: resume to recover.
    InsufficientState = 4004,
    /// The connection token was refused.
    Unauthorized = 4500,
    /// Not allowed.
    Forbidden = 4501,
    /// The client broke the protocol (or flooded).
    ProtocolError = 4502,
    /// A message over the size limit.
    MessageTooLarge = 4503,
    /// The user is at the node's per-user connection limit.
    TooManyConnections = 4504,
}

impl Serialize for CloseCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.code())
    }
}

impl CloseCode {
    /// Every close code, in numeric order.
    pub const ALL: &'static [Self] = &[
        Self::Shutdown,
        Self::SlowConsumer,
        Self::PingTimeout,
        Self::TokenExpired,
        Self::InsufficientState,
        Self::Unauthorized,
        Self::Forbidden,
        Self::ProtocolError,
        Self::MessageTooLarge,
        Self::TooManyConnections,
    ];

    /// The numeric close code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code as text, e.g. `"4001"`: a metric label without formatting.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shutdown => "4000",
            Self::SlowConsumer => "4001",
            Self::PingTimeout => "4002",
            Self::TokenExpired => "4003",
            Self::InsufficientState => "4004",
            Self::Unauthorized => "4500",
            Self::Forbidden => "4501",
            Self::ProtocolError => "4502",
            Self::MessageTooLarge => "4503",
            Self::TooManyConnections => "4504",
        }
    }

    /// Whether a well-behaved client should reconnect after this close.
    pub fn reconnect(self) -> bool {
        self.code() < 4500
    }

    /// Short, stable reason text sent in the `disconnect` frame and close frame.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::SlowConsumer => "slow consumer",
            Self::PingTimeout => "ping timeout",
            Self::TokenExpired => "token expired",
            Self::InsufficientState => "insufficient state",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::ProtocolError => "protocol error",
            Self::MessageTooLarge => "message too large",
            Self::TooManyConnections => "too many connections",
        }
    }

    /// The close code with this number, if Herald uses it.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            4000 => Self::Shutdown,
            4001 => Self::SlowConsumer,
            4002 => Self::PingTimeout,
            4003 => Self::TokenExpired,
            4004 => Self::InsufficientState,
            4500 => Self::Unauthorized,
            4501 => Self::Forbidden,
            4502 => Self::ProtocolError,
            4503 => Self::MessageTooLarge,
            4504 => Self::TooManyConnections,
            _ => return None,
        })
    }
}

/// Replies and notices the server sends, except `message` (see [`MessageFrame`]).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply<'a> {
    /// Answer to `connect`.
    Connected {
        /// The `id` of the command this answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The session id (kept across resumes).
        session: &'a str,
        /// The node that serves the connection.
        node: &'a str,
        /// How often the server pings.
        ping_interval_ms: u64,
        /// Present when the client asked to resume.
        #[serde(skip_serializing_if = "Option::is_none")]
        resumed: Option<bool>,
        /// On a successful resume: what became of each channel of the token.
        #[serde(skip_serializing_if = "Option::is_none")]
        channels: Option<&'a ResumedChannels>,
        /// The authenticated user (`sub`), absent in open mode.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
        /// When the connection token expires (UNIX seconds): refresh before it.
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
        /// A reconnect token for the session as it stands now.
        #[serde(skip_serializing_if = "Option::is_none")]
        reconnect_token: Option<&'a str>,
    },
    /// Answer to `subscribe`.
    Subscribed {
        /// The `id` of the command this answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: &'a str,
        /// The channel's epoch.
        epoch: &'a str,
        /// The subscription starts after this offset (`subscribed`), or
        /// the publication's offset (`emitted`).
        offset: u64,
        /// Present when the client asked to recover (`since`).
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// A reconnect token for the session as it stands now.
        #[serde(skip_serializing_if = "Option::is_none")]
        reconnect_token: Option<&'a str>,
    },
    /// Answer to `unsubscribe`.
    Unsubscribed {
        /// The `id` of the command this answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: &'a str,
        /// A reconnect token for the session as it stands now.
        #[serde(skip_serializing_if = "Option::is_none")]
        reconnect_token: Option<&'a str>,
    },
    /// Answer to `emit`: the position the publication got.
    Emitted {
        /// The `id` of the command this answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: &'a str,
        /// The channel's epoch.
        epoch: &'a str,
        /// The subscription starts after this offset (`subscribed`), or
        /// the publication's offset (`emitted`).
        offset: u64,
    },
    /// Answer to `refresh`: the connection now lives until `expires_at`.
    Refreshed {
        /// The `id` of the command this answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The new expiry (UNIX seconds).
        expires_at: u64,
    },
    /// The server checks the connection; answer with `pong`.
    Ping,
    /// A fresh reconnect token, pushed before the previous one expires.
    Token {
        /// The new reconnect token.
        reconnect_token: &'a str,
    },
    /// Answer to a client `ping`.
    Pong {
        /// The `id` of the command this answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A command failed.
    Error {
        /// The `id` of the command this answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// What kind of failure.
        code: ErrorCode,
        /// What went wrong, for people.
        message: &'a str,
        /// The channel the command named, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
    },
    /// Answer to `presence`: every client subscribed to the channel, on
    /// every node.
    Presence {
        /// The `id` of the command this answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: &'a str,
        /// One entry per subscribed connection.
        clients: &'a [PresenceClient],
    },
    /// Answer to `presence_stats`.
    PresenceStats {
        /// The `id` of the command this answers.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: &'a str,
        /// Subscribed connections.
        clients: u64,
        /// Distinct users among them.
        users: u64,
    },
    /// A client subscribed to a channel this connection is subscribed to
    /// (namespaces with `join_leave`; at most once, not in history).
    Join {
        /// The channel.
        channel: &'a str,
        /// Who joined.
        client: &'a PresenceClient,
    },
    /// A client left the channel: unsubscribed, disconnected, or its node
    /// stopped answering (namespaces with `join_leave`; at most once).
    Leave {
        /// The channel.
        channel: &'a str,
        /// Who left.
        client: &'a PresenceClient,
    },
    /// The server ends the connection; a close frame with `code` follows.
    Disconnect {
        /// The close code.
        code: CloseCode,
        /// Its short reason text.
        reason: &'a str,
        /// Whether the client should reconnect.
        reconnect: bool,
    },
}

/// One subscribed connection in a channel's presence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PresenceClient {
    /// The connection's user (empty for an anonymous connection).
    pub user: String,
    /// The session id.
    pub session: String,
    /// The node the connection is on.
    pub node: String,
    /// When it subscribed (UNIX milliseconds).
    pub joined_at: u64,
    /// What the connection's token (or the connect hook) says about the
    /// user, shown to everyone who asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// `connected.channels` after a resume, ordered by channel name.
pub type ResumedChannels = std::collections::BTreeMap<String, ResumedChannel>;

/// What a resume did with one channel of the reconnect token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ResumedChannel {
    /// Subscribed again; `recovered` tells whether every missed publication follows.
    Restored {
        /// The channel's epoch now.
        epoch: String,
        /// Live publications follow this offset.
        offset: u64,
        /// False: publications may have been missed; refetch the state.
        recovered: bool,
    },
    /// Not subscribed again (the rules refuse it now, or the broker failed).
    Refused {
        /// Why.
        error: ErrorBody,
    },
}

/// An error as it appears inside other frames and in HTTP API bodies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

impl Reply<'_> {
    /// Encodes the reply as one JSON text frame payload.
    pub fn to_vec(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Builds `{"op":"message",...}` frames in two steps, so that whoever assigns
/// the offset (the embedded broker in-process, or a Lua script inside Redis)
/// only appends `EPOCH","offset":N}` to a prefix built by the publisher.
pub struct MessageFrame;

impl MessageFrame {
    /// Everything up to and including the opening quote of the epoch value.
    ///
    /// `data` must already be valid JSON; it is copied as-is.
    pub fn prefix(channel: &str, event: &str, data: &RawValue) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + channel.len() + event.len() + data.get().len());
        out.extend_from_slice(br#"{"op":"message","channel":"#);
        write_json_str(&mut out, channel);
        out.extend_from_slice(br#","event":"#);
        write_json_str(&mut out, event);
        out.extend_from_slice(br#","data":"#);
        out.extend_from_slice(data.get().as_bytes());
        out.extend_from_slice(br#","epoch":""#);
        out
    }

    /// Appends the broker-assigned position, completing the frame.
    pub fn finish(prefix: &mut Vec<u8>, epoch: &str, offset: u64) {
        prefix.extend_from_slice(epoch.as_bytes());
        prefix.extend_from_slice(br#"","offset":"#);
        prefix.extend_from_slice(offset.to_string().as_bytes());
        prefix.push(b'}');
    }
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Encoding a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A delivered `message` frame, as clients and tests read it.
#[derive(Debug, Clone, Deserialize, PartialEq, JsonSchema)]
pub struct Message {
    /// The channel it was published on.
    pub channel: String,
    /// The event name.
    pub event: String,
    /// The payload, as published.
    pub data: serde_json::Value,
    /// The channel's epoch.
    pub epoch: String,
    /// Its offset in the channel.
    pub offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frame_round_trips_with_awkward_names() {
        let data = RawValue::from_string(r#"{"text":"he said \"hi\"","n":[1,2]}"#.to_owned())
            .expect("valid json");
        let mut frame = MessageFrame::prefix("news:\"quoted\"/é", "ev\\t", &data);
        MessageFrame::finish(&mut frame, "AbC123", 42);
        let v: serde_json::Value = serde_json::from_slice(&frame).expect("frame is JSON");
        assert_eq!(v["op"], "message");
        let m: Message = serde_json::from_value(v).expect("message shape");
        assert_eq!(m.channel, "news:\"quoted\"/é");
        assert_eq!(m.event, "ev\\t");
        assert_eq!(m.data["text"], "he said \"hi\"");
        assert_eq!(m.epoch, "AbC123");
        assert_eq!(m.offset, 42);
    }

    #[test]
    fn decode_keeps_id_of_bad_frames() {
        let (id, err) = Command::decode(r#"{"id":7,"channel":"x"}"#).expect_err("no op");
        assert_eq!(id, Some(7));
        assert!(err.0.contains("op"), "{err}");
        let (id, err) = Command::decode("{not json").expect_err("syntax");
        assert_eq!(id, None);
        assert!(err.0.starts_with("malformed JSON"), "{err}");
    }

    #[test]
    fn decode_borrows_and_unescapes() {
        let cmd = Command::decode(r#"{"op":"emit","id":3,"channel":"a\u0062","data":{"x":1}}"#)
            .expect("valid");
        assert_eq!(cmd.op, Op::Emit);
        assert_eq!(cmd.channel.as_deref(), Some("ab"));
        assert_eq!(cmd.data.map(RawValue::get), Some(r#"{"x":1}"#));
    }

    #[test]
    fn channel_and_event_rules() {
        assert!(validate_channel("news:sport").is_ok());
        assert!(validate_channel("").is_err());
        assert!(validate_channel("a b").is_err());
        assert!(validate_channel("a\u{7}").is_err());
        assert!(validate_channel(&"x".repeat(255)).is_ok());
        assert!(validate_channel(&"x".repeat(256)).is_err());
        assert!(validate_event(&"e".repeat(128)).is_ok());
        assert!(validate_event(&"e".repeat(129)).is_err());
    }

    // Hostile input: the decoder must answer every string without panicking,
    // and decode what it accepts faithfully. Failures are kept by proptest
    // in proto/proptest-regressions/ and replayed on every run.
    #[test]
    fn data_depth_is_bounded_and_strings_do_not_count() {
        let ok = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        assert!(validate_data_depth(&ok).is_ok());
        let deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
        assert!(validate_data_depth(&deep).is_err());
        let in_string = format!("\"{}\\\"{}\"", "[".repeat(100), "{".repeat(100));
        assert!(validate_data_depth(&in_string).is_ok(), "{in_string}");
        assert!(validate_data_depth(r#"{"a":[{"b":[]}],"c":"]]]"}"#).is_ok());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn decode_never_panics_on_any_text(s in ".{0,300}") {
            let _ = Command::decode(&s);
        }

        #[test]
        fn decode_never_panics_on_json_shaped_text(
            s in r#"\{("(op|id|channel|event|data|since|resume|positions|x)":(-?[0-9]{1,22}|"[^"\\]{0,12}"|null|true|\[[0-9,]{0,6}\]|\{"epoch":"a","offset":[0-9-]{1,4}\}),?){0,7}\}"#
        ) {
            let _ = Command::decode(&s);
        }

        #[test]
        fn commands_decode_to_what_was_sent(
            op in "(connect|subscribe|unsubscribe|emit|ping|pong|other)",
            id in proptest::option::of(proptest::prelude::any::<u64>()),
            channel in "[^\\s\\p{Cc}]{1,40}",
            n in proptest::prelude::any::<i64>(),
        ) {
            let mut v = serde_json::json!({"op": op, "channel": channel, "data": {"n": n}});
            if let Some(id) = id {
                v["id"] = id.into();
            }
            let text = v.to_string();
            let cmd = Command::decode(&text).expect("valid frame");
            let want = Op::from_str(&op).unwrap_or(Op::Unknown(op.as_str().into()));
            proptest::prop_assert_eq!(cmd.op, want);
            proptest::prop_assert_eq!(cmd.id, id);
            proptest::prop_assert_eq!(cmd.channel.as_deref(), Some(channel.as_str()));
            let data: serde_json::Value = serde_json::from_str(cmd.data.expect("data").get()).expect("json");
            proptest::prop_assert_eq!(data["n"].as_i64(), Some(n));
        }
    }

    #[test]
    fn unknown_ops_keep_their_name_and_id() {
        let cmd = Command::decode(r#"{"op":"fly","id":9}"#).expect("decodes");
        assert_eq!(cmd.op, Op::Unknown("fly".into()));
        assert_eq!(cmd.id, Some(9));
        let cmd = Command::decode(r#"{"op":"fl\u0079"}"#).expect("escaped");
        assert_eq!(cmd.op, Op::Unknown("fly".into()));
        let (id, _) = Command::decode(r#"{"op":5,"id":2}"#).expect_err("op must be a string");
        assert_eq!(id, Some(2));
    }

    #[test]
    fn typed_replies_keep_the_wire_format() {
        let mut channels = ResumedChannels::new();
        channels.insert(
            "b".into(),
            ResumedChannel::Restored {
                epoch: "E".into(),
                offset: 3,
                recovered: true,
            },
        );
        channels.insert(
            "a".into(),
            ResumedChannel::Refused {
                error: ErrorBody {
                    code: ErrorCode::Forbidden,
                    message: "no".into(),
                },
            },
        );
        let reply = Reply::Connected {
            id: None,
            session: "s",
            node: "n",
            ping_interval_ms: 1,
            resumed: Some(true),
            channels: Some(&channels),
            user: None,
            expires_at: None,
            reconnect_token: None,
        };
        assert_eq!(
            String::from_utf8(reply.to_vec()).expect("utf8"),
            r#"{"op":"connected","session":"s","node":"n","ping_interval_ms":1,"resumed":true,"channels":{"a":{"error":{"code":"forbidden","message":"no"}},"b":{"epoch":"E","offset":3,"recovered":true}}}"#
        );
        let bye = Reply::Disconnect {
            code: CloseCode::SlowConsumer,
            reason: "slow consumer",
            reconnect: true,
        };
        assert_eq!(
            String::from_utf8(bye.to_vec()).expect("utf8"),
            r#"{"op":"disconnect","code":4001,"reason":"slow consumer","reconnect":true}"#
        );
    }

    #[test]
    fn close_codes_split_on_reconnect() {
        assert!(CloseCode::SlowConsumer.reconnect());
        assert!(!CloseCode::MessageTooLarge.reconnect());
        let known: Vec<CloseCode> = (4000..5000).filter_map(CloseCode::from_code).collect();
        assert_eq!(
            known,
            CloseCode::ALL,
            "ALL lists every code a client can receive"
        );
        for c in CloseCode::ALL {
            assert_eq!(c.as_str(), c.code().to_string());
        }
    }

    #[test]
    fn error_codes_are_spelled_as_serde_spells_them() {
        for c in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_string(c).expect("json"),
                format!("\"{}\"", c.as_str())
            );
        }
        assert_eq!(ErrorCode::ALL.len(), 10);
    }
}
