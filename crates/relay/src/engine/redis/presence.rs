//! Presence across the cluster (CONTRACT §7). Each node instance writes its
//! own socket count per store and driver; Lua scripts turn the sum over
//! live instances into transitions and append each to `{prefix}presence`
//! in the same atomic step, so that two nodes racing on one id produce one
//! entry per change, in order.
//!
//! Keys (every one in the slot of `{prefix}presence`, whose exact name the
//! contract fixes: the others carry it as their hash tag, so one script
//! touches one slot on a Redis Cluster too):
//! - `{prefix}presence`: the stream the backend reads;
//! - `{prefix}presence:{T}:id:<kind>:<id>`: hash with a field `n:<instance>`
//!   (that instance's sockets), `online` (`1`/`0`) and `since` (unix ms);
//! - `{prefix}presence:{T}:of:<instance>`: set of the ids the instance counts;
//! - `{prefix}presence:{T}:instances`: sorted set, instance -> alive until (ms);
//! - `{prefix}presence:{T}:due`: sorted set, id -> when its grace ends (ms);
//! - `{prefix}presence:{T}:online:store|driver`: sets of online ids (gauges).
//!
//! where `{T}` is `{` + `{prefix}presence` + `}`. Times come from Redis
//! (`TIME`), one clock for every node.

use std::time::Duration;

use redis::Script;

use super::link::Link;
use crate::engine::StoreResult;
use crate::engine::traits::{PresenceStore, PresenceSweep, PresenceWrite};
use crate::events::{PresenceChange, PresenceId, PresenceState};

/// How long an instance counts after its last write or keep-alive. The
/// node keeps alive every [`KEEP_ALIVE_EVERY`]; a dead node's ids go offline
/// within grace + 10 s (see [`SWEEP`]).
pub const ALIVE_FOR: Duration = Duration::from_secs(9);

/// How often a node's presence worker keeps its instance alive.
pub const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(2);

/// About this many entries stay in `{prefix}presence` (MAXLEN ~).
pub const STREAM_MAXLEN: usize = 100_000;

/// An id offline with no socket anywhere keeps its `since` this long.
const KEEP_OFFLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Ids whose grace ends handled per sweep; the rest wait for the next one.
const DUE_PER_SWEEP: usize = 1000;

/// KEYS: stream, instances, due. ARGV[1] key base, [2] stream MAXLEN,
/// [3] how long an offline id's state is kept (ms). Every script starts
/// with this: the clock, and how an id settles after its counts changed.
const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stream, instances, due = KEYS[1], KEYS[2], KEYS[3]
local base, maxlen, keep_offline = ARGV[1], ARGV[2], ARGV[3]
local changes = {}

local function id_key(member) return base .. 'id:' .. member end

-- The sockets of instances still alive; fields of instances given up for
-- dead (no longer in `instances`) are dropped on the way.
local function total(key)
  local fields = redis.call('HGETALL', key)
  local sum = 0
  for i = 1, #fields, 2 do
    local f = fields[i]
    if string.sub(f, 1, 2) == 'n:' then
      if redis.call('ZSCORE', instances, string.sub(f, 3)) then
        sum = sum + tonumber(fields[i + 1])
      else
        redis.call('HDEL', key, f)
      end
    end
  end
  return sum
end

local function transition(member, key, online)
  local sep = string.find(member, ':', 1, true)
  local kind, id = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  redis.call('HSET', key, 'online', online and '1' or '0', 'since', now)
  if online then
    redis.call('SADD', base .. 'online:' .. kind, id)
  else
    redis.call('SREM', base .. 'online:' .. kind, id)
  end
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'kind', kind, 'id', id,
    'online', online and 'true' or 'false', 'ts', now)
  changes[#changes + 1] = {member, online and 1 or 0, now}
end

-- Online at once when a socket is counted; offline once `off_at` has come
-- with none (until then the id waits in `due`: a reconnect cancels it).
local function settle(member, off_at)
  local key = id_key(member)
  local n = total(key)
  local online = redis.call('HGET', key, 'online') == '1'
  if n > 0 then
    redis.call('ZREM', due, member)
    redis.call('PERSIST', key)
    if not online then transition(member, key, true) end
  elseif online then
    if off_at <= now then
      redis.call('ZREM', due, member)
      transition(member, key, false)
      redis.call('PEXPIRE', key, keep_offline)
    else
      redis.call('ZADD', due, 'NX', off_at, member)
    end
  elseif redis.call('EXISTS', key) == 1 then
    redis.call('PEXPIRE', key, keep_offline)
  end
end

local function drop_instance(inst, off_at)
  local of = base .. 'of:' .. inst
  local members = redis.call('SMEMBERS', of)
  redis.call('DEL', of)
  redis.call('ZREM', instances, inst)
  for _, m in ipairs(members) do
    redis.call('HDEL', id_key(m), 'n:' .. inst)
    settle(m, off_at)
  end
end
";

/// ARGV[4] instance, [5] grace ms, [6] alive for ms, then member/count
/// pairs. An instance unknown or past its time starts afresh (its counts
/// dropped, with grace) and says so: its node then sets them all again.
const SET_COUNTS: &str = r"
local inst, grace, alive_for = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local known = 1
local score = redis.call('ZSCORE', instances, inst)
if not score or tonumber(score) < now then
  known = 0
  if score then drop_instance(inst, now + grace) end
end
redis.call('ZADD', instances, now + alive_for, inst)
for i = 7, #ARGV, 2 do
  local m, c = ARGV[i], tonumber(ARGV[i + 1])
  if c > 0 then
    redis.call('HSET', id_key(m), 'n:' .. inst, c)
    redis.call('SADD', base .. 'of:' .. inst, m)
  else
    redis.call('HDEL', id_key(m), 'n:' .. inst)
    redis.call('SREM', base .. 'of:' .. inst, m)
  end
  settle(m, now + grace)
end
return {known, changes}
";

/// ARGV[4] instance, [5] grace ms.
const FORGET: &str = r"
drop_instance(ARGV[4], now + tonumber(ARGV[5]))
return {1, changes}
";

/// ARGV[4] grace ms, [5] alive for minus the keep-alive interval (ms),
/// [6] due ids per sweep. One dead instance per sweep (it may count
/// thousands of ids). Its sockets may have gone any time after its last
/// keep-alive, at `alive_until - alive_for`; its ids go offline `grace`
/// after about then (one keep-alive interval later, for a node that died
/// just before its next one), and never before it was found dead: within
/// grace + 10 s of the death.
const SWEEP: &str = r"
local grace, shift, per_sweep = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local dead = redis.call('ZRANGEBYSCORE', instances, '-inf', '(' .. now, 'WITHSCORES', 'LIMIT', 0, 1)
for i = 1, #dead, 2 do
  drop_instance(dead[i], math.max(now, tonumber(dead[i + 1]) - shift + grace))
end
local ripe = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, per_sweep)
for _, m in ipairs(ripe) do
  redis.call('ZREM', due, m)
  settle(m, now)
end
return {changes, redis.call('SCARD', base .. 'online:store'), redis.call('SCARD', base .. 'online:driver')}
";

type RawChange = (String, i64, i64);

pub struct RedisPresence {
    conn: Link,
    stream: String,
    instances: String,
    due: String,
    base: String,
    set_counts: Script,
    forget: Script,
    sweep: Script,
}

impl RedisPresence {
    pub fn new(conn: Link, prefix: &str) -> Self {
        let stream = format!("{prefix}presence");
        let base = format!("{stream}:{{{stream}}}:");
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            conn,
            instances: format!("{base}instances"),
            due: format!("{base}due"),
            stream,
            base,
            set_counts: script(SET_COUNTS),
            forget: script(FORGET),
            sweep: script(SWEEP),
        }
    }

    /// The prelude's keys and arguments, common to every script.
    fn invocation<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        call.key(&self.stream)
            .key(&self.instances)
            .key(&self.due)
            .arg(&self.base)
            .arg(STREAM_MAXLEN)
            .arg(KEEP_OFFLINE.as_millis() as u64);
        call
    }
}

fn changes(raw: Vec<RawChange>) -> Vec<PresenceChange> {
    raw.into_iter()
        .filter_map(|(member, online, ts)| {
            Some(PresenceChange {
                who: PresenceId::parse(&member)?,
                online: online == 1,
                ts: u64::try_from(ts).unwrap_or(0),
            })
        })
        .collect()
}

fn write((known, raw): (i64, Vec<RawChange>)) -> PresenceWrite {
    PresenceWrite {
        changes: changes(raw),
        known: known == 1,
    }
}

impl PresenceStore for RedisPresence {
    async fn set_counts(
        &self,
        instance: &str,
        counts: &[(PresenceId, u32)],
        grace: Duration,
    ) -> StoreResult<PresenceWrite> {
        let mut call = self.invocation(&self.set_counts);
        call.arg(instance)
            .arg(grace.as_millis() as u64)
            .arg(ALIVE_FOR.as_millis() as u64);
        for (who, count) in counts {
            call.arg(who.to_string()).arg(*count);
        }
        let reply = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(write(reply))
    }

    async fn forget_instance(&self, instance: &str, grace: Duration) -> StoreResult<PresenceWrite> {
        let mut call = self.invocation(&self.forget);
        call.arg(instance).arg(grace.as_millis() as u64);
        let reply = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(write(reply))
    }

    async fn sweep(&self, grace: Duration) -> StoreResult<PresenceSweep> {
        let mut call = self.invocation(&self.sweep);
        call.arg(grace.as_millis() as u64)
            .arg((ALIVE_FOR - KEEP_ALIVE_EVERY).as_millis() as u64)
            .arg(DUE_PER_SWEEP);
        let (raw, stores, drivers): (Vec<RawChange>, u64, u64) =
            call.invoke_async(&mut self.conn.clone()).await?;
        Ok(PresenceSweep {
            changes: changes(raw),
            online_stores: stores,
            online_drivers: drivers,
        })
    }

    async fn lookup(&self, ids: &[PresenceId]) -> StoreResult<Vec<PresenceState>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for who in ids {
            pipe.cmd("HMGET")
                .arg(format!("{}id:{who}", self.base))
                .arg("online")
                .arg("since");
        }
        let rows: Vec<(Option<String>, Option<u64>)> =
            pipe.query_async(&mut self.conn.clone()).await?;
        Ok(rows
            .into_iter()
            .map(|(online, since)| PresenceState {
                online: online.as_deref() == Some("1"),
                since: since.unwrap_or(0),
            })
            .collect())
    }
}
