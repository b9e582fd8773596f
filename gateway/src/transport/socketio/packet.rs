//! Engine.IO v4 and Socket.IO v5 packets: decoding what clients send and
//! encoding what the server writes.
//!
//! Part of the Socket.IO transport, below its reader and writer (and the
//! leaf `publication` calls to build each publication's event once). Pure
//! text in, text out: no I/O, no session logic. Over WebSocket every Engine.IO
//! packet is one text message: a type digit, then the payload. A Socket.IO
//! packet is the payload of an Engine.IO `message` (`4`): a type digit,
//! an optional binary attachment count (`N-`), an optional namespace
//! (`/name,`), an optional ack id (digits), then optional JSON.
//!
//! JSON payloads are kept as raw text: the event data a client emits is
//! forwarded as it came, never re-encoded.

use serde_json::value::RawValue;
use std::fmt::Write as _;

/// An Engine.IO packet from the client (WebSocket transport).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Engine<'a> {
    /// `1`: the client closes the connection.
    Close,
    /// `2`: a client ping (probe); answered with `3` and the same payload.
    Ping(&'a str),
    /// `3`: the answer to a server ping.
    Pong,
    /// `4`: a Socket.IO packet.
    Message(&'a str),
    /// `5`: the client switches to the WebSocket that sent this (the last
    /// step of an upgrade from polling).
    Upgrade,
    /// `6` (noop): nothing to do.
    Ignored,
}

/// Why a packet could not be decoded; safe to log, short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PacketError(pub(crate) &'static str);

impl std::fmt::Display for PacketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Decodes one Engine.IO text message.
pub(crate) fn decode_engine(text: &str) -> Result<Engine<'_>, PacketError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(PacketError("empty Engine.IO packet"))?;
    let rest = chars.as_str();
    Ok(match kind {
        '1' => Engine::Close,
        '2' => Engine::Ping(rest),
        '3' => Engine::Pong,
        '4' => Engine::Message(rest),
        '5' => Engine::Upgrade,
        '6' => Engine::Ignored,
        '0' => return Err(PacketError("clients do not send Engine.IO open packets")),
        _ => return Err(PacketError("unknown Engine.IO packet type")),
    })
}

/// The kind of a Socket.IO packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `0`
    Connect,
    /// `1`
    Disconnect,
    /// `2`
    Event,
    /// `3`
    Ack,
    /// `4`
    ConnectError,
    /// `5`: an event with binary attachments.
    BinaryEvent,
    /// `6`: an ack with binary attachments.
    BinaryAck,
}

/// A decoded Socket.IO packet, borrowing from the message text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Packet<'a> {
    pub(crate) kind: Kind,
    /// `/` when the packet names no namespace.
    pub(crate) nsp: &'a str,
    /// The ack id, when the sender wants an acknowledgement.
    pub(crate) id: Option<u64>,
    /// The JSON payload as sent (not validated here), if any.
    pub(crate) data: Option<&'a str>,
}

/// Most digits accepted in an attachment count or an ack id.
const MAX_DIGITS: usize = 15;

/// Decodes one Socket.IO packet (the payload of an Engine.IO `4`).
pub(crate) fn decode(text: &str) -> Result<Packet<'_>, PacketError> {
    let bytes = text.as_bytes();
    let kind = match bytes.first() {
        Some(b'0') => Kind::Connect,
        Some(b'1') => Kind::Disconnect,
        Some(b'2') => Kind::Event,
        Some(b'3') => Kind::Ack,
        Some(b'4') => Kind::ConnectError,
        Some(b'5') => Kind::BinaryEvent,
        Some(b'6') => Kind::BinaryAck,
        Some(_) => return Err(PacketError("unknown Socket.IO packet type")),
        None => return Err(PacketError("empty Socket.IO packet")),
    };
    let mut pos = 1;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let n = digits(&bytes[pos..]);
        if n == 0 || n > MAX_DIGITS || bytes.get(pos + n) != Some(&b'-') {
            return Err(PacketError("binary packet without its attachment count"));
        }
        pos += n + 1;
    }
    let mut nsp = "/";
    if bytes.get(pos) == Some(&b'/') {
        let end = bytes[pos..]
            .iter()
            .position(|&b| b == b',')
            .map_or(bytes.len(), |i| pos + i);
        // Both ends sit on ASCII bytes ('/' and ',' or the end), so on char boundaries.
        nsp = &text[pos..end];
        pos = (end + 1).min(bytes.len());
    }
    let n = digits(&bytes[pos..]);
    let id = if n == 0 {
        None
    } else if n > MAX_DIGITS {
        return Err(PacketError("ack id too long"));
    } else {
        let id = text[pos..pos + n]
            .parse()
            .map_err(|_| PacketError("bad ack id"))?;
        pos += n;
        Some(id)
    };
    let data = Some(&text[pos..]).filter(|d| !d.is_empty());
    Ok(Packet {
        kind,
        nsp,
        id,
        data,
    })
}

fn digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// An event's name and argument list, borrowed from its JSON array.
#[derive(Debug)]
pub(crate) struct EventArgs<'a> {
    pub(crate) name: std::borrow::Cow<'a, str>,
    pub(crate) args: Vec<&'a RawValue>,
}

/// Splits an event packet's payload `["name", arg...]`.
pub(crate) fn event_args(data: Option<&str>) -> Result<EventArgs<'_>, PacketError> {
    let data = data.ok_or(PacketError("event packet without a payload"))?;
    let items: Vec<&RawValue> =
        serde_json::from_str(data).map_err(|_| PacketError("event payload is not a JSON array"))?;
    let (first, args) = items
        .split_first()
        .ok_or(PacketError("event payload is an empty array"))?;
    let name: std::borrow::Cow<'_, str> =
        serde_json::from_str(first.get()).map_err(|_| PacketError("event name is not a string"))?;
    Ok(EventArgs {
        name,
        args: args.to_vec(),
    })
}

/// What a client's CONNECT payload (the `auth` object) may carry.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ConnectAuth<'a> {
    /// The Herald connection JWT.
    #[serde(default, borrow)]
    pub(crate) token: Option<std::borrow::Cow<'a, str>>,
    /// Connection state recovery: the pid the server gave before.
    #[serde(default, borrow)]
    pub(crate) pid: Option<std::borrow::Cow<'a, str>>,
    /// Connection state recovery: the offset of the last event received.
    #[serde(default, borrow)]
    pub(crate) offset: Option<std::borrow::Cow<'a, str>>,
}

/// Reads a CONNECT payload: absent, or a JSON object (other keys ignored).
pub(crate) fn connect_auth(data: Option<&str>) -> Result<ConnectAuth<'_>, PacketError> {
    match data {
        None => Ok(ConnectAuth::default()),
        Some(d) => serde_json::from_str(d).map_err(|_| {
            PacketError("CONNECT payload must be a JSON object (token, pid, offset: strings)")
        }),
    }
}

/// A channel position as Socket.IO recovery carries it: `EPOCH:OFFSET`.
pub(crate) fn position(epoch: &str, offset: u64) -> String {
    format!("{epoch}:{offset}")
}

/// Reads a position written by [`position`].
pub(crate) fn parse_position(s: &str) -> Option<(&str, u64)> {
    let (epoch, offset) = s.rsplit_once(':')?;
    if epoch.is_empty() {
        return None;
    }
    Some((epoch, offset.parse().ok()?))
}

/// Whether a namespace can name a channel: `/` then a valid channel name
/// without a comma (the comma ends the namespace in a packet).
pub(crate) fn namespace_channel(nsp: &str) -> Result<&str, String> {
    let ch = nsp
        .strip_prefix('/')
        .ok_or_else(|| "a namespace starts with '/'".to_owned())?;
    herald_proto::validate_channel(ch)?;
    if ch.contains(',') {
        return Err("a namespace cannot contain ','".to_owned());
    }
    Ok(ch)
}

fn json_str(out: &mut String, s: &str) {
    // Encoding a str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// `4` + type digit + the namespace prefix (`/name,`, nothing for `/`).
fn head(kind: char, nsp: &str) -> String {
    let mut out = String::with_capacity(16 + nsp.len());
    out.push('4');
    out.push(kind);
    if nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
    out
}

/// The Engine.IO open packet; `upgrade`: the session may move to WebSocket
/// (a polling session), which the packet advertises.
pub(crate) fn open(
    sid: &str,
    upgrade: bool,
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: usize,
) -> String {
    let mut out = String::from("0{\"sid\":");
    json_str(&mut out, sid);
    let upgrades = if upgrade { r#"["websocket"]"# } else { "[]" };
    let _ = write!(
        out,
        ",\"upgrades\":{upgrades},\"pingInterval\":{ping_interval_ms},\"pingTimeout\":{ping_timeout_ms},\"maxPayload\":{max_payload}}}"
    );
    out
}

/// A Socket.IO CONNECT reply: `40/nsp,{"sid":..,"pid":..}`.
pub(crate) fn connected(nsp: &str, sid: &str, pid: Option<&str>) -> String {
    let mut out = head('0', nsp);
    out.push_str("{\"sid\":");
    json_str(&mut out, sid);
    if let Some(pid) = pid {
        out.push_str(",\"pid\":");
        json_str(&mut out, pid);
    }
    out.push('}');
    out
}

/// A Socket.IO CONNECT_ERROR: `44/nsp,{"message":..,"data":{"code":..}}`.
pub(crate) fn connect_error(nsp: &str, code: &str, message: &str) -> String {
    let mut out = head('4', nsp);
    out.push_str("{\"message\":");
    json_str(&mut out, message);
    out.push_str(",\"data\":{\"code\":");
    json_str(&mut out, code);
    out.push_str("}}");
    out
}

/// A Socket.IO DISCONNECT: `41/nsp,`.
pub(crate) fn disconnect(nsp: &str) -> String {
    head('1', nsp)
}

/// A Socket.IO ACK carrying one argument: `43/nsp,ID[arg]`.
pub(crate) fn ack(nsp: &str, id: u64, arg: &str) -> String {
    let mut out = head('3', nsp);
    let _ = write!(out, "{id}[{arg}]");
    out
}

/// The argument of an ack that reports success: `{"offset":N}`.
pub(crate) fn ack_offset(offset: u64) -> String {
    format!("{{\"offset\":{offset}}}")
}

/// The argument of an ack that reports a failure: `{"error":{"code":..,"message":..}}`.
pub(crate) fn ack_error(code: &str, message: &str) -> String {
    let mut out = String::from("{\"error\":{\"code\":");
    json_str(&mut out, code);
    out.push_str(",\"message\":");
    json_str(&mut out, message);
    out.push_str("}}");
    out
}

/// `42/<channel>,["<event>",<data>]`: an event with no position (presence notices).
pub(crate) fn notice(channel: &str, event: &str, data: &str) -> String {
    let mut out = String::with_capacity(16 + channel.len() + event.len() + data.len());
    out.push_str("42/");
    out.push_str(channel);
    out.push_str(",[");
    json_str(&mut out, event);
    out.push(',');
    out.push_str(data);
    out.push(']');
    out
}

/// A publication as a Socket.IO EVENT: `42/nsp,["event",data,"EPOCH:OFFSET"]`.
/// `data` must be valid JSON; it is copied as-is.
pub(crate) fn event(channel: &str, event: &str, data: &str, epoch: &str, offset: u64) -> String {
    let mut out =
        String::with_capacity(32 + channel.len() + event.len() + data.len() + epoch.len());
    out.push_str("42/");
    out.push_str(channel);
    out.push_str(",[");
    json_str(&mut out, event);
    out.push(',');
    out.push_str(data);
    out.push(',');
    json_str(&mut out, &position(epoch, offset));
    out.push(']');
    out
}

/// Fuzzing entry point (the `socketio` target in `fuzz/`, and the corpus
/// replay test): reads arbitrary bytes as one WebSocket text message of a
/// Socket.IO client (and as a polling payload, each of its packets again), through every decoder the transport uses. Must never panic.
#[doc(hidden)]
pub fn fuzz_socketio(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The same bytes as a polling body: every text packet of it as well.
    if let Ok(items) = super::payload::decode(text) {
        for item in items {
            if let super::payload::Item::Text(t) = item {
                if t.len() < text.len() {
                    fuzz_socketio(t.as_bytes());
                }
            }
        }
    }
    let inner = match decode_engine(text) {
        Ok(Engine::Message(m)) => m,
        _ => text,
    };
    if let Ok(p) = decode(inner) {
        if let Ok(args) = event_args(p.data) {
            let _ = herald_proto::validate_event(&args.name);
            for a in args.args {
                let _ = herald_proto::validate_data_depth(a.get());
            }
        }
        if let Ok(auth) = connect_auth(p.data) {
            let _ = auth.pid.as_deref().map(parse_position);
            let _ = auth.offset.as_deref().map(parse_position);
        }
        let _ = namespace_channel(p.nsp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_packets() {
        assert_eq!(decode_engine("3"), Ok(Engine::Pong));
        assert_eq!(decode_engine("2probe"), Ok(Engine::Ping("probe")));
        assert_eq!(decode_engine("1"), Ok(Engine::Close));
        assert_eq!(decode_engine("40"), Ok(Engine::Message("0")));
        assert_eq!(decode_engine("6"), Ok(Engine::Ignored));
        assert_eq!(decode_engine("5"), Ok(Engine::Upgrade));
        assert!(decode_engine("").is_err());
        assert!(decode_engine("0{}").is_err());
        assert!(decode_engine("x").is_err());
        assert!(decode_engine("é").is_err());
    }

    #[test]
    fn socketio_packets() {
        let p = decode("0").expect("connect");
        assert_eq!(
            (p.kind, p.nsp, p.id, p.data),
            (Kind::Connect, "/", None, None)
        );
        let p = decode(r#"0/reviews,{"token":"t"}"#).expect("connect nsp");
        assert_eq!(
            (p.kind, p.nsp, p.data),
            (Kind::Connect, "/reviews", Some(r#"{"token":"t"}"#))
        );
        let p = decode("1/reviews,").expect("disconnect");
        assert_eq!(
            (p.kind, p.nsp, p.data),
            (Kind::Disconnect, "/reviews", None)
        );
        let p = decode("1/reviews").expect("disconnect without comma");
        assert_eq!(p.nsp, "/reviews");
        let p = decode(r#"2/reviews,17["ev",{"a":1}]"#).expect("event with ack");
        assert_eq!(
            (p.kind, p.nsp, p.id, p.data),
            (Kind::Event, "/reviews", Some(17), Some(r#"["ev",{"a":1}]"#))
        );
        let p = decode(r#"2["ev"]"#).expect("event on /");
        assert_eq!((p.nsp, p.id, p.data), ("/", None, Some(r#"["ev"]"#)));
        let p = decode(r#"51-/a,3["ev",{"_placeholder":true,"num":0}]"#).expect("binary");
        assert_eq!((p.kind, p.nsp, p.id), (Kind::BinaryEvent, "/a", Some(3)));
        assert!(decode("5/a,[]").is_err(), "binary without a count");
        assert!(decode("").is_err());
        assert!(decode("9").is_err());
        assert!(decode(&format!("2{}[]", "9".repeat(30))).is_err());
    }

    #[test]
    fn event_arguments() {
        let e = event_args(Some(r#"["a\"b",{"x":[1,2]},3]"#)).expect("args");
        assert_eq!(e.name, "a\"b");
        let args: Vec<&str> = e.args.iter().map(|a| a.get()).collect();
        assert_eq!(args, [r#"{"x":[1,2]}"#, "3"]);
        assert!(event_args(Some("[]")).is_err());
        assert!(event_args(Some("[1]")).is_err());
        assert!(event_args(Some("{}")).is_err());
        assert!(event_args(None).is_err());
    }

    #[test]
    fn connect_payloads() {
        let a = connect_auth(Some(r#"{"token":"t","pid":"E:1","offset":"E:4","x":[1]}"#))
            .expect("auth");
        assert_eq!(a.token.as_deref(), Some("t"));
        assert_eq!(a.pid.as_deref(), Some("E:1"));
        assert_eq!(a.offset.as_deref(), Some("E:4"));
        assert!(connect_auth(None).expect("none").token.is_none());
        assert!(connect_auth(Some("[1]")).is_err());
        assert!(connect_auth(Some(r#"{"token":5}"#)).is_err());
    }

    #[test]
    fn positions_round_trip() {
        let p = position("AbC123", 42);
        assert_eq!(parse_position(&p), Some(("AbC123", 42)));
        assert_eq!(parse_position("a:b:7"), Some(("a:b", 7)));
        assert_eq!(parse_position(":7"), None);
        assert_eq!(parse_position("E:x"), None);
        assert_eq!(parse_position("E"), None);
    }

    #[test]
    fn namespaces_name_channels() {
        assert_eq!(namespace_channel("/reviews"), Ok("reviews"));
        assert_eq!(namespace_channel("/inbox#42"), Ok("inbox#42"));
        assert!(namespace_channel("/").is_err());
        assert!(namespace_channel("/a b").is_err());
        assert!(namespace_channel("/a,b").is_err());
        assert!(namespace_channel("reviews").is_err());
    }

    #[test]
    fn encoded_packets() {
        assert_eq!(
            open("s1", false, 25000, 10000, 65536),
            r#"0{"sid":"s1","upgrades":[],"pingInterval":25000,"pingTimeout":10000,"maxPayload":65536}"#
        );
        assert_eq!(connected("/", "s", None), r#"40{"sid":"s"}"#);
        assert_eq!(
            connected("/r", "s", Some("E:3")),
            r#"40/r,{"sid":"s","pid":"E:3"}"#
        );
        assert_eq!(
            connect_error("/r", "forbidden", "no \"way\""),
            r#"44/r,{"message":"no \"way\"","data":{"code":"forbidden"}}"#
        );
        assert_eq!(disconnect("/r"), "41/r,");
        assert_eq!(ack("/r", 17, &ack_offset(4)), r#"43/r,17[{"offset":4}]"#);
        assert_eq!(
            ack("/", 1, &ack_error("forbidden", "no")),
            r#"431[{"error":{"code":"forbidden","message":"no"}}]"#
        );
        let e = event("r", "ev\"", r#"{"a":1}"#, "E", 9);
        assert_eq!(e, r#"42/r,["ev\"",{"a":1},"E:9"]"#);
        // What the server writes, the decoder reads back.
        let p = decode(&e[1..]).expect("own event");
        assert_eq!((p.kind, p.nsp), (Kind::Event, "/r"));
        let args = event_args(p.data).expect("args");
        assert_eq!(args.name, "ev\"");
        assert_eq!(args.args.len(), 2);
    }

    // Hostile input: the decoders answer every string without panicking.
    // Failures are kept by proptest in gateway/proptest-regressions/.
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn decoders_never_panic_on_any_text(s in ".{0,200}") {
            if let Ok(Engine::Message(m)) = decode_engine(&s) {
                if let Ok(p) = decode(m) {
                    let _ = event_args(p.data);
                    let _ = connect_auth(p.data);
                    let _ = namespace_channel(p.nsp);
                }
            }
            if let Ok(p) = decode(&s) {
                let _ = event_args(p.data);
                let _ = connect_auth(p.data);
            }
            let _ = parse_position(&s);
        }

        #[test]
        fn decoders_never_panic_on_packet_shaped_text(
            s in r#"4?[0-6]([0-9]{0,3}-)?(/[^,]{0,8},?)?[0-9]{0,20}(\[(("[a-zé]{0,4}"|[0-9]{1,3}|\{\}|null),?){0,3}\]?|\{"(token|pid|offset)":("[^"]{0,6}"|1)\}?)?"#
        ) {
            for text in [s.as_str(), s.get(1..).unwrap_or("")] {
                if let Ok(p) = decode(text) {
                    let _ = event_args(p.data);
                    let _ = connect_auth(p.data);
                    let _ = namespace_channel(p.nsp);
                }
            }
        }

        #[test]
        fn events_decode_to_what_was_encoded(
            channel in "[^\\s\\p{Cc},]{1,20}",
            name in "\\PC{1,20}",
            n in proptest::prelude::any::<i64>(),
            epoch in "[A-Za-z0-9]{12}",
            offset in proptest::prelude::any::<u64>(),
        ) {
            let data = format!("{{\"n\":{n}}}");
            let text = event(&channel, &name, &data, &epoch, offset);
            let p = decode(&text[1..]).expect("decodes");
            let nsp = format!("/{channel}");
            proptest::prop_assert_eq!(p.nsp, nsp.as_str());
            let args = event_args(p.data).expect("args");
            proptest::prop_assert_eq!(args.name.as_ref(), name.as_str());
            proptest::prop_assert_eq!(args.args[0].get(), data.as_str());
            let pos: String = serde_json::from_str(args.args[1].get()).expect("string");
            proptest::prop_assert_eq!(parse_position(&pos), Some((epoch.as_str(), offset)));
        }
    }
}
