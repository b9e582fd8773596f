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

/// Decodes one Engine.IO text frame.
pub fn decode(frame: &[u8]) -> Packet<'_> {
    let Some((&kind, rest)) = frame.split_first() else {
        return Packet::Other;
    };
    match kind {
        b'0' => Packet::Open(rest),
        b'1' => Packet::Close,
        b'2' => Packet::Ping,
        b'3' => Packet::Pong,
        b'4' => decode_socketio(rest),
        _ => Packet::Other,
    }
}

fn decode_socketio(p: &[u8]) -> Packet<'_> {
    let Some((&kind, rest)) = p.split_first() else {
        return Packet::Other;
    };
    // Only the default namespace: a namespace would start with '/'.
    if rest.first() == Some(&b'/') {
        return Packet::Other;
    }
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
