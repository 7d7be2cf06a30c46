//! Order chats on Redis. Per order, a stream of its last messages
//! (`{prefix}chatlog:{<prefix>chat}:{order}`, entry ids = the messages'
//! `event_id`s) and, once the order ended, a hash of who took part
//! (`{prefix}chatparties:{<prefix>chat}:{order}`); and `{prefix}chat`, the
//! backend's feed of every message. The hash tag puts them all in the slot
//! of `{prefix}chat`, so one script can write a message to its log and to
//! the feed on a Redis Cluster too.

use redis::{Script, Value};

use super::link::Link;
use super::values::{bulk_string, field_map};
use crate::engine::{
    StoreError, StoreResult,
    traits::{CHAT_TTL_ACTIVE, CHAT_TTL_AFTER_END, ChatAppend, ChatLog, ChatParties, ChatRecord},
};

/// The backend's feed is read and stored by the backend: capped, roughly.
const FEED_MAXLEN: usize = 100_000;

/// KEYS: the order's log, `{prefix}chat`. ARGV: event_id, keep, TTL ms,
/// active (1/0), feed MAXLEN, then the feed's field values (order_id,
/// from_id, from_role, text, ts) and the message JSON.
///
/// XADD with the message's own id refuses an id at or before the log's
/// newest (kept by Redis also when trimmed away), which is exactly a
/// repeat: messages of an order reach here in stream order.
const APPEND: &str = r"
local log, feed = KEYS[1], KEYS[2]
local id = ARGV[1]
local function repeat_kind()
  local newest = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  if newest[1] and newest[1][1] == id then return 'repeat_newest' end
  return 'repeat_older'
end
if ARGV[4] ~= '1' then
  if redis.call('EXISTS', log) == 1 then
    local info = redis.call('XINFO', 'STREAM', log)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        local lm, ls = string.match(info[i + 1], '^(%d+)-(%d+)$')
        local im, is = string.match(id, '^(%d+)-(%d+)$')
        lm, ls, im, is = tonumber(lm), tonumber(ls), tonumber(im), tonumber(is)
        if im < lm or (im == lm and is <= ls) then return repeat_kind() end
      end
    end
  end
  return 'refused'
end
local added = redis.pcall('XADD', log, 'MAXLEN', ARGV[2], id, 'm', ARGV[11])
if type(added) == 'table' and added.err then return repeat_kind() end
redis.call('PEXPIRE', log, ARGV[3])
redis.call('XADD', feed, 'MAXLEN', '~', ARGV[5], '*', 'event_id', id, 'order_id', ARGV[6],
  'from_id', ARGV[7], 'from_role', ARGV[8], 'text', ARGV[9], 'ts', ARGV[10])
return 'new'
";

pub struct RedisChat {
    conn: Link,
    prefix: String,
    feed: String,
    append: Script,
}

impl RedisChat {
    pub fn new(conn: Link, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            feed: format!("{prefix}chat"),
            append: Script::new(APPEND),
        }
    }

    fn log_key(&self, order_id: &str) -> String {
        format!("{}chatlog:{{{}}}:{order_id}", self.prefix, self.feed)
    }

    fn parties_key(&self, order_id: &str) -> String {
        format!("{}chatparties:{{{}}}:{order_id}", self.prefix, self.feed)
    }
}

impl ChatLog for RedisChat {
    async fn append(
        &self,
        record: &ChatRecord,
        keep: usize,
        active: bool,
    ) -> StoreResult<ChatAppend> {
        let kind: String = self
            .append
            .key(self.log_key(&record.order_id))
            .key(&self.feed)
            .arg(&record.event_id)
            .arg(keep)
            .arg(CHAT_TTL_ACTIVE.as_millis() as u64)
            .arg(if active { "1" } else { "0" })
            .arg(FEED_MAXLEN)
            .arg(&record.order_id)
            .arg(&record.from_id)
            .arg(&record.from_role)
            .arg(&record.text)
            .arg(record.ts)
            .arg(&record.message)
            .invoke_async(&mut self.conn.clone())
            .await?;
        match kind.as_str() {
            "new" => Ok(ChatAppend::New),
            "repeat_newest" => Ok(ChatAppend::RepeatNewest),
            "repeat_older" => Ok(ChatAppend::RepeatOlder),
            "refused" => Ok(ChatAppend::Refused),
            other => Err(StoreError::BadData(format!(
                "chat append answered `{other}`"
            ))),
        }
    }

    async fn close(&self, order_id: &str, parties: &ChatParties) -> StoreResult<()> {
        let ttl = CHAT_TTL_AFTER_END.as_millis() as i64;
        let key = self.parties_key(order_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(&key, "customer_id", &parties.customer_id)
            .ignore();
        if let Some(driver) = &parties.driver_id {
            pipe.hset(&key, "driver_id", driver).ignore();
        }
        let () = pipe
            .pexpire(&key, ttl)
            .ignore()
            .pexpire(self.log_key(order_id), ttl)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn closed(&self, order_id: &str) -> StoreResult<Option<ChatParties>> {
        let reply: Value = redis::cmd("HGETALL")
            .arg(self.parties_key(order_id))
            .query_async(&mut self.conn.clone())
            .await?;
        let mut fields = field_map(reply);
        Ok(fields
            .remove("customer_id")
            .and_then(bulk_string)
            .map(|customer_id| ChatParties {
                customer_id,
                driver_id: fields.remove("driver_id").and_then(bulk_string),
            }))
    }

    async fn history(
        &self,
        order_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let end = before.map_or_else(|| "+".to_owned(), |b| format!("({b}"));
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(self.log_key(order_id))
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn.clone())
            .await?;
        let Value::Array(entries) = reply else {
            return Err(StoreError::BadData("XREVRANGE answered no array".into()));
        };
        let mut messages: Vec<String> = entries
            .into_iter()
            .filter_map(super::values::parse_entry)
            .filter_map(|(_, mut fields)| fields.remove("m").and_then(bulk_string))
            .collect();
        messages.reverse();
        Ok(messages)
    }
}
