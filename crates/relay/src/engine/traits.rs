//! What an engine stores and streams, independent of where.

use std::{future::Future, time::Duration};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::StoreResult;
use crate::{
    active_order::ActiveOrder,
    auth::{Principal, Role},
    events::{PresenceChange, PresenceId, PresenceState, Timestamp},
    outcome::Outcome,
};

/// One entry of the event stream, as read. `type` and `data` are the bytes
/// of the entry: a dead letter copies them as they were, text or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub kind: Option<Vec<u8>>,
    pub data: Option<Vec<u8>>,
    /// Registered at the head of its order's queue when read: nothing of
    /// that order is before it, so it need not wait for its turn.
    pub first_in_order: bool,
}

impl StreamEntry {
    /// The size `RELAY_MAX_EVENT_BYTES` limits: the bytes of the entry's
    /// field names and values (the Redis read script counts the same).
    pub fn size(&self) -> usize {
        let field = |name: &str, value: &Option<Vec<u8>>| {
            value.as_ref().map_or(0, |v| name.len() + v.len())
        };
        field("type", &self.kind) + field("data", &self.data)
    }

    /// `type` as text; None when absent or not UTF-8.
    pub fn kind_str(&self) -> Option<&str> {
        self.kind
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// `data` as text; None when absent or not UTF-8.
    pub fn data_str(&self) -> Option<&str> {
        self.data
            .as_deref()
            .and_then(|d| std::str::from_utf8(d).ok())
    }
}

/// The size of an entry of these fields, as [`StreamEntry::size`] counts it.
pub fn entry_size(kind: &str, data: &str) -> usize {
    "type".len() + kind.len() + "data".len() + data.len()
}

/// How long `POST /api/events` remembers an `Idempotency-Key`.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// What an append under an idempotency key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyedAppend {
    /// The key was new: the event was appended as this id.
    Appended(String),
    /// The key was used for the same event: nothing appended; the first
    /// append's id.
    Replayed(String),
    /// The key was used for another event: nothing appended; the first
    /// append's id.
    Conflict(String),
}

/// How far an offer of one event to one room got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferState {
    /// Never sent to a socket.
    Fresh,
    /// Sent to at least one socket; no outcome yet.
    Offered,
    /// Its outcome is written.
    Decided,
}

/// A dead-lettered entry, as stored: `type` and `data` byte for byte. As
/// JSON (the operations API) they are text, bytes that are not UTF-8
/// replaced by U+FFFD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub id: String,
    #[serde(rename = "type", serialize_with = "lossy_text")]
    pub kind: Option<Vec<u8>>,
    #[serde(serialize_with = "lossy_text")]
    pub data: Option<Vec<u8>>,
    pub reason: String,
    pub node: String,
}

fn lossy_text<S: serde::Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(bytes) => s.serialize_str(&String::from_utf8_lossy(bytes)),
        None => s.serialize_none(),
    }
}

/// Entries of stopped consumers, taken over by this one.
#[derive(Debug, Default)]
pub struct Claimed {
    pub entries: Vec<StreamEntry>,
    /// Entries that were delivered too often and went to the dead letters.
    pub dead_lettered: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamStats {
    /// Entries not yet delivered to any consumer (None when Redis cannot tell).
    pub lag: Option<u64>,
    /// Entries delivered but not yet acknowledged.
    pub pending: u64,
    /// Age of the oldest pending entry, from its id's timestamp.
    pub oldest_pending: Option<Duration>,
}

/// The backend's event stream and one consumer's view of the group.
pub trait EventStream: Send + Sync + 'static {
    /// Creates the consumer group from id 0 (and the stream) if needed.
    fn prepare(&self) -> impl Future<Output = StoreResult<()>> + Send;

    /// This consumer's own pending entries, oldest first (after a restart).
    fn own_pending(
        &self,
        count: usize,
    ) -> impl Future<Output = StoreResult<Vec<StreamEntry>>> + Send;

    /// Undelivered entries, without blocking; each is registered for
    /// per-order sequencing in the same step.
    fn read_new(&self, count: usize) -> impl Future<Output = StoreResult<Vec<StreamEntry>>> + Send;

    /// Returns when new entries may be there, or after `timeout`.
    fn wait_new(&self, timeout: Duration) -> impl Future<Output = StoreResult<()>> + Send;

    /// Takes over entries idle longer than the claim time; entries delivered
    /// `max_deliveries` times go to the dead letters instead.
    fn claim_stale(
        &self,
        in_flight: &[String],
    ) -> impl Future<Output = StoreResult<Claimed>> + Send;

    /// Keeps entries this consumer is working on from being claimed.
    fn keep_alive(&self, ids: &[String]) -> impl Future<Output = StoreResult<()>> + Send;

    /// Makes entries claimable by other consumers at once (shutdown).
    fn hand_back(&self, ids: &[String]) -> impl Future<Output = StoreResult<()>> + Send;

    /// Waits until every earlier entry of `order` has been emitted.
    fn wait_turn(
        &self,
        order: &str,
        id: &str,
        cancel: &CancellationToken,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Marks `id` emitted: the next entry of `order` may go.
    fn advance(&self, order: &str, id: &str) -> impl Future<Output = StoreResult<()>> + Send;

    fn ack(&self, id: &str) -> impl Future<Output = StoreResult<()>> + Send;

    /// Copies the entry to the dead letters, releases its order and acks it.
    fn dead_letter(
        &self,
        entry: &StreamEntry,
        reason: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Appends an event, as the backend's XADD does; returns its id.
    fn append(&self, kind: &str, data: &str) -> impl Future<Output = StoreResult<String>> + Send;

    /// Appends an event unless `key` was used within [`IDEMPOTENCY_TTL`],
    /// as one atomic step on every node together (a backend's retry, or two
    /// copies of one request racing, append once).
    fn append_keyed(
        &self,
        key: &str,
        kind: &str,
        data: &str,
    ) -> impl Future<Output = StoreResult<KeyedAppend>> + Send;

    /// Appends the outcome of one offer (`event_id` to `target`), unless one
    /// was written already: returns whether this call wrote it.
    fn append_outcome(&self, outcome: &Outcome) -> impl Future<Output = StoreResult<bool>> + Send;

    /// How far an offer got, whichever node made it.
    fn offer_state(
        &self,
        event_id: &str,
        target: &str,
    ) -> impl Future<Output = StoreResult<OfferState>> + Send;

    /// Notes that an offer reached at least one socket (so that a node taking
    /// it over ends it as `timeout`, not `no_recipient`).
    fn mark_offered(
        &self,
        event_id: &str,
        target: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// The drivers a geo-fenced request of `event_id` goes to: `found` the
    /// first time, whatever was found the first time ever after (a node
    /// that takes the entry over offers it to the same drivers).
    fn offer_targets(
        &self,
        event_id: &str,
        found: &[String],
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;

    fn stats(&self) -> impl Future<Output = StoreResult<StreamStats>> + Send;

    /// The most recent outcomes and dead letters, newest last (operations API).
    fn recent_outcomes(
        &self,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Vec<serde_json::Map<String, serde_json::Value>>>> + Send;
    fn recent_dead_letters(
        &self,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Vec<DeadLetter>>> + Send;

    /// The most recent entries of the event stream as appended, newest
    /// last, whether handled yet or not (read-only; the demo page's history).
    fn recent_events(
        &self,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Vec<StreamEntry>>> + Send;
}

/// What `order.created` found when it went to record its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Recorded now.
    New,
    /// An order of that id is active: left exactly as it is (a redelivered
    /// `order.created` must not put back a status that later events moved
    /// on from) and returned for the dispatcher to judge.
    Active(ActiveOrder),
    /// The order ended after this entry (a redelivery of an order that is
    /// over): nothing recorded.
    Ended,
}

/// What an entry's write did to its order. Every write names the stream
/// entry it comes from, and the order remembers the last one applied, so a
/// handler that runs twice (a node died after the write, before its XACK)
/// changes nothing the second time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderWrite<T = ActiveOrder> {
    /// The order as this entry left it: written now, or written before with
    /// nothing of the order after it (then nothing was written again).
    Current(T),
    /// A later entry of the order was applied already, or the order ended
    /// after this entry: a late repeat, nothing written.
    Superseded,
    /// No such active order (never created, ended before this entry, or
    /// expired): nothing written.
    NotActive,
}

impl<T> OrderWrite<T> {
    pub fn current(self) -> Option<T> {
        match self {
            Self::Current(t) => Some(t),
            Self::Superseded | Self::NotActive => None,
        }
    }
}

/// An assignment as written: the order and the driver it had before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub order: ActiveOrder,
    /// The driver the order had before this entry (also when the entry is
    /// a repeat: the one it replaced the first time).
    pub previous: Option<String>,
}

/// Active orders, indexed by customer, store and driver.
///
/// `event_id` is the stream entry a write comes from. Entries of an order
/// reach the store in stream order (the consumer's sequencing), except a
/// repeat: an entry written once and handled again. An entry at or before
/// the last one applied to the order, or before the entry that ended it
/// (remembered for as long as an unended order is kept), is such a repeat.
pub trait OrderStore: Send + Sync + 'static {
    /// Records the order unless an order of that id is active or ended
    /// after `event_id`.
    fn create(
        &self,
        order: &ActiveOrder,
        event_id: &str,
    ) -> impl Future<Output = StoreResult<Created>> + Send;

    /// Sets the status and counts it in `seq`.
    fn set_status(
        &self,
        order_id: &str,
        status: &str,
        at: Timestamp,
        event_id: &str,
    ) -> impl Future<Output = StoreResult<OrderWrite>> + Send;

    /// Records the driver (replacing an earlier one).
    fn assign(
        &self,
        order_id: &str,
        driver_id: &str,
        at: Timestamp,
        event_id: &str,
    ) -> impl Future<Output = StoreResult<OrderWrite<Assignment>>> + Send;

    /// Forgets the order, remembering that `event_id` ended it; returns it
    /// as it was.
    fn end(
        &self,
        order_id: &str,
        event_id: &str,
    ) -> impl Future<Output = StoreResult<Option<ActiveOrder>>> + Send;

    fn get(&self, order_id: &str) -> impl Future<Output = StoreResult<Option<ActiveOrder>>> + Send;

    /// The principal's active orders: a customer's, a merchant's stores', a
    /// driver's; none for admin and support.
    fn active_for(
        &self,
        principal: &Principal,
    ) -> impl Future<Output = StoreResult<Vec<ActiveOrder>>> + Send;

    /// The `max` most recently created active orders of the whole cluster,
    /// oldest first (read-only; the demo page's overview).
    fn newest(&self, max: usize) -> impl Future<Output = StoreResult<Vec<ActiveOrder>>> + Send;
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DriverLocation {
    pub lat: f64,
    pub lng: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    pub ts: Timestamp,
}

/// Where drivers are, as fresh as `RELAY_LOCATION_TTL_S` allows.
pub trait LocationCache: Send + Sync + 'static {
    /// Stores the latest location of each driver in `batch` (one entry per
    /// driver), in as few round trips as the store allows.
    fn write(
        &self,
        batch: &[(String, DriverLocation)],
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Removes drivers last seen before `cutoff` from the geo index (geo
    /// members have no TTL of their own); returns how many.
    fn prune(&self, cutoff: Timestamp) -> impl Future<Output = StoreResult<usize>> + Send;

    fn latest(
        &self,
        driver_id: &str,
    ) -> impl Future<Output = StoreResult<Option<DriverLocation>>> + Send;

    /// Drivers with a fresh location within `radius_m`, nearest first.
    fn nearby(
        &self,
        lat: f64,
        lng: f64,
        radius_m: f64,
        max: usize,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;

    /// Up to `max` drivers with a fresh location, most recently seen first
    /// (read-only; the demo page's map).
    fn fresh_drivers(
        &self,
        max: usize,
    ) -> impl Future<Output = StoreResult<Vec<(String, DriverLocation)>>> + Send;
}

/// An event as the history keeps it and as every node delivers it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Recorded {
    /// Its place in the cluster-wide order of recorded events (`ms-seq`).
    pub offset: String,
    pub event: String,
    /// The payload, as JSON text.
    pub data: String,
    pub rooms: Vec<String>,
    /// A room every socket leaves once this event has reached it (the
    /// order room, after an order's final status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then_leave: Option<String>,
}

/// What a client missed, from its history.
#[derive(Debug, Clone, PartialEq)]
pub enum Missed {
    /// Every event of the rooms after the client's last one, oldest first
    /// (each once, also when it went to several of the rooms).
    Recovered(Vec<Recorded>),
    /// The history no longer reaches back to the client's last event.
    NotRecovered,
}

/// Events emitted to rooms, kept per room for clients that reconnect, and
/// sent live to the nodes that have sockets in those rooms.
pub trait History: Send + Sync + 'static {
    /// Records `event` for `rooms` and sends it to each room's channel
    /// ([`RoomChannels`]). Returns its offset: offsets grow in publishing
    /// order across the whole cluster.
    fn publish(
        &self,
        event: &str,
        data: &str,
        event_id: &str,
        rooms: &[String],
        then_leave: Option<&str>,
    ) -> impl Future<Output = StoreResult<String>> + Send;

    /// The offset of the newest event published so far: every event up to
    /// it is in its rooms' histories, every later one is published after
    /// this call.
    fn newest(&self) -> impl Future<Output = StoreResult<Option<String>>> + Send;

    /// The events of `rooms` after the one whose `event_id` is
    /// `last_event_id`, up to and including offset `up_to`.
    fn missed(
        &self,
        rooms: &[String],
        last_event_id: &str,
        up_to: Option<&str>,
    ) -> impl Future<Output = StoreResult<Missed>> + Send;

    /// Every event of `rooms` published since `from_ms` (unix ms), oldest
    /// first, each once, with `rooms` set to those of the asked rooms it
    /// went to: what a node fills a gap in its live feed with.
    fn since(
        &self,
        rooms: &[String],
        from_ms: u64,
    ) -> impl Future<Output = StoreResult<Vec<Recorded>>> + Send;
}

/// The messages of a node's subscribed rooms, as (channel, payload).
pub type RoomFeed = tokio::sync::mpsc::Receiver<(String, Vec<u8>)>;

/// One channel per room, for what only the nodes with sockets in that room
/// need ([`crate::engine::Routed`]): a node subscribes while it has members
/// there.
pub trait RoomChannels: Send + Sync + 'static {
    /// Every message of the rooms this node subscribes to, as (channel,
    /// payload), in the order each publisher sent them. Taken once; `None`
    /// after that.
    fn take_feed(&self) -> Option<RoomFeed>;

    /// The room of a channel named in the feed.
    fn room_of<'a>(&self, channel: &'a str) -> &'a str;

    /// Subscribes to the rooms' channels; returns once messages published
    /// from now on reach the feed.
    fn subscribe(&self, rooms: &[String]) -> impl Future<Output = StoreResult<()>> + Send;

    fn unsubscribe(&self, rooms: &[String]) -> impl Future<Output = StoreResult<()>> + Send;

    /// Sends each payload to its room's channel, in this order.
    fn publish(
        &self,
        messages: Vec<(String, Vec<u8>)>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Changes whenever the feed may have lost messages (the link to the
    /// store dropped, or the feed's buffer overflowed): the subscriber must
    /// subscribe again and fill the gap from the history.
    fn losses(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// Missed events gathered from several rooms: in offset order, each once
/// (an event sent to two of the rooms is in both histories).
pub fn in_offset_order(mut events: Vec<Recorded>) -> Vec<Recorded> {
    events.sort_by(|a, b| cmp_offsets(&a.offset, &b.offset));
    events.dedup_by(|a, b| a.offset == b.offset);
    events
}

/// Events found in several rooms' histories: one per offset, oldest first,
/// with every room it was found in.
pub fn merge_rooms(mut found: Vec<Recorded>) -> Vec<Recorded> {
    found.sort_by(|a, b| cmp_offsets(&a.offset, &b.offset));
    let mut merged: Vec<Recorded> = Vec::with_capacity(found.len());
    for record in found {
        match merged.last_mut() {
            Some(last) if last.offset == record.offset => last.rooms.extend(record.rooms),
            _ => merged.push(record),
        }
    }
    merged
}

/// Orders two `ms-seq` stream ids.
pub fn cmp_offsets(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |s: &str| {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    parse(a).cmp(&parse(b))
}

/// How long a user's `order:subscribe` is remembered: as long as an order
/// that never ends is kept. Not the history's TTL: a socket may stay
/// connected far longer than that, and a node that dies gets no chance to
/// refresh anything when its sockets go.
pub const WATCH_TTL: Duration = Duration::from_secs(48 * 3600);

/// The orders each user (a role and a `sub`, as for the connection limit)
/// joined with `order:subscribe` and did not leave: a socket of that user
/// that resumes, on any node, is put back in their rooms.
pub trait WatchedOrders: Send + Sync + 'static {
    /// Remembers (again, for another [`WATCH_TTL`]) that the user watches `order_id`.
    fn watch(
        &self,
        principal: &Principal,
        order_id: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Forgets it (`order:unsubscribe`, or the order is over).
    fn unwatch(
        &self,
        principal: &Principal,
        order_id: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// The orders the user watches, in no particular order.
    fn watched(
        &self,
        principal: &Principal,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
}

/// A user's sockets counted across every node, for the per-user connection
/// limit. Object-safe: the gateway holds it without knowing the engine.
pub trait UserSessions: Send + Sync + 'static {
    /// Counts one more socket of user `sub` in `role` unless it already has
    /// `limit` on all nodes together; `Ok(false)` when it has. A customer and
    /// a driver who share a `sub` are two users, as their rooms are.
    fn admit<'a>(
        &'a self,
        role: Role,
        sub: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<bool>>;

    /// Forgets one socket of user `sub` in `role` on this node.
    fn release(&self, role: Role, sub: String) -> BoxFuture<'_, StoreResult<()>>;

    /// Tells the other nodes this node is alive: the sockets of a node
    /// that stops doing so (it died) no longer count.
    fn keep_alive(&self) -> BoxFuture<'_, StoreResult<()>>;
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long an order's chat stays readable after its terminal status.
pub const CHAT_TTL_AFTER_END: Duration = Duration::from_secs(24 * 3600);

/// How long an active order's chat is kept since its last message: an
/// order that never ends is forgotten after 48 h, its chat a day later.
pub const CHAT_TTL_ACTIVE: Duration = Duration::from_secs(72 * 3600);

/// One message as the chat log keeps it and `{prefix}chat` gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRecord {
    pub event_id: String,
    pub order_id: String,
    pub from_id: String,
    pub from_role: String,
    pub text: String,
    pub ts: Timestamp,
    /// The `chat:message` payload, as JSON text (what `chat:history` answers).
    pub message: String,
}

/// What an append of a message to its order's log did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatAppend {
    /// Logged now, and appended to `{prefix}chat`.
    New,
    /// Logged before (the entry is handled again) and still the order's
    /// newest message: its emit may not have gone out, so it goes again.
    RepeatNewest,
    /// Logged before, and later messages came after it: emitted then.
    RepeatOlder,
    /// Not logged, and the order is not active: nothing written.
    Refused,
}

/// Who may read an ended order's chat: its customer and its last driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatParties {
    pub customer_id: String,
    pub driver_id: Option<String>,
}

/// Each order's chat: its last messages (for `chat:history`), the feed of
/// every message for the backend (`{prefix}chat`), and who took part once
/// the order is over.
///
/// Messages of an order are appended in stream order (the consumer's
/// sequencing), so an `event_id` at or before the log's newest one was
/// appended already: that is how a repeat writes nothing.
pub trait ChatLog: Send + Sync + 'static {
    /// Logs `record` (keeping the order's last `keep`) and appends it to
    /// `{prefix}chat`, once per `event_id`. A new message is logged only
    /// when `active` (the order is active).
    fn append(
        &self,
        record: &ChatRecord,
        keep: usize,
        active: bool,
    ) -> impl Future<Output = StoreResult<ChatAppend>> + Send;

    /// The order ended: its chat stays readable to `parties` (and support
    /// and admin) for [`CHAT_TTL_AFTER_END`], then goes.
    fn close(
        &self,
        order_id: &str,
        parties: &ChatParties,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// The parties of an ended order whose chat is still kept.
    fn closed(
        &self,
        order_id: &str,
    ) -> impl Future<Output = StoreResult<Option<ChatParties>>> + Send;

    /// Up to `limit` messages (JSON text) before `before` (all when None),
    /// oldest first.
    fn history(
        &self,
        order_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
}

/// What a presence write or sweep did: the transitions it made (each
/// made by exactly one call, cluster-wide) and whether the store knew this
/// node's instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceWrite {
    pub changes: Vec<PresenceChange>,
    /// False when the instance was unknown or had been given up for dead:
    /// its counts are gone, and the node must set them all again.
    pub known: bool,
}

/// What a sweep did, and the cluster-wide online totals after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceSweep {
    pub changes: Vec<PresenceChange>,
    pub online_stores: u64,
    pub online_drivers: u64,
}

/// Which stores and drivers are online, across every node: each node's
/// instance sets its own socket counts, and the store turns the sum into
/// transitions (online at once, offline after `grace`), each exactly once.
pub trait PresenceStore: Send + Sync + 'static {
    /// Sets `instance`'s socket count of each id (absolute: a retry or a
    /// full resync is harmless) and keeps the instance alive.
    fn set_counts(
        &self,
        instance: &str,
        counts: &[(PresenceId, u32)],
        grace: Duration,
    ) -> impl Future<Output = StoreResult<PresenceWrite>> + Send;

    /// Drops every count of `instance` at once (a node stopping cleanly):
    /// its ids go offline after `grace` unless another node has them.
    fn forget_instance(
        &self,
        instance: &str,
        grace: Duration,
    ) -> impl Future<Output = StoreResult<PresenceWrite>> + Send;

    /// Ends the grace of ids whose time came and drops the counts of
    /// instances that stopped keeping alive.
    fn sweep(&self, grace: Duration) -> impl Future<Output = StoreResult<PresenceSweep>> + Send;

    /// The state of each id, in the order asked.
    fn lookup(
        &self,
        ids: &[PresenceId],
    ) -> impl Future<Output = StoreResult<Vec<PresenceState>>> + Send;
}
