//! The recovery history in Redis. Every recorded event is appended to
//! `{prefix}history:all`, whose entry id is its offset, and under that id
//! to one stream per target room (`{prefix}history:{room}`), trimmed by
//! count and age; one script does both, so offsets and rooms share one
//! order. On a Redis Cluster all of them carry one hash tag
//! (`{prefix}{{prefix}history}:history:...`), so that the script touches
//! one slot. The event then goes
//! live to the channel of each target room ([`RedisRooms`]): from the same
//! script on one server, from a pipeline after it on a cluster (where the
//! channels lie in other slots). A node that lost its pub/sub link fills
//! the gap from the rooms' streams.

use redis::{
    AsyncCommands, Script, ScriptInvocation, Value,
    streams::{StreamId, StreamRangeReply},
};

use super::keys::KeySpace;
use super::link::Link;
use super::rooms::RedisRooms;

use super::values::bulk_string;
use crate::engine::{
    History, Missed, Recorded, RoomChannels, Routed, StoreError, StoreResult, in_offset_order,
    merge_rooms,
};

/// KEYS: the cluster-wide stream, then one history stream per room.
/// ARGV: size, ttl ms, length of the cluster-wide stream, event, data,
/// event id, room to leave after it or ''.
const RECORD: &str = r"
local offset = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[4])
local ms = tonumber(string.match(offset, '^(%d+)-'))
local minid = tostring(ms - tonumber(ARGV[2])) .. '-0'
for i = 2, #KEYS do
  if ARGV[7] == '' then
    redis.call('XADD', KEYS[i], 'MAXLEN', ARGV[1], offset, 'event', ARGV[4], 'data', ARGV[5], 'event_id', ARGV[6])
  else
    redis.call('XADD', KEYS[i], 'MAXLEN', ARGV[1], offset, 'event', ARGV[4], 'data', ARGV[5], 'event_id', ARGV[6], 'then_leave', ARGV[7])
  end
  redis.call('XTRIM', KEYS[i], 'MINID', minid)
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
";

/// On a Redis Cluster the rooms' channels lie in other slots than the
/// history: the node publishes after the script, in a pipeline.
const RECORD_THEN_RETURN: &str = "return offset\n";

/// On one server the script publishes too, which saves the event a round
/// trip between its recording and its clients. ARGV after RECORD's: the
/// message before its offset, the message after it, then one channel per
/// room. Recorded and live in one atomic step: a node that misses the live
/// copy still finds it in the history.
const RECORD_AND_PUBLISH: &str = r"
local message = ARGV[8] .. offset .. ARGV[9]
for i = 10, #ARGV do
  redis.call('PUBLISH', ARGV[i], message)
end
return offset
";

/// How many entries the cluster-wide stream keeps: nobody reads it back
/// beyond its newest id (the offsets), so a few suffice.
const ALL_MAXLEN: usize = 1000;

/// Room streams read in one pipeline when filling a gap.
const FILL_CHUNK: usize = 256;

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
    rooms: RedisRooms,
    prefix: String,
    size: usize,
    ttl_ms: u64,
    publish: Script,
    /// One server: records and publishes in one script.
    publish_live: Script,
    missed: Script,
}

impl RedisHistory {
    pub fn new(
        conn: Link,
        rooms: RedisRooms,
        space: &KeySpace,
        size: usize,
        ttl: std::time::Duration,
    ) -> Self {
        Self {
            conn,
            rooms,
            prefix: space.beside("history"),
            size: size.max(1),
            ttl_ms: ttl.as_millis() as u64,
            publish: Script::new(&format!("{RECORD}{RECORD_THEN_RETURN}")),
            publish_live: Script::new(&format!("{RECORD}{RECORD_AND_PUBLISH}")),
            missed: Script::new(MISSED_SCRIPT),
        }
    }

    /// Every history key starts with this: on a cluster one hash tag, one slot.
    fn key_base(&self) -> String {
        format!("{}history:", self.prefix)
    }

    fn room_key(&self, room: &str) -> String {
        format!("{}{room}", self.key_base())
    }

    fn all_key(&self) -> String {
        format!("{}all", self.key_base())
    }

    /// The keys and arguments both record scripts share (the publishing one
    /// takes its message's head, tail and channels after them).
    fn recording<'a>(
        &self,
        script: &'a Script,
        recorded: &Recorded,
        event_id: &str,
    ) -> ScriptInvocation<'a> {
        let mut invocation = script.key(self.all_key());
        for room in &recorded.rooms {
            invocation.key(self.room_key(room));
        }
        invocation
            .arg(self.size)
            .arg(self.ttl_ms)
            .arg(ALL_MAXLEN)
            .arg(&recorded.event)
            .arg(&recorded.data)
            .arg(event_id)
            .arg(recorded.then_leave.as_deref().unwrap_or(""));
        invocation
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
        let recorded = Recorded {
            offset: String::new(),
            event: event.to_owned(),
            data: data.to_owned(),
            rooms: rooms.to_vec(),
            then_leave: then_leave.map(str::to_owned),
        };
        if !self.conn.is_cluster()
            && let Some((head, tail)) = Routed::recorded_around_offset(&recorded)
        {
            let mut invocation = self.recording(&self.publish_live, &recorded, event_id);
            invocation.arg(head).arg(tail);
            for room in rooms {
                invocation.arg(self.rooms.channel(room));
            }
            let offset: String = invocation.invoke_async(&mut self.conn.clone()).await?;
            crate::metrics::adapter_messages(
                crate::metrics::AdapterDirection::Publish,
                rooms.len(),
            );
            return Ok(offset);
        }
        let offset: String = self
            .recording(&self.publish, &recorded, event_id)
            .invoke_async(&mut self.conn.clone())
            .await?;
        // Recorded first, then live: a node that misses the live copy finds
        // it in the history when it fills the gap.
        let payload = Routed::Recorded(Recorded {
            offset: offset.clone(),
            ..recorded
        })
        .encode();
        self.rooms
            .publish(
                rooms
                    .iter()
                    .map(|room| (room.clone(), payload.clone()))
                    .collect(),
            )
            .await?;
        Ok(offset)
    }

    async fn newest(&self) -> StoreResult<Option<String>> {
        let newest: StreamRangeReply = self
            .conn
            .clone()
            .xrevrange_count(self.all_key(), "+", "-", 1)
            .await?;
        Ok(newest.ids.into_iter().next().map(|row| row.id))
    }

    async fn since(&self, rooms: &[String], from_ms: u64) -> StoreResult<Vec<Recorded>> {
        let mut found: Vec<Recorded> = Vec::new();
        for chunk in rooms.chunks(FILL_CHUNK) {
            let mut pipe = redis::pipe();
            for room in chunk {
                pipe.cmd("XRANGE")
                    .arg(self.room_key(room))
                    .arg(format!("{from_ms}-0"))
                    .arg("+");
            }
            let replies: Vec<StreamRangeReply> = pipe.query_async(&mut self.conn.clone()).await?;
            for (room, reply) in chunk.iter().zip(replies) {
                found.extend(parse_room_entries(room, reply.ids));
            }
        }
        Ok(merge_rooms(found))
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

/// A room stream's entries as recorded events of that room; a malformed
/// one is skipped (and counted), never blocks the ones after it.
fn parse_room_entries(room: &str, rows: Vec<StreamId>) -> Vec<Recorded> {
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
                    rooms: vec![room.to_owned()],
                    then_leave: take("then_leave").filter(|r| !r.is_empty()),
                })
            })();
            if record.is_none() {
                crate::metrics::adapter_error(crate::metrics::AdapterOp::Decode);
                tracing::warn!(offset, "malformed recorded event skipped");
            }
            record
        })
        .collect()
}
