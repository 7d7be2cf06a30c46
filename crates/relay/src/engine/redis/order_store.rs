//! Active orders on Redis: one hash per order, one set per customer, store
//! and driver, and one sorted set of every active order by creation time
//! (`{prefix}orders:active`, for the cluster-wide overview of the demo
//! page). Every write is one script, so an index never disagrees with its
//! order for long; readers drop index entries whose order is gone. On a
//! cluster all of them share the slot of `{prefix}orders` (one hash tag),
//! because a script touches an order and the indexes of its parties.
//!
//! Each order remembers the last stream entry applied to it (`last_entry`),
//! and an ended order the entry that ended it (`{prefix}order-ended:{id}`,
//! 48 h, under the same tag): a write from an entry at or before those is a
//! repeat and writes nothing (see `OrderStore`).

use std::collections::HashMap;

use redis::{Script, Value};

use super::keys::KeySpace;
use super::link::Link;

use super::values::{bulk_string, field_map};
use crate::engine::{StoreError, StoreResult};
use crate::{
    active_order::ActiveOrder,
    auth::{Principal, Role},
    engine::traits::{Assignment, Created, OrderStore, OrderWrite},
    events::Timestamp,
};

fn unreadable() -> StoreError {
    StoreError::BadData("an order hash without its fields".into())
}

/// Orders that never reach a terminal status must not stay forever.
const ORDER_TTL_MS: u64 = 48 * 3600 * 1000;

/// Compares two stream ids (`ms-seq`) as numbers: -1, 0 or 1.
const CMP: &str = r"
local function cmp(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am or 0), tonumber(as or 0), tonumber(bm or 0), tonumber(bs or 0)
  if am ~= bm then if am < bm then return -1 else return 1 end end
  if as ~= bs then if as < bs then return -1 else return 1 end end
  return 0
end
";

/// The start of a write by stream entry ARGV[3] to order ARGV[2]: returns
/// {1} for a repeat superseded by a later entry or by the order's end, {2}
/// when the order is not active, and the hash's fields ({0, fields}) when
/// the entry was the last one applied (a repeat that writes nothing).
/// Orders written before entries were recorded have no `last_entry`.
const WRITE_GUARD: &str = r"
local p, id, entry = ARGV[1], ARGV[2], ARGV[3]
local ended = redis.call('GET', p .. 'order-ended:' .. id)
if ended and cmp(entry, ended) <= 0 then return {1} end
local key = p .. 'order:' .. id
if redis.call('EXISTS', key) == 0 then return {2} end
local last = redis.call('HGET', key, 'last_entry')
if last then
  local c = cmp(entry, last)
  if c < 0 then return {1} end
  if c == 0 then return {0, redis.call('HGETALL', key)} end
end
";

/// ARGV: prefix, id, entry, status, customer, store, created at, TTL.
/// {0}: recorded; {1, fields}: active already, left exactly as it is (a
/// redelivered or repeated order.created); {2}: ended after this entry.
const CREATE: &str = r"
local p, id, entry = ARGV[1], ARGV[2], ARGV[3]
local key = p .. 'order:' .. id
local existing = redis.call('HGETALL', key)
if #existing > 0 then return {1, existing} end
local ended = redis.call('GET', p .. 'order-ended:' .. id)
if ended and cmp(entry, ended) <= 0 then return {2} end
redis.call('HSET', key, 'order_id', id, 'status', ARGV[4], 'customer_id', ARGV[5], 'store_id', ARGV[6],
  'created_at', ARGV[7], 'updated_at', ARGV[7], 'last_entry', entry)
redis.call('PEXPIRE', key, ARGV[8])
for _, set in ipairs({p .. 'orders:customer:' .. ARGV[5], p .. 'orders:store:' .. ARGV[6]}) do
  redis.call('SADD', set, id)
  redis.call('PEXPIRE', set, ARGV[8])
end
-- Orders that expired without ending leave the overview with their hash's TTL.
local active = p .. 'orders:active'
redis.call('ZADD', active, ARGV[7], id)
redis.call('ZREMRANGEBYSCORE', active, '-inf', '(' .. (tonumber(ARGV[7]) - tonumber(ARGV[8])))
return {0}
";

/// ARGV: prefix, id, entry, status, at.
const SET_STATUS: &str = r"
redis.call('HSET', key, 'status', ARGV[4], 'updated_at', ARGV[5], 'last_entry', entry)
redis.call('HINCRBY', key, 'seq', 1)
return {0, redis.call('HGETALL', key)}
";

/// ARGV: prefix, id, entry, driver, at, TTL. Keeps the driver it replaces
/// (`prev_driver_id`): a repeat must still take that one out of the room.
const ASSIGN: &str = r"
local old = redis.call('HGET', key, 'driver_id')
if old and old ~= ARGV[4] then redis.call('SREM', p .. 'orders:driver:' .. old, id) end
if old then
  redis.call('HSET', key, 'prev_driver_id', old)
else
  redis.call('HDEL', key, 'prev_driver_id')
end
redis.call('HSET', key, 'driver_id', ARGV[4], 'updated_at', ARGV[5], 'last_entry', entry)
local set = p .. 'orders:driver:' .. ARGV[4]
redis.call('SADD', set, id)
redis.call('PEXPIRE', set, ARGV[6])
return {0, redis.call('HGETALL', key)}
";

/// ARGV: prefix, id, entry, TTL. The entry that ended the order is kept
/// as long as an unended order would be: repeats of earlier entries are
/// recognised until then.
const END: &str = r"
local p, id = ARGV[1], ARGV[2]
local key = p .. 'order:' .. id
local fields = redis.call('HGETALL', key)
if #fields == 0 then return nil end
local o = {}
for i = 1, #fields, 2 do o[fields[i]] = fields[i + 1] end
redis.call('DEL', key)
redis.call('SET', p .. 'order-ended:' .. id, ARGV[3], 'PX', ARGV[4])
if o.customer_id then redis.call('SREM', p .. 'orders:customer:' .. o.customer_id, id) end
if o.store_id then redis.call('SREM', p .. 'orders:store:' .. o.store_id, id) end
if o.driver_id then redis.call('SREM', p .. 'orders:driver:' .. o.driver_id, id) end
redis.call('ZREM', p .. 'orders:active', id)
return fields
";

/// What a guarded write script answered: its state and the order's fields.
fn written(reply: Value) -> OrderWrite<HashMap<String, Value>> {
    let Value::Array(mut parts) = reply else {
        return OrderWrite::NotActive;
    };
    let fields = (parts.len() > 1).then(|| parts.remove(1));
    match parts.first() {
        Some(Value::Int(0)) => OrderWrite::Current(fields.map(field_map).unwrap_or_default()),
        Some(Value::Int(1)) => OrderWrite::Superseded,
        _ => OrderWrite::NotActive,
    }
}

pub struct RedisOrders {
    conn: Link,
    /// Where every key of the order state starts (tagged on a cluster).
    prefix: String,
    create: Script,
    set_status: Script,
    assign: Script,
    end: Script,
}

impl RedisOrders {
    pub fn new(conn: Link, space: &KeySpace) -> Self {
        Self {
            conn,
            prefix: space.beside("orders"),
            create: Script::new(&format!("{CMP}{CREATE}")),
            set_status: Script::new(&format!("{CMP}{WRITE_GUARD}{SET_STATUS}")),
            assign: Script::new(&format!("{CMP}{WRITE_GUARD}{ASSIGN}")),
            end: Script::new(END),
        }
    }

    fn conn(&self) -> Link {
        self.conn.clone()
    }

    /// The order's hash: also the key a script is routed by on a cluster
    /// (the scripts build the other keys from the same tagged prefix).
    fn order_key(&self, order_id: &str) -> String {
        format!("{}order:{order_id}", self.prefix)
    }

    async fn members(&self, set: String) -> StoreResult<Vec<ActiveOrder>> {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(&mut self.conn())
            .await?;
        self.load(set, "SREM", ids).await
    }

    /// The orders of `ids`, oldest first; ids whose order is gone are
    /// removed from `index` with `remove` (SREM or ZREM).
    async fn load(
        &self,
        index: String,
        remove: &str,
        ids: Vec<String>,
    ) -> StoreResult<Vec<ActiveOrder>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(self.order_key(id));
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.conn()).await?;
        let mut orders = Vec::with_capacity(ids.len());
        let mut stale = Vec::new();
        for (id, reply) in ids.into_iter().zip(replies) {
            match parse_order(reply) {
                Some(order) => orders.push(order),
                None => stale.push(id),
            }
        }
        if !stale.is_empty() {
            let _: i64 = redis::cmd(remove)
                .arg(&index)
                .arg(&stale)
                .query_async(&mut self.conn())
                .await?;
        }
        orders.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.order_id.cmp(&b.order_id))
        });
        Ok(orders)
    }
}

fn parse_order(reply: Value) -> Option<ActiveOrder> {
    order_from(field_map(reply))
}

fn order_from(mut f: HashMap<String, Value>) -> Option<ActiveOrder> {
    let mut take = |k: &str| f.remove(k).and_then(bulk_string);
    let ms = |v: Option<String>| v.and_then(|v| v.parse::<Timestamp>().ok()).unwrap_or(0);
    Some(ActiveOrder {
        order_id: take("order_id")?,
        status: take("status")?,
        customer_id: take("customer_id")?,
        store_id: take("store_id")?,
        driver_id: take("driver_id"),
        created_at: ms(take("created_at")),
        updated_at: ms(take("updated_at")),
        seq: ms(take("seq")),
    })
}

impl OrderStore for RedisOrders {
    async fn create(&self, order: &ActiveOrder, event_id: &str) -> StoreResult<Created> {
        let reply: Value = self
            .create
            .key(self.order_key(&order.order_id))
            .arg(&self.prefix)
            .arg(&order.order_id)
            .arg(event_id)
            .arg(&order.status)
            .arg(&order.customer_id)
            .arg(&order.store_id)
            .arg(order.created_at)
            .arg(ORDER_TTL_MS)
            .invoke_async(&mut self.conn())
            .await?;
        let Value::Array(mut parts) = reply else {
            return Err(StoreError::BadData("order create answered no array".into()));
        };
        let fields = (parts.len() > 1).then(|| parts.remove(1));
        match (parts.first(), fields.and_then(parse_order)) {
            (Some(Value::Int(0)), _) => Ok(Created::New),
            (Some(Value::Int(1)), Some(active)) => Ok(Created::Active(active)),
            (Some(Value::Int(2)), _) => Ok(Created::Ended),
            (state, _) => Err(StoreError::BadData(format!(
                "order create answered {state:?}"
            ))),
        }
    }

    async fn set_status(
        &self,
        order_id: &str,
        status: &str,
        at: Timestamp,
        event_id: &str,
    ) -> StoreResult<OrderWrite> {
        let reply: Value = self
            .set_status
            .key(self.order_key(order_id))
            .arg(&self.prefix)
            .arg(order_id)
            .arg(event_id)
            .arg(status)
            .arg(at)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(match written(reply) {
            OrderWrite::Current(fields) => {
                OrderWrite::Current(order_from(fields).ok_or_else(unreadable)?)
            }
            OrderWrite::Superseded => OrderWrite::Superseded,
            OrderWrite::NotActive => OrderWrite::NotActive,
        })
    }

    async fn assign(
        &self,
        order_id: &str,
        driver_id: &str,
        at: Timestamp,
        event_id: &str,
    ) -> StoreResult<OrderWrite<Assignment>> {
        let reply: Value = self
            .assign
            .key(self.order_key(order_id))
            .arg(&self.prefix)
            .arg(order_id)
            .arg(event_id)
            .arg(driver_id)
            .arg(at)
            .arg(ORDER_TTL_MS)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(match written(reply) {
            OrderWrite::Current(mut fields) => {
                let previous = fields.remove("prev_driver_id").and_then(bulk_string);
                let order = order_from(fields).ok_or_else(unreadable)?;
                OrderWrite::Current(Assignment { order, previous })
            }
            OrderWrite::Superseded => OrderWrite::Superseded,
            OrderWrite::NotActive => OrderWrite::NotActive,
        })
    }

    async fn end(&self, order_id: &str, event_id: &str) -> StoreResult<Option<ActiveOrder>> {
        let reply: Value = self
            .end
            .key(self.order_key(order_id))
            .arg(&self.prefix)
            .arg(order_id)
            .arg(event_id)
            .arg(ORDER_TTL_MS)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(parse_order(reply))
    }

    async fn get(&self, order_id: &str) -> StoreResult<Option<ActiveOrder>> {
        let reply: Value = redis::cmd("HGETALL")
            .arg(self.order_key(order_id))
            .query_async(&mut self.conn())
            .await?;
        Ok(parse_order(reply))
    }

    async fn active_for(&self, principal: &Principal) -> StoreResult<Vec<ActiveOrder>> {
        let p = &self.prefix;
        match principal.role() {
            Role::Customer => {
                self.members(format!("{p}orders:customer:{}", principal.sub()))
                    .await
            }
            Role::Driver => {
                self.members(format!("{p}orders:driver:{}", principal.sub()))
                    .await
            }
            Role::Merchant => {
                let mut all = Vec::new();
                for store in principal.store_ids() {
                    all.extend(self.members(format!("{p}orders:store:{store}")).await?);
                }
                // Oldest first across the stores too, as for one index.
                all.sort_by(|a, b| {
                    a.created_at
                        .cmp(&b.created_at)
                        .then(a.order_id.cmp(&b.order_id))
                });
                all.dedup_by(|a, b| a.order_id == b.order_id);
                Ok(all)
            }
            Role::Admin | Role::Support => Ok(Vec::new()),
        }
    }

    async fn newest(&self, max: usize) -> StoreResult<Vec<ActiveOrder>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let index = format!("{}orders:active", self.prefix);
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(&index)
            .arg(0)
            .arg(max - 1)
            .query_async(&mut self.conn())
            .await?;
        self.load(index, "ZREM", ids).await
    }
}
