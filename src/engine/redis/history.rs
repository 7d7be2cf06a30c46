//! The recovery history in Redis: one stream per room
//! (`{prefix}history:{room}`), trimmed by count and age, whose entry ids are
//! cluster-wide offsets taken from one clock stream in the same script that
//! appends them and publishes the event to every node. Scripts run one at a
//! time, so offsets, history and delivery share one order.

use futures_util::StreamExt;
use redis::{Script, Value, aio::ConnectionManager};
use serde::{Deserialize, Serialize};
use socketioxide_redis::drivers::Driver;
use tokio::sync::mpsc;

use super::{PubSubDriver, values::bulk_string};
use crate::engine::{History, Missed, Recorded, StoreError, StoreResult, cmp_offsets};

/// Events waiting for this node's delivery loop.
const FEED: usize = 65_536;

/// KEYS: the clock stream, then one history stream per room.
/// ARGV: size, ttl ms, channel, event, data, event id, wire message.
const PUBLISH_SCRIPT: &str = r"
local offset = redis.call('XADD', KEYS[1], 'MAXLEN', '1', '*', 'e', ARGV[6])
local ms = tonumber(string.match(offset, '^(%d+)-'))
local minid = tostring(ms - tonumber(ARGV[2])) .. '-0'
for i = 2, #KEYS do
  redis.call('XADD', KEYS[i], 'MAXLEN', ARGV[1], offset, 'event', ARGV[4], 'data', ARGV[5], 'event_id', ARGV[6])
  redis.call('XTRIM', KEYS[i], 'MINID', minid)
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], offset .. ' ' .. ARGV[7])
return offset
";

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
    local deleted = nil
    for j = 1, #info, 2 do
      if info[j] == 'max-deleted-entry-id' then deleted = info[j + 1] end
    end
    if deleted then
      if after(deleted, from) then return {0} end
    elseif all[i][1] and after(all[i][1][1], from) then
      -- Redis 6.2 cannot tell a trimmed room from a quiet one: assume trimmed.
      return {0}
    end
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

/// What travels on the channel after the offset.
#[derive(Serialize, Deserialize)]
struct Wire {
    event: String,
    data: String,
    rooms: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    then_leave: Option<String>,
}

pub struct RedisHistory {
    conn: ConnectionManager,
    driver: PubSubDriver,
    prefix: String,
    channel: String,
    size: usize,
    ttl_ms: u64,
    publish: Script,
    missed: Script,
}

impl RedisHistory {
    pub fn new(
        conn: ConnectionManager,
        driver: PubSubDriver,
        prefix: &str,
        size: usize,
        ttl: std::time::Duration,
    ) -> Self {
        Self {
            conn,
            driver,
            prefix: prefix.to_owned(),
            channel: format!("{prefix}sio-history"),
            size: size.max(1),
            ttl_ms: ttl.as_millis() as u64,
            publish: Script::new(PUBLISH_SCRIPT),
            missed: Script::new(MISSED_SCRIPT),
        }
    }

    fn room_key(&self, room: &str) -> String {
        format!("{}history:{room}", self.prefix)
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
        let wire = serde_json::to_string(&Wire {
            event: event.to_owned(),
            data: data.to_owned(),
            rooms: rooms.to_vec(),
            then_leave: then_leave.map(str::to_owned),
        })
        .map_err(|e| StoreError(e.to_string()))?;
        let mut invocation = self.publish.key(format!("{}history:clock", self.prefix));
        for room in rooms {
            invocation.key(self.room_key(room));
        }
        let offset: String = invocation
            .arg(self.size)
            .arg(self.ttl_ms)
            .arg(&self.channel)
            .arg(event)
            .arg(data)
            .arg(event_id)
            .arg(wire)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(offset)
    }

    async fn feed(&self) -> StoreResult<(mpsc::Receiver<Recorded>, Option<String>)> {
        let mut messages = self
            .driver
            .subscribe(self.channel.clone(), FEED)
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        // Read after subscribing: whatever the feed brings up to here is in the history too.
        let newest: Value = redis::cmd("XREVRANGE")
            .arg(format!("{}history:clock", self.prefix))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await?;
        let last = match newest {
            Value::Array(mut entries) if !entries.is_empty() => match entries.swap_remove(0) {
                Value::Array(mut entry) if !entry.is_empty() => bulk_string(entry.swap_remove(0)),
                _ => None,
            },
            _ => None,
        };
        let (tx, rx) = mpsc::channel(FEED);
        tokio::spawn(async move {
            while let Some((_, payload)) = messages.next().await {
                match decode(&payload) {
                    Some(recorded) => {
                        if tx.send(recorded).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        crate::metrics::adapter_error("decode");
                        tracing::warn!("malformed history message dropped");
                    }
                }
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
            return Err(StoreError("unexpected reply to the history script".into()));
        };
        if items.is_empty() || matches!(items.first(), Some(Value::Int(0))) {
            return Ok(Missed::NotRecovered);
        }
        items.remove(0);
        let mut missed: Vec<Recorded> = items
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
        missed.sort_by(|a, b| cmp_offsets(&a.offset, &b.offset));
        missed.dedup_by(|a, b| a.offset == b.offset);
        Ok(Missed::Recovered(missed))
    }
}

fn decode(payload: &[u8]) -> Option<Recorded> {
    let text = std::str::from_utf8(payload).ok()?;
    let (offset, wire) = text.split_once(' ')?;
    let wire: Wire = serde_json::from_str(wire).ok()?;
    Some(Recorded {
        offset: offset.to_owned(),
        event: wire.event,
        data: wire.data,
        rooms: wire.rooms,
        then_leave: wire.then_leave,
    })
}
