//! Active orders on Redis: one hash per order, one set per customer, store
//! and driver, and one sorted set of every active order by creation time
//! (`{prefix}orders:active`, for the cluster-wide overview of the demo
//! page). Every write is one script, so an index never disagrees with its
//! order for long; readers drop index entries whose order is gone. On a
//! cluster all of them share the slot of `{prefix}orders` (one hash tag),
//! because a script touches an order and the indexes of its parties.

use std::collections::HashMap;

use redis::{Script, Value};

use super::keys::KeySpace;
use super::link::Link;

use super::values::{bulk_string, field_map};
use crate::engine::StoreResult;
use crate::{
    active_order::ActiveOrder,
    auth::{Principal, Role},
    engine::traits::OrderStore,
    events::Timestamp,
};

/// Orders that never reach a terminal status must not stay forever.
const ORDER_TTL_MS: u64 = 48 * 3600 * 1000;

const CREATE: &str = r"
local p, id = ARGV[1], ARGV[2]
local key = p .. 'order:' .. id
-- Active already (a redelivered or repeated order.created): left exactly
-- as it is, and returned.
local existing = redis.call('HGETALL', key)
if #existing > 0 then return existing end
redis.call('HSET', key, 'order_id', id, 'status', ARGV[3], 'customer_id', ARGV[4], 'store_id', ARGV[5],
  'created_at', ARGV[6], 'updated_at', ARGV[6])
redis.call('PEXPIRE', key, ARGV[7])
for _, set in ipairs({p .. 'orders:customer:' .. ARGV[4], p .. 'orders:store:' .. ARGV[5]}) do
  redis.call('SADD', set, id)
  redis.call('PEXPIRE', set, ARGV[7])
end
-- Orders that expired without ending leave the overview with their hash's TTL.
local active = p .. 'orders:active'
redis.call('ZADD', active, ARGV[6], id)
redis.call('ZREMRANGEBYSCORE', active, '-inf', '(' .. (tonumber(ARGV[6]) - tonumber(ARGV[7])))
return false
";

const SET_STATUS: &str = r"
local key = ARGV[1] .. 'order:' .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return nil end
redis.call('HSET', key, 'status', ARGV[3], 'updated_at', ARGV[4])
redis.call('HINCRBY', key, 'seq', 1)
return redis.call('HGETALL', key)
";

const ASSIGN: &str = r"
local p, id = ARGV[1], ARGV[2]
local key = p .. 'order:' .. id
if redis.call('EXISTS', key) == 0 then return nil end
local old = redis.call('HGET', key, 'driver_id')
if old and old ~= ARGV[3] then redis.call('SREM', p .. 'orders:driver:' .. old, id) end
redis.call('HSET', key, 'driver_id', ARGV[3], 'updated_at', ARGV[4])
local set = p .. 'orders:driver:' .. ARGV[3]
redis.call('SADD', set, id)
redis.call('PEXPIRE', set, ARGV[5])
return redis.call('HGETALL', key)
";

const END: &str = r"
local p, id = ARGV[1], ARGV[2]
local key = p .. 'order:' .. id
local fields = redis.call('HGETALL', key)
if #fields == 0 then return nil end
local o = {}
for i = 1, #fields, 2 do o[fields[i]] = fields[i + 1] end
redis.call('DEL', key)
if o.customer_id then redis.call('SREM', p .. 'orders:customer:' .. o.customer_id, id) end
if o.store_id then redis.call('SREM', p .. 'orders:store:' .. o.store_id, id) end
if o.driver_id then redis.call('SREM', p .. 'orders:driver:' .. o.driver_id, id) end
redis.call('ZREM', p .. 'orders:active', id)
return fields
";

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
            create: Script::new(CREATE),
            set_status: Script::new(SET_STATUS),
            assign: Script::new(ASSIGN),
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
    let mut f: HashMap<String, Value> = field_map(reply);
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
    async fn create(&self, order: &ActiveOrder) -> StoreResult<Option<ActiveOrder>> {
        let reply: Value = self
            .create
            .key(self.order_key(&order.order_id))
            .arg(&self.prefix)
            .arg(&order.order_id)
            .arg(&order.status)
            .arg(&order.customer_id)
            .arg(&order.store_id)
            .arg(order.created_at)
            .arg(ORDER_TTL_MS)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(parse_order(reply))
    }

    async fn set_status(
        &self,
        order_id: &str,
        status: &str,
        at: Timestamp,
    ) -> StoreResult<Option<ActiveOrder>> {
        let reply: Value = self
            .set_status
            .key(self.order_key(order_id))
            .arg(&self.prefix)
            .arg(order_id)
            .arg(status)
            .arg(at)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(parse_order(reply))
    }

    async fn assign(
        &self,
        order_id: &str,
        driver_id: &str,
        at: Timestamp,
    ) -> StoreResult<Option<ActiveOrder>> {
        let reply: Value = self
            .assign
            .key(self.order_key(order_id))
            .arg(&self.prefix)
            .arg(order_id)
            .arg(driver_id)
            .arg(at)
            .arg(ORDER_TTL_MS)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(parse_order(reply))
    }

    async fn end(&self, order_id: &str) -> StoreResult<Option<ActiveOrder>> {
        let reply: Value = self
            .end
            .key(self.order_key(order_id))
            .arg(&self.prefix)
            .arg(order_id)
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
