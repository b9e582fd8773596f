//! Redis key layout and publish script shared by gateway nodes and anyone
//! publishing straight into Redis (backends, the load tool).
//!
//! All keys of one channel carry the hash tag `{<channel>}`, so a channel
//! lives in a single Redis Cluster slot.

/// KEYS: meta, pubsub channel, history stream. ARGV: fresh epoch (used if
/// none), state ttl seconds, frame prefix (see
/// [`crate::MessageFrame::prefix`]), history size, history ttl seconds,
/// and optionally [`SHARDED`] on a Redis Cluster. Returns `{epoch, offset}`.
///
/// One atomic step: assign the offset, append the frame to the history
/// stream (entry id `<offset>-0`, fields `f` = frame, `t` = ms time), publish
/// `<offset> <epoch> <ms time>\n<frame>` (the time lets nodes measure lag).
/// A new epoch clears the stream, so its ids always start over. On a Redis
/// Cluster the publish is an `SPUBLISH` on the shard channel, which carries
/// the channel's hash tag and so lives on the shard that ran the script.
pub const PUBLISH_SCRIPT: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', e)
  redis.call('DEL', KEYS[3])
end
local o = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
local frame = ARGV[3] .. e .. '","offset":' .. o .. '}'
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
if tonumber(ARGV[4]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[4], o .. '-0', 'f', frame, 't', ms)
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
local cmd = 'PUBLISH'
if ARGV[6] == 's' then cmd = 'SPUBLISH' end
redis.call(cmd, KEYS[2], o .. ' ' .. e .. ' ' .. ms .. '\n' .. frame)
return {e, o}
"#;

/// The sixth [`PUBLISH_SCRIPT`] argument on a Redis Cluster, whose nodes
/// `SSUBSCRIBE` (sharded pub/sub): without it the script `PUBLISH`es, which
/// a cluster broadcasts to every node and no Herald node listens to.
pub const SHARDED: &str = "s";

/// KEYS: meta, history stream. ARGV: read after this offset, at most this
/// many entries, history ttl seconds. Returns `{epoch or false, top offset,
/// offset1, frame1, offset2, frame2, ...}` with entries older than the ttl
/// left out. Epoch and entries are read in one atomic step.
pub const HISTORY_SCRIPT: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
local o = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local out = {e or false, o}
if not e then return out end
local now = redis.call('TIME')
local oldest = now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[3]) * 1000
local entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
for _, entry in ipairs(entries) do
  local id, fields = entry[1], entry[2]
  local frame, t = nil, 0
  for i = 1, #fields, 2 do
    if fields[i] == 'f' then frame = fields[i + 1] elseif fields[i] == 't' then t = tonumber(fields[i + 1]) end
  end
  if frame and t >= oldest then
    out[#out + 1] = tonumber(string.match(id, '^(%d+)'))
    out[#out + 1] = frame
  end
end
return out
"#;

/// The channel's history: a stream of its latest publications.
pub fn history_key(channel: &str) -> String {
    format!("herald:{{{channel}}}:h")
}

/// Hash of the channel's presence: session id → entry (JSON).
pub fn presence_key(channel: &str) -> String {
    format!("herald:{{{channel}}}:p")
}

/// Hash holding the channel's epoch (`e`) and latest offset (`o`).
pub fn meta_key(channel: &str) -> String {
    format!("herald:{{{channel}}}:m")
}

/// The Redis pub/sub channel nodes subscribe to for `channel`.
pub fn pubsub_channel(channel: &str) -> String {
    format!("herald:{{{channel}}}")
}

/// Which of `shards` client-side Redis shards (`broker.shards`, in order)
/// holds `channel`: jump consistent hash (Lamping and Veach, 2014) of the
/// channel name's 64-bit FNV-1a hash. Growing the list from n to n + 1
/// moves about 1/(n + 1) of the channels, all of them to the new shard.
pub fn shard_of(channel: &str, shards: usize) -> usize {
    let mut key = channel.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let (mut b, mut j) = (-1_i64, 0_i64);
    while j < shards as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1_u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed values: publishers outside Herald compute the same mapping.
        let got: Vec<usize> = ["a", "news", "chat:42", "orders:eu"]
            .iter()
            .map(|c| shard_of(c, 3))
            .collect();
        assert_eq!(got, [2, 2, 1, 0]);
        assert_eq!(shard_of("anything", 1), 0);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[shard_of(&format!("ch-{i}"), 3)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        // Growing 3 → 4 moves channels only to the new shard.
        for i in 0..3000 {
            let c = format!("ch-{i}");
            let (before, after) = (shard_of(&c, 3), shard_of(&c, 4));
            assert!(after == before || after == 3, "{c}: {before} → {after}");
        }
    }
}
