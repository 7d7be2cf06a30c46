//! The event stream on Redis: one consumer group shared by every node, plus
//! per-order sequencing so that an order's events are emitted in stream
//! order whichever nodes read them (docs/design.md, "Ordering").
//!
//! Sequencing: the read script takes new entries with XREADGROUP and, in the
//! same atomic step, appends each entry's id to its order's queue
//! (`{prefix}seq:{order_id}`, tagged into the stream's slot on a cluster).
//! Reads are atomic and in id order, so every queue is in stream order. An
//! entry is emitted only when it is at the head of its queue; emitting pops
//! it and wakes the node holding the next one through a pub/sub notice on
//! `{prefix}seq`.
//!
//! On a Redis Cluster `{prefix}events`, `{prefix}events:dead` and
//! `{prefix}outcomes` keep their contract names and so lie in three slots:
//! nothing atomic spans two of them. Writing to the dead letters and
//! acknowledging are two steps there (dead letter first), as are an
//! outcome and its acknowledgement everywhere; a node that stops between
//! the two leaves the entry pending, another node claims it and does both
//! again, which gives at most a second dead letter with the same `id`
//! (an outcome is written once whatever happens: its mark, in the outcomes'
//! slot, is set with NX in the same script).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use redis::{
    AsyncCommands, Script, Value,
    streams::{
        StreamClaimReply, StreamInfoGroupsReply, StreamPendingCountReply, StreamPendingReply,
        StreamRangeReply, StreamReadReply,
    },
};
use socketioxide_redis::drivers::Driver;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::PubSubDriver;
use super::keys::KeySpace;
use super::link::Link;
use super::values::{bulk_bytes, bulk_string, parse_entries, stream_entry};
use crate::engine::{StoreError, StoreResult};
use crate::events::DecodeReason;
use crate::metrics::{self, StoreOp};
use crate::tasks::{Tasks, names};
use crate::{
    engine::traits::{
        Claimed, DeadLetter, EventStream, KeyedAppend, OfferState, StreamEntry, StreamStats,
    },
    events::{now_ms, sequence_key},
    outcome::Outcome,
};

/// Dead letters and outcomes are the relay's own streams: capped, roughly.
const DEAD_LETTERS_MAXLEN: usize = 10_000;
const OUTCOMES_MAXLEN: usize = 100_000;
/// How long an offer's marks outlive it: far longer than any timer plus
/// the time to claim a stopped node's entries.
const OFFER_MARK_TTL_MS: u64 = 24 * 3600 * 1000;

/// Writes an offer's outcome once: KEYS the outcomes stream and the offer's
/// "decided" mark; ARGV the mark's TTL, the stream's MAXLEN, then fields.
const OUTCOME_SCRIPT: &str = r"
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
return 1
";
/// A sequencing queue outlives any sane wait for its head.
const QUEUE_TTL_MS: u64 = 24 * 3600 * 1000;
/// Longest XREAD BLOCK; the loop re-checks shutdown in between.
const BLOCK: Duration = Duration::from_secs(2);
/// Without a notice, an order's waiter re-checks its queue this often.
const TURN_POLL: Duration = Duration::from_millis(200);
/// After this long at the back of a queue, check the head is still alive.
const STALE_HEAD_CHECK: Duration = Duration::from_secs(1);

/// XREADGROUP of new entries and their registration in the order queues,
/// as one atomic step. KEYS: the stream, the dead letters. ARGV: group,
/// consumer, count, queue prefix, queue TTL, size limit, dead letters'
/// MAXLEN. Without KEYS[2] (a cluster, where the dead letters lie in
/// another slot) an entry beyond the limit is neither dead-lettered nor
/// acked here but only reported: the node moves it. Returns {entries, last id read (else the stream's last), ids that
/// went to the head of an empty queue, entries refused as too large}.
///
/// An entry beyond the size limit (its field names and values together) is
/// copied to the dead letters as it is and acked right here: the read
/// script never returns it, so it is never decoded, emitted or recorded.
/// (It still reaches an idle node once, whole, in the reply of the
/// `XREAD BLOCK` that only wakes the consumer: Redis has no way to wait
/// for an entry without sending it. Measured in docs/reliability.md.) Each refused one comes back as {id, type (when at most 64
/// bytes), size} for the node's metrics and log.
///
/// Only `data` that is UTF-8 text is looked into for its order: the node
/// dead-letters the rest undecoded, and takes no order from it either.
const READ_SCRIPT: &str = r"
local function is_utf8(s)
  local i, n = 1, #s
  while true do
    i = string.find(s, '[\128-\255]', i)
    if not i then return true end
    local c = string.byte(s, i)
    local len, lo, hi = 0, 128, 191
    if c >= 194 and c <= 223 then len = 1
    elseif c >= 224 and c <= 239 then
      len = 2
      if c == 224 then lo = 160 elseif c == 237 then hi = 159 end
    elseif c >= 240 and c <= 244 then
      len = 3
      if c == 240 then lo = 144 elseif c == 244 then hi = 143 end
    else return false end
    if i + len > n then return false end
    for k = 1, len do
      local b = string.byte(s, i + k)
      if k == 1 then
        if b < lo or b > hi then return false end
      elseif b < 128 or b > 191 then return false end
    end
    i = i + len + 1
  end
end
local res = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
local limit = tonumber(ARGV[6])
local entries, first, refused = {}, {}, {}
local last = nil
if res then
  for _, e in ipairs(res[1][2]) do
    last = e[1]
    local f = e[2] or {}
    local size, kind, data = 0, nil, nil
    for i = 1, #f, 2 do
      size = size + #f[i] + #f[i + 1]
      if f[i] == 'type' then kind = f[i + 1] elseif f[i] == 'data' then data = f[i + 1] end
    end
    if size > limit and not KEYS[2] then
      refused[#refused + 1] = {e[1], '', size}
    elseif size > limit then
      local letter = {'id', e[1]}
      if kind then letter[#letter + 1] = 'type'; letter[#letter + 1] = kind end
      if data then letter[#letter + 1] = 'data'; letter[#letter + 1] = data end
      letter[#letter + 1] = 'reason'
      letter[#letter + 1] = 'too_large: ' .. size .. ' bytes, limit ' .. limit
      letter[#letter + 1] = 'node'
      letter[#letter + 1] = ARGV[2]
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', unpack(letter))
      redis.call('XACK', KEYS[1], ARGV[1], e[1])
      local label = ''
      if kind and #kind <= 64 then label = kind end
      refused[#refused + 1] = {e[1], label, size}
    else
      entries[#entries + 1] = e
      if data and is_utf8(data) then
        local ok, obj = pcall(cjson.decode, data)
        if ok and type(obj) == 'table' and type(obj['order_id']) == 'string' and obj['order_id'] ~= '' then
          local q = ARGV[4] .. obj['order_id']
          if redis.call('RPUSH', q, e[1]) == 1 then table.insert(first, e[1]) end
          redis.call('PEXPIRE', q, ARGV[5])
        end
      end
    end
  end
end
if not last then
  last = '0-0'
  local tail = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if tail[1] then last = tail[1][1] end
end
return {entries, last, first, refused}
";

/// 1: the entry is at the head of its queue; 2: not queued (already
/// emitted once, or never registered); 0: earlier entries first.
const TURN_SCRIPT: &str = r"
local head = redis.call('LINDEX', KEYS[1], 0)
if not head then return {2, ''} end
if head == ARGV[1] then return {1, head} end
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return {2, head} end
return {0, head}
";

/// Removes the entry from its queue; returns how many wait behind it (the
/// node then tells them, through the pub/sub driver: a PUBLISH in a script
/// would not reach a sharded subscriber on a cluster).
const ADVANCE_SCRIPT: &str = r"
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then
  redis.call('LPOP', KEYS[1])
else
  redis.call('LREM', KEYS[1], 1, ARGV[1])
end
return redis.call('LLEN', KEYS[1])
";

/// Resets the idle time of entries this consumer still owns (never takes
/// one another consumer has claimed meanwhile). ARGV[3] is the idle time
/// to set: 0 keeps them, a large value hands them back.
const TOUCH_SCRIPT: &str = r"
local n = 0
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    n = n + 1
  end
end
return n
";

pub struct RedisStream {
    conn: Link,
    driver: PubSubDriver,
    blocking: Link,
    keys: Keys,
    node: String,
    claim_idle: Duration,
    max_deliveries: u32,
    max_event_bytes: usize,
    /// Last stream id seen by an empty read: XREAD BLOCK waits for newer ones.
    last_seen: Mutex<String>,
    waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    read: Script,
    turn: Script,
    advance: Script,
    touch: Script,
    outcome: Script,
}

struct Keys {
    /// `RELAY_KEY_PREFIX`: idempotency records tag themselves with the stream.
    prefix: String,
    /// Offer marks: beside the outcomes, whose script sets them.
    offers_prefix: String,
    stream: String,
    group: String,
    dead: String,
    outcomes: String,
    seq_prefix: String,
    seq_channel: String,
}

pub struct StreamSettings<'a> {
    pub prefix: &'a str,
    pub node: &'a str,
    pub claim_idle: Duration,
    pub max_deliveries: u32,
    /// Entries beyond this size go to the dead letters undecoded (`too_large`).
    pub max_event_bytes: usize,
}

impl RedisStream {
    pub fn new(
        conn: Link,
        blocking: Link,
        driver: PubSubDriver,
        settings: StreamSettings<'_>,
        tasks: &Tasks,
        stop: CancellationToken,
    ) -> Self {
        let space = KeySpace::new(settings.prefix, conn.is_cluster());
        let keys = Keys {
            prefix: space.prefix().to_owned(),
            stream: space.key("events"),
            group: space.key("relay"),
            dead: space.key("events:dead"),
            outcomes: space.key("outcomes"),
            offers_prefix: format!("{}offer:", space.beside("outcomes")),
            seq_prefix: format!("{}seq:", space.beside("events")),
            seq_channel: space.key("seq"),
        };
        let waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>> = Arc::default();
        let notices = forward_notices(driver.clone(), keys.seq_channel.clone(), waiters.clone());
        // Not restarted: waiters registered with it would miss notices.
        tasks.spawn(names::SEQUENCING_NOTICES, async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = notices => {}
            }
        });
        Self {
            conn,
            driver,
            blocking,
            keys,
            node: settings.node.to_owned(),
            claim_idle: settings.claim_idle,
            max_deliveries: settings.max_deliveries,
            max_event_bytes: settings.max_event_bytes,
            last_seen: Mutex::new("0-0".to_owned()),
            waiters,
            read: Script::new(READ_SCRIPT),
            turn: Script::new(TURN_SCRIPT),
            advance: Script::new(ADVANCE_SCRIPT),
            touch: Script::new(TOUCH_SCRIPT),
            outcome: Script::new(OUTCOME_SCRIPT),
        }
    }

    fn conn(&self) -> Link {
        self.conn.clone()
    }

    /// `{prefix}offer:{decided|offered}:{event_id}:{target}` (tagged into
    /// the outcomes' slot on a cluster).
    fn offer_key(&self, mark: &str, event_id: &str, target: &str) -> String {
        format!("{}{mark}:{event_id}:{target}", self.keys.offers_prefix)
    }

    async fn read_once(&self, count: usize) -> StoreResult<Vec<StreamEntry>> {
        let mut invocation = self.read.key(&self.keys.stream);
        if !self.conn.is_cluster() {
            invocation.key(&self.keys.dead);
        }
        let reply: Value = invocation
            .arg(&self.keys.group)
            .arg(&self.node)
            .arg(count.max(1))
            .arg(&self.keys.seq_prefix)
            .arg(QUEUE_TTL_MS)
            .arg(self.max_event_bytes)
            .arg(DEAD_LETTERS_MAXLEN)
            .invoke_async(&mut self.conn())
            .await?;
        let Value::Array(mut parts) = reply else {
            return Ok(Vec::new());
        };
        let mut to_move = Vec::new();
        if let Some(Value::Array(refused)) = parts.pop() {
            for refused in refused {
                let Value::Array(mut fields) = refused else {
                    continue;
                };
                let size = match fields.pop() {
                    Some(Value::Int(size)) => size,
                    _ => 0,
                };
                let kind = fields.pop().and_then(bulk_bytes);
                let id = fields.pop().and_then(bulk_string).unwrap_or_default();
                if self.conn.is_cluster() {
                    to_move.push((id, size));
                    continue;
                }
                tracing::warn!(
                    id,
                    size,
                    limit = self.max_event_bytes,
                    "entry beyond RELAY_MAX_EVENT_BYTES: dead-lettered undecoded"
                );
                metrics::stream_dead_lettered(
                    metrics::entry_type(kind.as_deref()),
                    DecodeReason::TooLarge,
                );
            }
        }
        let first: HashSet<String> = match parts.pop() {
            Some(Value::Array(ids)) => ids.into_iter().filter_map(bulk_string).collect(),
            _ => HashSet::new(),
        };
        let last = parts.pop().and_then(bulk_string);
        let mut entries = parts.pop().map(parse_entries).unwrap_or_default();
        for entry in &mut entries {
            entry.first_in_order = first.contains(&entry.id);
        }
        // Waiting for new entries starts after the last one seen: the newest
        // entry just read (dead-lettered ones too), or the tail of the stream.
        if let Some(last) = last {
            *self.last_seen.lock().unwrap_or_else(|e| e.into_inner()) = last;
        }
        for (id, size) in to_move {
            self.dead_letter_too_large(&id, size).await?;
        }
        Ok(entries)
    }

    /// On a cluster the read script only reports an entry beyond the size
    /// limit; it stays pending (so a node that stops here leaves it to be
    /// claimed, and the consumer's own size check dead-letters it then).
    async fn dead_letter_too_large(&self, id: &str, size: i64) -> StoreResult<()> {
        let range: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.keys.stream)
            .arg(id)
            .arg(id)
            .query_async(&mut self.conn())
            .await?;
        let Some(entry) = range.ids.into_iter().next().map(stream_entry) else {
            // Trimmed meanwhile: nothing left to copy.
            return self.ack(id).await;
        };
        let kind = entry.kind.as_deref().filter(|k| k.len() <= 64);
        tracing::warn!(
            id,
            size,
            limit = self.max_event_bytes,
            "entry beyond RELAY_MAX_EVENT_BYTES: dead-lettered undecoded"
        );
        metrics::stream_dead_lettered(metrics::entry_type(kind), DecodeReason::TooLarge);
        let reason = format!("too_large: {size} bytes, limit {}", self.max_event_bytes);
        self.dead_letter(&entry, &reason).await
    }

    async fn touch(&self, ids: &[String], idle_ms: u64) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut invocation = self.touch.key(&self.keys.stream);
        invocation
            .arg(&self.keys.group)
            .arg(&self.node)
            .arg(idle_ms);
        for id in ids {
            invocation.arg(id);
        }
        let _: i64 = invocation.invoke_async(&mut self.conn()).await?;
        Ok(())
    }

    /// A head whose entry is no longer pending (acked by a path that did not
    /// advance, or trimmed from the stream) would block its order forever.
    async fn drop_dead_head(&self, order: &str, head: &str) -> StoreResult<()> {
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.keys.stream)
            .arg(&self.keys.group)
            .arg(head)
            .arg(head)
            .arg(1)
            .query_async(&mut self.conn())
            .await?;
        if pending.ids.is_empty() {
            tracing::warn!(order, head, "sequencing queue head is not pending: dropped");
            self.advance(order, head).await?;
        }
        Ok(())
    }

    fn waiter(&self, order: &str) -> Arc<Notify> {
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(order.to_owned())
            .or_default()
            .clone()
    }

    /// Drops the order's notifier once its last local waiter is done.
    fn forget_waiter(&self, order: &str, waiter: Arc<Notify>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and ours: nobody else waits on this order here.
        if Arc::strong_count(&waiter) <= 2 {
            waiters.remove(order);
        }
    }

    fn wake(&self, order: &str) {
        wake(&self.waiters, order);
    }
}

fn wake(waiters: &Mutex<HashMap<String, Arc<Notify>>>, order: &str) {
    let waiter = waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(order)
        .cloned();
    if let Some(waiter) = waiter {
        waiter.notify_waiters();
    }
}

/// Wakes the local waiters of an order when another node emits one of its entries.
async fn forward_notices(
    driver: PubSubDriver,
    channel: String,
    waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
) {
    loop {
        match driver.subscribe(channel.clone(), 1024).await {
            Ok(mut notices) => {
                while let Some((_, order)) = notices.next().await {
                    wake(&waiters, &String::from_utf8_lossy(&order));
                }
                return;
            }
            // Redis not there yet: waiters fall back to polling meanwhile.
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

impl EventStream for RedisStream {
    async fn prepare(&self) -> StoreResult<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.keys.stream)
            .arg(&self.keys.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match created {
            Ok(()) => {
                tracing::info!(stream = %self.keys.stream, group = %self.keys.group, "consumer group created");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn own_pending(&self, count: usize) -> StoreResult<Vec<StreamEntry>> {
        let reply: StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.keys.group)
            .arg(&self.node)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&self.keys.stream)
            .arg("0")
            .query_async(&mut self.conn())
            .await?;
        Ok(reply
            .keys
            .into_iter()
            .flat_map(|key| key.ids)
            .map(stream_entry)
            .collect())
    }

    async fn read_new(&self, count: usize) -> StoreResult<Vec<StreamEntry>> {
        match self.read_once(count).await {
            Ok(entries) => Ok(entries),
            Err(e) if e.redis().is_some_and(is_nogroup) => {
                tracing::warn!("consumer group missing (stream deleted?): re-creating it");
                self.prepare().await?;
                self.read_once(count).await
            }
            Err(e) => Err(e),
        }
    }

    async fn wait_new(&self, timeout: Duration) -> StoreResult<()> {
        let after = self
            .last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let block = timeout.min(BLOCK);
        let _: Value = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&self.keys.stream)
            .arg(after)
            .query_async(&mut self.blocking.clone())
            .await?;
        Ok(())
    }

    async fn claim_stale(&self, in_flight: &[String]) -> StoreResult<Claimed> {
        let idle_ms = self.claim_idle.as_millis() as u64;
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.keys.stream)
            .arg(&self.keys.group)
            .arg("IDLE")
            .arg(idle_ms)
            .arg("-")
            .arg("+")
            .arg(100)
            .query_async(&mut self.conn())
            .await?;
        let mut claim = Vec::new();
        let mut claimed = Claimed::default();
        for row in pending.ids {
            let (id, deliveries) = (row.id, row.times_delivered);
            if in_flight.contains(&id) {
                continue;
            }
            if deliveries >= self.max_deliveries as usize {
                let range: StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&self.keys.stream)
                    .arg(&id)
                    .arg(&id)
                    .query_async(&mut self.conn())
                    .await?;
                let entry = range
                    .ids
                    .into_iter()
                    .next()
                    .map(stream_entry)
                    .unwrap_or(StreamEntry {
                        id: id.clone(),
                        kind: None,
                        data: None,
                        first_in_order: false,
                    });
                // One entry that cannot be dead-lettered must not keep the
                // others from being claimed: it is tried again next round.
                let reason = format!("max_deliveries: delivered {deliveries} times");
                match self.dead_letter(&entry, &reason).await {
                    Ok(()) => claimed.dead_lettered += 1,
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => {
                        metrics::store_error(StoreOp::DeadLetter);
                        tracing::error!(id, error = %e, "entry not dead-lettered");
                    }
                }
            } else {
                claim.push(id);
            }
        }
        if !claim.is_empty() {
            let mut cmd = redis::cmd("XCLAIM");
            cmd.arg(&self.keys.stream)
                .arg(&self.keys.group)
                .arg(&self.node)
                .arg(idle_ms)
                .arg(&claim);
            let reply: StreamClaimReply = cmd.query_async(&mut self.conn()).await?;
            claimed.entries = reply.ids.into_iter().map(stream_entry).collect();
        }
        Ok(claimed)
    }

    async fn keep_alive(&self, ids: &[String]) -> StoreResult<()> {
        self.touch(ids, 0).await
    }

    async fn hand_back(&self, ids: &[String]) -> StoreResult<()> {
        // Idle "for a day": the next claim round of any node takes them.
        self.touch(ids, 86_400_000).await
    }

    async fn wait_turn(
        &self,
        order: &str,
        id: &str,
        cancel: &CancellationToken,
    ) -> StoreResult<()> {
        let queue = format!("{}{order}", self.keys.seq_prefix);
        let waiter = self.waiter(order);
        let started = tokio::time::Instant::now();
        let mut next_stale_check = started + STALE_HEAD_CHECK;
        let result = loop {
            let notified = waiter.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (state, head): (i64, String) = match self
                .turn
                .key(&queue)
                .arg(id)
                .invoke_async(&mut self.conn())
                .await
            {
                Ok(reply) => reply,
                Err(e) => break Err(e.into()),
            };
            if state != 0 {
                break Ok(());
            }
            if tokio::time::Instant::now() >= next_stale_check {
                if let Err(e) = self.drop_dead_head(order, &head).await {
                    break Err(e);
                }
                next_stale_check = tokio::time::Instant::now() + STALE_HEAD_CHECK;
            }
            tokio::select! {
                () = cancel.cancelled() => break Err(StoreError::Cancelled),
                () = notified => {}
                () = tokio::time::sleep(TURN_POLL) => {}
            }
        };
        self.forget_waiter(order, waiter);
        let waited = started.elapsed();
        if waited > Duration::from_millis(100) {
            tracing::debug!(order, id, ?waited, "waited for earlier events of the order");
        }
        result
    }

    async fn advance(&self, order: &str, id: &str) -> StoreResult<()> {
        let waiting: i64 = self
            .advance
            .key(format!("{}{order}", self.keys.seq_prefix))
            .arg(id)
            .invoke_async(&mut self.conn())
            .await?;
        // Local waiters need not wait for the notice's round trip.
        self.wake(order);
        if waiting > 0 {
            // A lost notice costs a waiter one poll interval, not its turn.
            if let Err(e) = self
                .driver
                .publish(self.keys.seq_channel.clone(), order.as_bytes().to_vec())
                .await
            {
                tracing::debug!(error = %e, "sequencing notice not published");
            }
        }
        Ok(())
    }

    async fn ack(&self, id: &str) -> StoreResult<()> {
        let _: i64 = redis::cmd("XACK")
            .arg(&self.keys.stream)
            .arg(&self.keys.group)
            .arg(id)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn dead_letter(&self, entry: &StreamEntry, reason: &str) -> StoreResult<()> {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.keys.dead)
            .arg("MAXLEN")
            .arg("~")
            .arg(DEAD_LETTERS_MAXLEN)
            .arg("*")
            .arg("id")
            .arg(&entry.id);
        if let Some(kind) = &entry.kind {
            xadd.arg("type").arg(kind);
        }
        if let Some(data) = &entry.data {
            xadd.arg("data").arg(data);
        }
        xadd.arg("reason").arg(reason).arg("node").arg(&self.node);
        let mut xack = redis::cmd("XACK");
        xack.arg(&self.keys.stream)
            .arg(&self.keys.group)
            .arg(&entry.id);
        if self.conn.is_cluster() {
            // Two slots: the dead letter first, so that a stop in between
            // leaves the entry pending (claimed and dead-lettered again,
            // the same `id` twice at worst), never acked and lost.
            let _: Value = xadd.query_async(&mut self.conn()).await?;
            let _: Value = xack.query_async(&mut self.conn()).await?;
        } else {
            let _: Value = redis::pipe()
                .atomic()
                .add_command(xadd)
                .add_command(xack)
                .query_async(&mut self.conn())
                .await?;
        }
        if let Some(order) = sequence_key(entry.data.as_deref()) {
            self.advance(&order, &entry.id).await?;
        }
        Ok(())
    }

    async fn append(&self, kind: &str, data: &str) -> StoreResult<String> {
        let id: String = redis::cmd("XADD")
            .arg(&self.keys.stream)
            .arg("*")
            .arg("type")
            .arg(kind)
            .arg("data")
            .arg(data)
            .query_async(&mut self.conn())
            .await?;
        Ok(id)
    }

    async fn append_keyed(&self, key: &str, kind: &str, data: &str) -> StoreResult<KeyedAppend> {
        super::idempotency::append_keyed(
            self.conn(),
            &self.keys.prefix,
            &self.keys.stream,
            key,
            kind,
            data,
        )
        .await
    }

    async fn append_outcome(&self, outcome: &Outcome) -> StoreResult<bool> {
        let mut invocation = self.outcome.key(&self.keys.outcomes);
        invocation
            .key(self.offer_key("decided", &outcome.event_id, &outcome.target))
            .arg(OFFER_MARK_TTL_MS)
            .arg(OUTCOMES_MAXLEN);
        for (field, value) in outcome.fields() {
            invocation.arg(field).arg(value);
        }
        let written: i64 = invocation.invoke_async(&mut self.conn()).await?;
        Ok(written == 1)
    }

    async fn offer_targets(&self, event_id: &str, found: &[String]) -> StoreResult<Vec<String>> {
        let key = self.offer_key("targets", event_id, "geo");
        let encoded = serde_json::to_string(found)
            .map_err(|e| StoreError::BadData(format!("offer targets: {e}")))?;
        // SET NX GET (Redis 7): records the first list, answers an earlier one.
        let first: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&encoded)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(OFFER_MARK_TTL_MS)
            .query_async(&mut self.conn())
            .await?;
        match first {
            None => Ok(found.to_vec()),
            Some(first) => serde_json::from_str(&first)
                .map_err(|e| StoreError::BadData(format!("offer targets of {event_id}: {e}"))),
        }
    }

    async fn offer_state(&self, event_id: &str, target: &str) -> StoreResult<OfferState> {
        let (decided, offered): (Option<String>, Option<String>) = redis::cmd("MGET")
            .arg(self.offer_key("decided", event_id, target))
            .arg(self.offer_key("offered", event_id, target))
            .query_async(&mut self.conn())
            .await?;
        Ok(match (decided, offered) {
            (Some(_), _) => OfferState::Decided,
            (None, Some(_)) => OfferState::Offered,
            (None, None) => OfferState::Fresh,
        })
    }

    async fn mark_offered(&self, event_id: &str, target: &str) -> StoreResult<()> {
        let () = redis::cmd("SET")
            .arg(self.offer_key("offered", event_id, target))
            .arg(1)
            .arg("PX")
            .arg(OFFER_MARK_TTL_MS)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn stats(&self) -> StoreResult<StreamStats> {
        let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.keys.stream)
            .query_async(&mut self.conn())
            .await?;
        let mut stats = StreamStats::default();
        if let Some(group) = groups.groups.iter().find(|g| g.name == self.keys.group) {
            // `lag` is nil after deletions or when the group is behind the first entry.
            stats.lag = group.lag.map(|lag| lag as u64);
            stats.pending = group.pending as u64;
        }
        let summary: StreamPendingReply = redis::cmd("XPENDING")
            .arg(&self.keys.stream)
            .arg(&self.keys.group)
            .query_async(&mut self.conn())
            .await?;
        if let StreamPendingReply::Data(summary) = summary
            && let Some(ms) = summary
                .start_id
                .split('-')
                .next()
                .and_then(|ms| ms.parse::<u64>().ok())
        {
            stats.oldest_pending = Some(Duration::from_millis(now_ms().saturating_sub(ms)));
        }
        Ok(stats)
    }

    async fn recent_outcomes(
        &self,
        limit: usize,
    ) -> StoreResult<Vec<serde_json::Map<String, serde_json::Value>>> {
        let reply: StreamRangeReply = self
            .conn()
            .xrevrange_count(&self.keys.outcomes, "+", "-", limit)
            .await?;
        let mut outcomes: Vec<_> = reply
            .ids
            .into_iter()
            .map(|row| {
                let mut out = serde_json::Map::new();
                for (k, v) in row.map {
                    let v = bulk_string(v).unwrap_or_default();
                    let v = match k.as_str() {
                        "response" => {
                            serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v))
                        }
                        "latency_ms" => v
                            .parse::<u64>()
                            .map(Into::into)
                            .unwrap_or(serde_json::Value::String(v)),
                        _ => serde_json::Value::String(v),
                    };
                    out.insert(k, v);
                }
                out
            })
            .collect();
        outcomes.reverse();
        Ok(outcomes)
    }

    async fn recent_dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        let reply: StreamRangeReply = self
            .conn()
            .xrevrange_count(&self.keys.dead, "+", "-", limit)
            .await?;
        let mut dead: Vec<_> = reply
            .ids
            .into_iter()
            .map(|mut row| {
                let mut take = |k: &str| row.map.remove(k).and_then(bulk_bytes);
                let (id, kind, data) = (take("id"), take("type"), take("data"));
                let (reason, node) = (take("reason"), take("node"));
                let text = |v: Option<Vec<u8>>| {
                    v.map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_default()
                };
                DeadLetter {
                    id: text(id),
                    kind,
                    data,
                    reason: text(reason),
                    node: text(node),
                }
            })
            .collect();
        dead.reverse();
        Ok(dead)
    }

    async fn recent_events(&self, limit: usize) -> StoreResult<Vec<StreamEntry>> {
        let reply: StreamRangeReply = self
            .conn()
            .xrevrange_count(&self.keys.stream, "+", "-", limit)
            .await?;
        let mut entries: Vec<_> = reply.ids.into_iter().map(stream_entry).collect();
        entries.reverse();
        Ok(entries)
    }
}
