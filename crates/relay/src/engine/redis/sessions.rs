//! Each user's sockets counted across the cluster: one hash per user (a
//! role and a `sub`, `{prefix}sessions:{role}:{sub}`) with a count per node
//! instance, and a short-lived key per instance that says it
//! is alive. A node that dies stops refreshing its key, and its counts stop
//! counting (and are removed) without anyone having to clean up after it.
//! On a cluster they all share the slot of `{prefix}sessions`: the admit
//! script reads a user's hash and the instances' keys together.

use std::time::Duration;

use redis::Script;

use super::keys::KeySpace;
use super::link::Link;
use crate::auth::Role;
use crate::engine::StoreResult;
use crate::engine::traits::{BoxFuture, UserSessions};

/// How long an instance counts after its last keep-alive.
const ALIVE_FOR: Duration = Duration::from_secs(10);

/// A user with no socket left anywhere has no hash; this only bounds a
/// hash whose last release was lost.
const USER_KEY_TTL_MS: u64 = 24 * 3600 * 1000;

/// KEYS[1] user hash; ARGV: this instance, limit (0 = none), prefix of
/// the instances' alive keys, user key TTL ms. Counts of instances that are
/// no longer alive are dropped on the way.
const ADMIT: &str = r"
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  if fields[i] == ARGV[1] or redis.call('EXISTS', ARGV[3] .. fields[i]) == 1 then
    total = total + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
local limit = tonumber(ARGV[2])
if limit > 0 and total >= limit then
  return 0
end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// KEYS[1] user hash; ARGV[1] this instance.
const RELEASE: &str = r"
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
";

pub struct RedisUserSessions {
    conn: Link,
    prefix: String,
    instance: String,
    admit: Script,
    release: Script,
}

impl RedisUserSessions {
    pub fn new(conn: Link, space: &KeySpace, instance: String) -> Self {
        Self {
            conn,
            prefix: space.beside("sessions"),
            instance,
            admit: Script::new(ADMIT),
            release: Script::new(RELEASE),
        }
    }

    /// Keyed by role and sub, as the rooms are (`customer_{sub}`,
    /// `driver_{sub}`): a customer and a driver sharing a `sub` are two users.
    /// No role has a `:`, so the key reads back unambiguously.
    fn user_key(&self, role: Role, sub: &str) -> String {
        format!("{}sessions:{}:{sub}", self.prefix, role.as_str())
    }

    fn alive_prefix(&self) -> String {
        format!("{}instance:", self.prefix)
    }
}

impl UserSessions for RedisUserSessions {
    fn admit<'a>(
        &'a self,
        role: Role,
        sub: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let admitted: i64 = self
                .admit
                .key(self.user_key(role, sub))
                .arg(&self.instance)
                .arg(limit)
                .arg(self.alive_prefix())
                .arg(USER_KEY_TTL_MS)
                .invoke_async(&mut self.conn.clone())
                .await?;
            Ok(admitted == 1)
        })
    }

    fn release(&self, role: Role, sub: String) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let _: i64 = self
                .release
                .key(self.user_key(role, &sub))
                .arg(&self.instance)
                .invoke_async(&mut self.conn.clone())
                .await?;
            Ok(())
        })
    }

    fn keep_alive(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let () = redis::cmd("SET")
                .arg(format!("{}{}", self.alive_prefix(), self.instance))
                .arg(1)
                .arg("PX")
                .arg(ALIVE_FOR.as_millis() as u64)
                .query_async(&mut self.conn.clone())
                .await?;
            Ok(())
        })
    }
}
