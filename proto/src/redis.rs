//! Redis key layout and publish script shared by gateway nodes and anyone
//! publishing straight into Redis (backends, the load tool).
//!
//! All keys of one channel carry the hash tag `{<channel>}`, so a channel
//! lives in a single Redis Cluster slot.

/// KEYS: meta, pubsub channel. ARGV: fresh epoch (used if none), ttl seconds,
/// frame prefix (see [`crate::MessageFrame::prefix`]). Returns `{epoch, offset}`.
pub const PUBLISH_SCRIPT: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', e)
end
local o = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], o .. ' ' .. e .. '\n' .. ARGV[3] .. e .. '","offset":' .. o .. '}')
return {e, o}
"#;

/// Hash holding the channel's epoch (`e`) and latest offset (`o`).
pub fn meta_key(channel: &str) -> String {
    format!("herald:{{{channel}}}:m")
}

/// The Redis pub/sub channel nodes subscribe to for `channel`.
pub fn pubsub_channel(channel: &str) -> String {
    format!("herald:{{{channel}}}")
}
