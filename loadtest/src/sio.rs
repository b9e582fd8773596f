//! Socket.IO v5 over Engine.IO v4 packet codec, WebSocket transport only.
//!
//! Just enough to act as a Socket.IO client of the peer in
//! `shared/peers/socketio`: decode open/ping/connect/event packets without
//! allocating and encode the few packets a client sends.

/// Path of the Engine.IO WebSocket endpoint.
pub const WS_PATH: &str = "/socket.io/?EIO=4&transport=websocket";
/// Client → server: connect to the default namespace.
pub const CONNECT: &[u8] = b"40";
/// Client → server: answer to a server ping.
pub const PONG: &[u8] = b"3";

/// One decoded text frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Engine.IO open, with its JSON handshake.
    Open(&'a [u8]),
    Close,
    Ping,
    Pong,
    /// Socket.IO namespace connect acknowledged, with its JSON body.
    Connect(&'a [u8]),
    ConnectError(&'a [u8]),
    Disconnect,
    /// `42["name",args...]`: `args` is everything after the name's comma, up
    /// to (not including) the closing bracket.
    Event {
        name: &'a [u8],
        args: &'a [u8],
    },
    /// Anything else (upgrade, noop, acks, binary events, other namespaces).
    Other,
}

/// CONNECT to namespace `ns` (`""` is the default one), with an optional JSON body.
pub fn connect_packet(ns: &str, body: Option<&str>) -> Vec<u8> {
    let mut out = b"40".to_vec();
    if !ns.is_empty() {
        out.extend_from_slice(ns.as_bytes());
        out.push(b',');
    }
    if let Some(b) = body {
        out.extend_from_slice(b.as_bytes());
    }
    out
}

/// Decodes one Engine.IO text frame of the default namespace.
pub fn decode(frame: &[u8]) -> Packet<'_> {
    decode_in(frame, b"")
}

/// Decodes one Engine.IO text frame; Socket.IO packets count only in
/// namespace `ns` (`b""` for the default one, else e.g. `b"/news"`).
pub fn decode_in<'a>(frame: &'a [u8], ns: &[u8]) -> Packet<'a> {
    let Some((&kind, rest)) = frame.split_first() else {
        return Packet::Other;
    };
    match kind {
        b'0' => Packet::Open(rest),
        b'1' => Packet::Close,
        b'2' => Packet::Ping,
        b'3' => Packet::Pong,
        b'4' => decode_socketio(rest, ns),
        _ => Packet::Other,
    }
}

fn decode_socketio<'a>(p: &'a [u8], ns: &[u8]) -> Packet<'a> {
    let Some((&kind, rest)) = p.split_first() else {
        return Packet::Other;
    };
    // `/ns,` follows the type unless the namespace is the default one.
    let rest = if ns.is_empty() {
        if rest.first() == Some(&b'/') {
            return Packet::Other;
        }
        rest
    } else {
        match rest.strip_prefix(ns).and_then(|r| r.strip_prefix(b",")) {
            Some(r) => r,
            None => return Packet::Other,
        }
    };
    match kind {
        b'0' => Packet::Connect(rest),
        b'1' => Packet::Disconnect,
        b'4' => Packet::ConnectError(rest),
        b'2' => {
            // Optional ack id before the array.
            let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
            decode_event(&rest[digits..]).unwrap_or(Packet::Other)
        }
        _ => Packet::Other,
    }
}

fn decode_event(a: &[u8]) -> Option<Packet<'_>> {
    let a = a.strip_prefix(b"[\"")?;
    let end = a.iter().position(|&c| c == b'"')?;
    let name = &a[..end];
    let tail = &a[end + 1..];
    let args = match tail.strip_prefix(b",") {
        Some(args) => args.strip_suffix(b"]")?,
        None => {
            tail.strip_prefix(b"]")?;
            &[]
        }
    };
    Some(Packet::Event { name, args })
}

/// Appends `42["name",json]` to `out`; `json` must be one JSON value.
pub fn encode_event(out: &mut Vec<u8>, name: &str, json: &[u8]) {
    out.extend_from_slice(b"42[\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(json);
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_handshake_and_heartbeat() {
        let open = br#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#;
        assert!(matches!(decode(open), Packet::Open(j) if j.starts_with(b"{\"sid\"")));
        assert_eq!(
            decode(br#"40{"sid":"x1"}"#),
            Packet::Connect(br#"{"sid":"x1"}"#)
        );
        assert_eq!(decode(b"2"), Packet::Ping);
        assert_eq!(decode(b"3"), Packet::Pong);
        assert_eq!(decode(b"1"), Packet::Close);
        assert_eq!(decode(b"41"), Packet::Disconnect);
        assert!(matches!(
            decode(br#"44{"message":"no"}"#),
            Packet::ConnectError(_)
        ));
        assert_eq!(decode(b""), Packet::Other);
        assert_eq!(decode(b"6"), Packet::Other);
    }

    #[test]
    fn decodes_events() {
        let f = br#"42["msg",{"t":1,"s":2,"p":"x"}]"#;
        assert_eq!(
            decode(f),
            Packet::Event {
                name: b"msg",
                args: br#"{"t":1,"s":2,"p":"x"}"#
            }
        );
        assert_eq!(
            decode(br#"4217["ev"]"#),
            Packet::Event {
                name: b"ev",
                args: b""
            }
        );
        assert_eq!(decode(br#"42/admin,["msg",1]"#), Packet::Other);
        assert_eq!(decode(br#"42["broken"#), Packet::Other);
    }

    #[test]
    fn namespaces_are_told_apart() {
        assert_eq!(connect_packet("", None), b"40");
        assert_eq!(connect_packet("/news", None), b"40/news,");
        assert_eq!(
            connect_packet("/news", Some(r#"{"pid":"p"}"#)),
            br#"40/news,{"pid":"p"}"#
        );
        assert_eq!(
            decode_in(br#"42/news,["msg",{"s":1},"E:3"]"#, b"/news"),
            Packet::Event {
                name: b"msg",
                args: br#"{"s":1},"E:3""#
            }
        );
        assert_eq!(decode_in(br#"42/newsx,["msg",1]"#, b"/news"), Packet::Other);
        assert_eq!(decode_in(br#"42["msg",1]"#, b"/news"), Packet::Other);
        assert_eq!(
            decode_in(br#"40/news,{"sid":"a","pid":"b"}"#, b"/news"),
            Packet::Connect(br#"{"sid":"a","pid":"b"}"#)
        );
        assert!(matches!(
            decode_in(br#"44/news,{"message":"no"}"#, b"/news"),
            Packet::ConnectError(_)
        ));
        assert_eq!(decode_in(b"41/news,", b"/news"), Packet::Disconnect);
        assert_eq!(decode_in(b"2", b"/news"), Packet::Ping);
    }

    #[test]
    fn encodes_round_trip() {
        let mut out = Vec::new();
        encode_event(&mut out, "publish", br#"{"t":9,"s":0,"p":""}"#);
        assert_eq!(out, br#"42["publish",{"t":9,"s":0,"p":""}]"#);
        assert_eq!(
            decode(&out),
            Packet::Event {
                name: b"publish",
                args: br#"{"t":9,"s":0,"p":""}"#
            }
        );
    }
}
