//! The orders each user watches, on Redis: one sorted set per user
//! (`{prefix}watching:{role}:{sub}`), each order scored with when it is
//! forgotten, so that every node sees the same list.

use redis::AsyncCommands;

use super::link::Link;
use crate::{
    auth::Principal,
    engine::{
        StoreResult,
        traits::{WATCH_TTL, WatchedOrders},
    },
    events::now_ms,
};

pub struct RedisWatches {
    conn: Link,
    prefix: String,
}

impl RedisWatches {
    pub fn new(conn: Link, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, principal: &Principal) -> String {
        format!(
            "{}watching:{}:{}",
            self.prefix,
            principal.role().as_str(),
            principal.sub()
        )
    }
}

impl WatchedOrders for RedisWatches {
    async fn watch(&self, principal: &Principal, order_id: &str) -> StoreResult<()> {
        let key = self.key(principal);
        let now = now_ms();
        let ttl = WATCH_TTL.as_millis() as u64;
        // Orders forgotten on the way out; the set itself goes with its last one.
        let () = redis::pipe()
            .zadd(&key, order_id, now + ttl)
            .ignore()
            .zrembyscore(&key, "-inf", now)
            .ignore()
            .pexpire(&key, ttl as i64)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn unwatch(&self, principal: &Principal, order_id: &str) -> StoreResult<()> {
        let _: i64 = self
            .conn
            .clone()
            .zrem(self.key(principal), order_id)
            .await?;
        Ok(())
    }

    async fn watched(&self, principal: &Principal) -> StoreResult<Vec<String>> {
        let orders: Vec<String> = self
            .conn
            .clone()
            .zrangebyscore(self.key(principal), format!("({}", now_ms()), "+inf")
            .await?;
        Ok(orders)
    }
}
