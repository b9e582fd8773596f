//! Engine.IO v4 payloads: the bodies of HTTP long-polling requests.
//!
//! Part of the Socket.IO transport, beside [`super::packet`]: a payload is
//! Engine.IO packets joined by the record separator `\x1e`, each one the
//! text a WebSocket message would carry, or `b` + base64 for a binary
//! packet. Pure text in, text out.

use super::packet::PacketError;

/// The record separator between the packets of a payload.
pub(crate) const SEPARATOR: u8 = 0x1e;

/// One packet of a payload a client sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item<'a> {
    /// A text packet, as a WebSocket text message would carry it.
    Text(&'a str),
    /// A binary packet (`b` + base64): its content is never needed.
    Binary,
}

/// Splits a payload into its packets. An empty payload or an empty packet
/// is an error (no client sends one).
pub(crate) fn decode(body: &str) -> Result<Vec<Item<'_>>, PacketError> {
    if body.is_empty() {
        return Err(PacketError("empty Engine.IO payload"));
    }
    body.split(char::from(SEPARATOR))
        .map(|p| match p.as_bytes().first() {
            None => Err(PacketError("empty Engine.IO packet in a payload")),
            Some(b'b') => Ok(Item::Binary),
            Some(_) => Ok(Item::Text(p)),
        })
        .collect()
}

/// Appends one text packet to a payload being built.
pub(crate) fn push(buf: &mut Vec<u8>, packet: &[u8]) {
    if !buf.is_empty() {
        buf.push(SEPARATOR);
    }
    buf.extend_from_slice(packet);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_split_on_the_record_separator() {
        assert_eq!(
            decode("40\u{1e}42[\"a\",1]\u{1e}3"),
            Ok(vec![
                Item::Text("40"),
                Item::Text("42[\"a\",1]"),
                Item::Text("3")
            ])
        );
        assert_eq!(decode("bAQID"), Ok(vec![Item::Binary]));
        assert!(decode("").is_err());
        assert!(decode("40\u{1e}").is_err());
        assert!(decode("\u{1e}40").is_err());
        assert!(decode("40\u{1e}\u{1e}3").is_err());
    }

    #[test]
    fn encoded_payloads_join_packets() {
        let mut buf = Vec::new();
        push(&mut buf, b"2");
        push(&mut buf, br#"42/c,["e",1,"x:1"]"#);
        push(&mut buf, b"6");
        assert_eq!(buf, b"2\x1e42/c,[\"e\",1,\"x:1\"]\x1e6");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn decoding_never_panics(s in ".{0,300}") {
            let _ = decode(&s);
        }

        #[test]
        fn decoding_gives_back_what_was_joined(
            packets in proptest::collection::vec("[0-6a-z\\[\\]{}\",/:]{1,20}", 1..8)
        ) {
            let mut buf = Vec::new();
            for p in &packets {
                push(&mut buf, p.as_bytes());
            }
            let body = String::from_utf8(buf).expect("utf8");
            let items = decode(&body).expect("valid payload");
            proptest::prop_assert_eq!(items.len(), packets.len());
            for (item, p) in items.iter().zip(&packets) {
                match item {
                    Item::Text(t) => proptest::prop_assert_eq!(*t, p.as_str()),
                    Item::Binary => proptest::prop_assert!(p.starts_with('b')),
                }
            }
        }
    }
}
