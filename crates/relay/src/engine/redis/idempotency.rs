//! `Idempotency-Key` of the publish API on Redis: the key's record and the
//! append are one script, so a retry on another node, or two copies of a
//! request racing, append the event once.
//!
//! One script rather than `SET NX` then `XADD`: a node that died between
//! the two would leave a key that names no entry (or, the other way round,
//! an entry no key names), and a retry would get a 202 for an event never
//! appended. The record's key carries the stream's name as its hash tag
//! (`{prefix}idem:{{prefix}events}:<key>`), so on a Redis Cluster both keys
//! of the script share a slot.

use std::sync::LazyLock;

use redis::Script;

use super::link::Link;
use crate::engine::{IDEMPOTENCY_TTL, KeyedAppend, StoreError, StoreResult};

/// KEYS: the key's record, the stream. ARGV: the record's TTL (ms), type,
/// data. Returns {0 appended | 1 replayed | 2 conflict, entry id}. The
/// record holds a SHA-1 of the event, not the event: 24 h of events would
/// otherwise be kept twice.
const APPEND_KEYED: &str = r"
local fp = redis.sha1hex(ARGV[2] .. '\n' .. ARGV[3])
local seen = redis.call('HMGET', KEYS[1], 'fp', 'id')
if seen[1] then
  if seen[1] == fp then return {1, seen[2]} end
  return {2, seen[2]}
end
local id = redis.call('XADD', KEYS[2], '*', 'type', ARGV[2], 'data', ARGV[3])
redis.call('HSET', KEYS[1], 'fp', fp, 'id', id)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {0, id}
";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(APPEND_KEYED));

/// The record of `key` for the stream `stream` (which starts with the prefix).
pub fn record_key(prefix: &str, stream: &str, key: &str) -> String {
    format!("{prefix}idem:{{{stream}}}:{key}")
}

pub async fn append_keyed(
    mut conn: Link,
    prefix: &str,
    stream: &str,
    key: &str,
    kind: &str,
    data: &str,
) -> StoreResult<KeyedAppend> {
    let (state, id): (i64, String) = SCRIPT
        .key(record_key(prefix, stream, key))
        .key(stream)
        .arg(IDEMPOTENCY_TTL.as_millis() as u64)
        .arg(kind)
        .arg(data)
        .invoke_async(&mut conn)
        .await?;
    match state {
        0 => Ok(KeyedAppend::Appended(id)),
        1 => Ok(KeyedAppend::Replayed(id)),
        2 => Ok(KeyedAppend::Conflict(id)),
        other => Err(StoreError::BadData(format!(
            "idempotent append answered {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_shares_the_streams_slot() {
        assert_eq!(
            record_key("relay:", "relay:events", "k{1}"),
            "relay:idem:{relay:events}:k{1}"
        );
    }
}
