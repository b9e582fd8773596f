//! Hand-written byte scanner for the few fields the hot receive path needs.
//!
//! Deliveries are never decoded into a JSON tree: per frame the client only
//! needs the op, the channel, the offset (Herald) and the payload's `t` and
//! `s` numbers, all found by plain substring search on the frame bytes
//! without allocating. The scanner relies on the shapes the load tool itself
//! produces (payload `{"t":..,"s":..,"p":"xx.."}`, plain channel names) and
//! on Herald building `message` frames with `offset` as the last field.

/// The fields of one delivery that the load tool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery<'a> {
    /// Raw channel name bytes (not unescaped; load-test names need none).
    pub channel: &'a [u8],
    /// Herald per-channel offset.
    pub offset: Option<u64>,
    /// Send time in µs since the UNIX epoch, from the payload.
    pub t: Option<u64>,
    /// Publisher sequence number, from the payload.
    pub s: Option<u64>,
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while from + needle.len() <= hay.len() {
        let i = from
            + hay[from..=hay.len() - needle.len()]
                .iter()
                .position(|&b| b == first)?;
        if hay[i + 1..i + needle.len()] == *rest {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// Position of the last `needle` in `hay`.
pub fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    (0..=hay.len() - needle.len())
        .rev()
        .find(|&i| hay[i..i + needle.len()] == *needle)
}

/// Parses the unsigned integer at the start of `b` (after optional spaces).
pub fn leading_u64(b: &[u8]) -> Option<u64> {
    let b = trim_start(b);
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    b[..digits].iter().try_fold(0u64, |acc, &c| {
        acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// The number after `"key":` (first occurrence).
pub fn number_field(frame: &[u8], key: &[u8]) -> Option<u64> {
    let at = find_key(frame, key, false)?;
    leading_u64(&frame[at..])
}

/// The raw string after `"key":"` up to the next quote (first occurrence).
pub fn string_field<'a>(frame: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = find_key(frame, key, false)?;
    let rest = trim_start(&frame[at..]).strip_prefix(b"\"")?;
    let end = rest.iter().position(|&c| c == b'"')?;
    Some(&rest[..end])
}

/// Index just after `"key":`, first or last occurrence. Searches for the
/// quoted key and colon together so `"s":` never matches inside `"ts":`.
fn find_key(frame: &[u8], key: &[u8], last: bool) -> Option<usize> {
    // Keys here are at most a few bytes; build the needle on the stack.
    let mut buf = [0u8; 32];
    let n = key.len() + 3;
    if n > buf.len() {
        return None;
    }
    buf[0] = b'"';
    buf[1..=key.len()].copy_from_slice(key);
    buf[key.len() + 1] = b'"';
    buf[key.len() + 2] = b':';
    let needle = &buf[..n];
    let pos = if last {
        rfind(frame, needle)
    } else {
        find(frame, needle)
    }?;
    Some(pos + n)
}

/// The value of a Herald frame's `"op"`.
pub fn herald_op(frame: &[u8]) -> Option<&[u8]> {
    string_field(frame, b"op")
}

/// Reads `t` and `s` from a load-test payload that starts at `data`.
pub fn payload_fields(data: &[u8]) -> (Option<u64>, Option<u64>) {
    (number_field(data, b"t"), number_field(data, b"s"))
}

/// Scans a Herald `{"op":"message",...}` frame; `None` for any other op.
pub fn herald_message(frame: &[u8]) -> Option<Delivery<'_>> {
    if herald_op(frame)? != b"message" {
        return None;
    }
    let channel = string_field(frame, b"channel")?;
    // `data` precedes `epoch` and `offset`; `offset` is the frame's last field.
    let data_at = find_key(frame, b"data", false)?;
    let offset = find_key(frame, b"offset", true).and_then(|i| leading_u64(&frame[i..]));
    let (t, s) = payload_fields(&frame[data_at..]);
    Some(Delivery {
        channel,
        offset,
        t,
        s,
    })
}

/// Index of `name` in a family of channels `prefix0, prefix1, ...`.
pub fn channel_index(channel: &[u8], prefix: &[u8]) -> Option<u32> {
    let digits = channel.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    u32::try_from(leading_u64(digits)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::MessageFrame;
    use serde_json::value::RawValue;

    fn real_frame(channel: &str, data: &str, epoch: &str, offset: u64) -> Vec<u8> {
        let raw = RawValue::from_string(data.to_owned()).expect("json");
        let mut f = MessageFrame::prefix(channel, "e", &raw);
        MessageFrame::finish(&mut f, epoch, offset);
        f
    }

    #[test]
    fn scans_real_herald_message_frames() {
        let f = real_frame(
            "bench-12",
            r#"{"t":1732450000123456,"s":77,"p":"xxxxxxxx"}"#,
            "aB3dE6gH9jK1",
            4242,
        );
        let d = herald_message(&f).expect("a message");
        assert_eq!(d.channel, b"bench-12");
        assert_eq!(d.offset, Some(4242));
        assert_eq!(d.t, Some(1_732_450_000_123_456));
        assert_eq!(d.s, Some(77));
        assert_eq!(channel_index(d.channel, b"bench-"), Some(12));
    }

    #[test]
    fn payload_keys_do_not_confuse_frame_keys() {
        // A payload with its own "offset" and "channel" keys: the frame's own
        // offset is the last one, the channel the first one.
        let f = real_frame(
            "user-3",
            r#"{"t":5,"s":6,"channel":"nope","offset":999,"ts":1,"p":""}"#,
            "e",
            8,
        );
        let d = herald_message(&f).expect("a message");
        assert_eq!(d.channel, b"user-3");
        assert_eq!(d.offset, Some(8));
        assert_eq!((d.t, d.s), (Some(5), Some(6)));
    }

    #[test]
    fn other_herald_frames() {
        assert_eq!(herald_message(br#"{"op":"ping"}"#), None);
        assert_eq!(herald_op(br#"{"op":"ping"}"#), Some(&b"ping"[..]));
        let sub = br#"{"op":"subscribed","id":2,"channel":"bench-0","epoch":"x","offset":17}"#;
        assert_eq!(herald_op(sub), Some(&b"subscribed"[..]));
        assert_eq!(number_field(sub, b"offset"), Some(17));
        assert_eq!(number_field(sub, b"id"), Some(2));
        assert_eq!(string_field(sub, b"channel"), Some(&b"bench-0"[..]));
        let err = br#"{"op":"error","id":3,"code":"forbidden","message":"no"}"#;
        assert_eq!(string_field(err, b"code"), Some(&b"forbidden"[..]));
    }

    #[test]
    fn scans_socketio_event_payloads() {
        let f = br#"42["msg",{"t":1,"s":2,"p":"x"}]"#;
        assert_eq!(payload_fields(f), (Some(1), Some(2)));
    }

    #[test]
    fn numbers_and_search_edges() {
        assert_eq!(leading_u64(b" 12,"), Some(12));
        assert_eq!(leading_u64(b"x"), None);
        assert_eq!(leading_u64(b"99999999999999999999999"), None);
        assert_eq!(leading_u64(b"18446744073709551616"), None);
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(rfind(b"xaxa", b"xa"), Some(2));
        assert_eq!(channel_index(b"bench-", b"bench-"), None);
        assert_eq!(channel_index(b"bench-1x", b"bench-"), None);
        assert_eq!(channel_index(b"other-1", b"bench-"), None);
    }
}
