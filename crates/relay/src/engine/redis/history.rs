//! The recovery history in Redis. Every recorded event is appended to one
//! cluster-wide stream, `{prefix}history:all`, whose entry id is its offset,
//! and under that id to one stream per target room
//! (`{prefix}history:{room}`), trimmed by count and age; one script does
//! both, and scripts run one at a time, so offsets, rooms and delivery share
//! one order. Nodes read `history:all` with XREAD BLOCK from the last offset
//! they delivered: unlike pub/sub, a node whose Redis connection drops for a
//! moment resumes exactly where it was, and misses nothing. On a cluster
//! all of them share the slot of `{prefix}history` (one hash tag), since
//! one script writes the cluster-wide stream and the rooms'.

use redis::{
    AsyncCommands, Script, Value,
    streams::{StreamId, StreamRangeReply, StreamReadReply},
};

use super::keys::KeySpace;
use super::link::Link;
use tokio::sync::mpsc;

use super::values::bulk_string;
use crate::engine::{History, Missed, Recorded, StoreError, StoreResult, in_offset_order};
use crate::metrics::{AdapterOp, StoreOp};
use crate::tasks::{Tasks, names};

/// Events waiting for this node's delivery loop.
const FEED: usize = 65_536;

/// KEYS: the cluster-wide stream, then one history stream per room.
/// ARGV: size, ttl ms, length of the cluster-wide stream, event, data,
/// event id, rooms (JSON), room to leave after it or ''.
const PUBLISH_SCRIPT: &str = r"
local offset = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*',
  'event', ARGV[4], 'data', ARGV[5], 'rooms', ARGV[7], 'then_leave', ARGV[8])
local ms = tonumber(string.match(offset, '^(%d+)-'))
local minid = tostring(ms - tonumber(ARGV[2])) .. '-0'
for i = 2, #KEYS do
  redis.call('XADD', KEYS[i], 'MAXLEN', ARGV[1], offset, 'event', ARGV[4], 'data', ARGV[5], 'event_id', ARGV[6])
  redis.call('XTRIM', KEYS[i], 'MINID', minid)
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return offset
";

/// How many recorded events the cluster-wide stream keeps: what a node that
/// lost Redis for a moment can catch up on.
const ALL_MAXLEN: usize = 100_000;
/// Longest an XREAD of the cluster-wide stream blocks.
const BLOCK_MS: u64 = 2000;
/// Entries read at once.
const READ_COUNT: usize = 512;

/// KEYS: one history stream per room. ARGV: last event id, ttl ms, up-to
/// offset or ''. Returns {0} when the history does not reach back to the
/// last event, else {1, entries...} with each entry {offset, event, data}.
const MISSED_SCRIPT: &str = r"
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function after(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am > bm or (am == bm and as > bs)
end
local all = {}
local from = nil
for i = 1, #KEYS do
  all[i] = redis.call('XRANGE', KEYS[i], '-', '+')
  if not from then
    for _, e in ipairs(all[i]) do
      local f = e[2]
      for j = 1, #f, 2 do
        if f[j] == 'event_id' and f[j + 1] == ARGV[1] then from = e[1] end
      end
      if from then break end
    end
  end
end
if not from then return {0} end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local from_ms = parse(from)
if from_ms + tonumber(ARGV[2]) <= now_ms then return {0} end
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[i])
    local added = nil
    for j = 1, #info, 2 do
      if info[j] == 'entries-added' then added = info[j + 1] end
    end
    -- Trimming (MAXLEN, MINID) leaves max-deleted-entry-id at 0-0, so tell
    -- it from the count: the room lost entries, all older than its first.
    -- Redis 6.2 cannot tell a trimmed room from a quiet one: assume trimmed.
    local trimmed = added == nil or added > #all[i]
    if trimmed and all[i][1] and after(all[i][1][1], from) then return {0} end
  end
end
local out = {1}
for i = 1, #KEYS do
  for _, e in ipairs(all[i]) do
    if after(e[1], from) and (ARGV[3] == '' or not after(e[1], ARGV[3])) then
      local f = e[2]
      local event, data = nil, nil
      for j = 1, #f, 2 do
        if f[j] == 'event' then event = f[j + 1] elseif f[j] == 'data' then data = f[j + 1] end
      end
      table.insert(out, {e[1], event, data})
    end
  end
end
return out
";

pub struct RedisHistory {
    conn: Link,
    /// For XREAD BLOCK only: a blocked connection serves nobody else.
    blocking: Link,
    prefix: String,
    size: usize,
    ttl_ms: u64,
    publish: Script,
    missed: Script,
    /// Where the feed's reader runs.
    tasks: Tasks,
}

impl RedisHistory {
    pub fn new(
        conn: Link,
        blocking: Link,
        space: &KeySpace,
        size: usize,
        ttl: std::time::Duration,
        tasks: Tasks,
    ) -> Self {
        Self {
            conn,
            blocking,
            prefix: space.beside("history"),
            size: size.max(1),
            ttl_ms: ttl.as_millis() as u64,
            publish: Script::new(PUBLISH_SCRIPT),
            missed: Script::new(MISSED_SCRIPT),
            tasks,
        }
    }

    fn room_key(&self, room: &str) -> String {
        format!("{}history:{room}", self.prefix)
    }

    fn all_key(&self) -> String {
        format!("{}history:all", self.prefix)
    }
}

impl History for RedisHistory {
    async fn publish(
        &self,
        event: &str,
        data: &str,
        event_id: &str,
        rooms: &[String],
        then_leave: Option<&str>,
    ) -> StoreResult<String> {
        let rooms_json =
            serde_json::to_string(rooms).map_err(|e| StoreError::BadData(e.to_string()))?;
        let mut invocation = self.publish.key(self.all_key());
        for room in rooms {
            invocation.key(self.room_key(room));
        }
        let offset: String = invocation
            .arg(self.size)
            .arg(self.ttl_ms)
            .arg(ALL_MAXLEN)
            .arg(event)
            .arg(data)
            .arg(event_id)
            .arg(rooms_json)
            .arg(then_leave.unwrap_or(""))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(offset)
    }

    async fn feed(&self) -> StoreResult<(mpsc::Receiver<Recorded>, Option<String>)> {
        let newest: StreamRangeReply = self
            .conn
            .clone()
            .xrevrange_count(self.all_key(), "+", "-", 1)
            .await?;
        let last = parse_records(newest.ids).pop().map(|r| r.offset);
        let (tx, rx) = mpsc::channel(FEED);
        let (mut conn, key) = (self.blocking.clone(), self.all_key());
        let mut after = last.clone().unwrap_or_else(|| "0-0".to_owned());
        let reader = tx.clone();
        let read_loop = async move {
            let mut backoff = std::time::Duration::from_millis(100);
            loop {
                let read: redis::RedisResult<StreamReadReply> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(READ_COUNT)
                    .arg("BLOCK")
                    .arg(BLOCK_MS)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&after)
                    .query_async(&mut conn)
                    .await;
                let reply = match read {
                    Ok(reply) => {
                        backoff = std::time::Duration::from_millis(100);
                        reply
                    }
                    Err(e) => {
                        let e = StoreError::from(e);
                        crate::metrics::store_error(StoreOp::HistoryRead);
                        // The feed is every event this node delivers: keep
                        // reading, at the slowest pace when only an operator can help.
                        if e.is_transient() {
                            tracing::debug!(error = %e, "reading recorded events failed, retrying");
                        } else {
                            tracing::error!(error = %e, "reading recorded events failed, retrying");
                            backoff = std::time::Duration::from_secs(2);
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                        if tx.is_closed() {
                            return;
                        }
                        continue;
                    }
                };
                let entries = reply.keys.into_iter().flat_map(|key| key.ids).collect();
                let records = parse_records(entries);
                for record in records {
                    after = record.offset.clone();
                    if tx.send(record).await.is_err() {
                        return;
                    }
                }
            }
        };
        // Ends with its receiver, also while XREAD blocks with nothing new.
        // Not restarted: the delivery loop ends with its feed, and a panic
        // here fails the node.
        self.tasks.spawn(names::HISTORY_FEED, async move {
            tokio::select! {
                () = reader.closed() => {}
                () = read_loop => {}
            }
        });
        Ok((rx, last))
    }

    async fn missed(
        &self,
        rooms: &[String],
        last_event_id: &str,
        up_to: Option<&str>,
    ) -> StoreResult<Missed> {
        if rooms.is_empty() {
            return Ok(Missed::NotRecovered);
        }
        let mut invocation = self.missed.key(self.room_key(&rooms[0]));
        for room in &rooms[1..] {
            invocation.key(self.room_key(room));
        }
        let reply: Value = invocation
            .arg(last_event_id)
            .arg(self.ttl_ms)
            .arg(up_to.unwrap_or(""))
            .invoke_async(&mut self.conn.clone())
            .await?;
        let Value::Array(mut items) = reply else {
            return Err(StoreError::BadData(
                "unexpected reply to the history script".into(),
            ));
        };
        if items.is_empty() || matches!(items.first(), Some(Value::Int(0))) {
            return Ok(Missed::NotRecovered);
        }
        items.remove(0);
        let missed: Vec<Recorded> = items
            .into_iter()
            .filter_map(|item| {
                let Value::Array(parts) = item else {
                    return None;
                };
                let mut parts = parts.into_iter().map(bulk_string);
                Some(Recorded {
                    offset: parts.next()??,
                    event: parts.next()??,
                    data: parts.next()??,
                    rooms: Vec::new(),
                    then_leave: None,
                })
            })
            .collect();
        Ok(Missed::Recovered(in_offset_order(missed)))
    }
}

/// Entries of `history:all` as recorded events; a malformed one is skipped
/// (and counted), never blocks the ones after it.
fn parse_records(rows: Vec<StreamId>) -> Vec<Recorded> {
    rows.into_iter()
        .filter_map(|row| {
            let StreamId {
                id: offset,
                map: mut fields,
                ..
            } = row;
            let mut take = |k: &str| fields.remove(k).and_then(bulk_string);
            let record = (|| {
                Some(Recorded {
                    offset: offset.clone(),
                    event: take("event")?,
                    data: take("data")?,
                    rooms: serde_json::from_str(&take("rooms")?).ok()?,
                    then_leave: take("then_leave").filter(|r| !r.is_empty()),
                })
            })();
            if record.is_none() {
                crate::metrics::adapter_error(AdapterOp::Decode);
                tracing::warn!(offset, "malformed recorded event skipped");
            }
            record
        })
        .collect()
}
