//! Which room channels this node subscribes to: those of the rooms its own
//! sockets are in. A room is subscribed before a socket joins it (so the
//! join sees everything published after it), and unsubscribed once no local
//! socket has been in it for [`LINGER`] (so a room that empties and fills
//! again, a reconnect, does not churn).
//!
//! An order room's locations have a channel of their own
//! ([`Routed::locations_of`]), subscribed when a socket other than a
//! driver's joins the room: the driver's node delivered its driver's
//! updates itself, and hearing them back from Redis would double Redis's
//! egress per update. It stays subscribed as long as the room.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use socketioxide::{SocketIo, adapter::Adapter};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::sparse::ShrinkWhenSparse;
use crate::{
    engine::{Engine, RoomChannels, Routed, StoreError, StoreResult},
    events::now_ms,
    metrics,
    rooms::Room,
};

/// How long a room stays subscribed after its last local socket left.
pub const LINGER: Duration = Duration::from_secs(5);

/// How often rooms without local sockets are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Longest a join waits for its SUBSCRIBE. A store that stalls must not
/// hold connects (and every other join, behind the lock) for the
/// connection's whole retry budget: past this the rooms stay wanted, and
/// the delivery loop subscribes them and fills the gap once it answers.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_millis(250);

/// A subscribed room.
struct Wanted {
    /// The last time it had a local socket or was asked for.
    seen: Instant,
    /// When it was first asked for (unix ms): what was published before
    /// never reached this node, and a gap fill must not bring it now, after
    /// later events of the room went out live.
    since_ms: u64,
}

impl Wanted {
    fn new(now: Instant) -> Self {
        Self {
            seen: now,
            since_ms: now_ms(),
        }
    }
}

pub struct Interest<E: Engine> {
    engine: Arc<E>,
    /// Subscribed rooms. An async lock, held across SUBSCRIBE and UNSUBSCRIBE:
    /// a sweep's UNSUBSCRIBE must not overtake a join's SUBSCRIBE of the
    /// same room. Joins are rare next to emits; emits never take it.
    rooms: tokio::sync::Mutex<HashMap<String, Wanted>>,
    /// Bumped when a subscription failed: the rooms are recorded as wanted,
    /// and the delivery loop subscribes them again and fills the gap.
    failures: Arc<watch::Sender<u64>>,
}

impl<E: Engine> Interest<E> {
    pub fn new(engine: Arc<E>) -> Self {
        Self {
            engine,
            rooms: tokio::sync::Mutex::default(),
            failures: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Subscribes to the rooms not subscribed yet. Returns once whatever is
    /// published to them from now on reaches this node. On an error the
    /// rooms stay wanted: [`Self::losses`] changes, and the delivery loop
    /// retries and fills what was missed meanwhile.
    pub async fn ensure(&self, rooms: &[String]) -> StoreResult<()> {
        let mut subscribed = self.rooms.lock().await;
        let now = Instant::now();
        let mut missing = Vec::new();
        for room in rooms {
            match subscribed.get_mut(room) {
                Some(wanted) => wanted.seen = now,
                None => {
                    subscribed.insert(room.clone(), Wanted::new(now));
                    missing.push(room.clone());
                }
            }
        }
        metrics::set_room_subscriptions(subscribed.len());
        if missing.is_empty() {
            return Ok(());
        }
        self.subscribe(&missing).await
    }

    /// [`Self::ensure`] for a socket joining `rooms`; unless it is a
    /// driver's (`watches_locations` false), the location channels of the
    /// order rooms among them too.
    pub async fn ensure_for(&self, rooms: &[String], watches_locations: bool) -> StoreResult<()> {
        if !watches_locations {
            return self.ensure(rooms).await;
        }
        let mut all = rooms.to_vec();
        all.extend(with_locations(rooms));
        self.ensure(&all).await
    }

    /// Subscribes to every wanted room again (after a loss); returns them,
    /// each with when it was first asked for (unix ms).
    pub async fn resubscribe_all(&self) -> StoreResult<Vec<(String, u64)>> {
        let subscribed = self.rooms.lock().await;
        let rooms: Vec<String> = subscribed.keys().cloned().collect();
        self.subscribe(&rooms).await?;
        Ok(subscribed
            .iter()
            .map(|(room, wanted)| (room.clone(), wanted.since_ms))
            .collect())
    }

    /// Subscribes in a task of its own, waited for at most
    /// [`SUBSCRIBE_TIMEOUT`]: a SUBSCRIBE given up half-way might never be
    /// sent, leaving a room the registry counts as subscribed deaf. So it
    /// always runs to its end, and only a real failure is reported as a
    /// loss (by the task).
    async fn subscribe(&self, rooms: &[String]) -> StoreResult<()> {
        let (engine, failures, rooms) =
            (self.engine.clone(), self.failures.clone(), rooms.to_vec());
        let (done, result) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let subscribed = engine.rooms().subscribe(&rooms).await;
            if let Err(e) = &subscribed {
                tracing::warn!(error = %e, rooms = rooms.len(), "room subscription failed; retrying with a gap fill");
                failures.send_modify(|n| *n += 1);
            }
            let _ = done.send(subscribed);
        });
        tokio::time::timeout(SUBSCRIBE_TIMEOUT, result)
            .await
            .map(|r| r.unwrap_or(Err(StoreError::Cancelled)))
            .unwrap_or_else(|_| {
                Err(StoreError::from(redis::RedisError::from(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "room subscription unconfirmed",
                    ),
                )))
            })
    }

    /// Changes when a subscription of [`Self::ensure`] failed.
    pub fn failures(&self) -> watch::Receiver<u64> {
        self.failures.subscribe()
    }

    /// The rooms subscribed now.
    pub async fn subscribed(&self) -> Vec<String> {
        self.rooms.lock().await.keys().cloned().collect()
    }

    /// Unsubscribes rooms without a local socket (`present` are those with
    /// one) for longer than [`LINGER`]. A room with a local socket that is
    /// not subscribed (joined by a path that did not ask first) is
    /// subscribed, and reported as a loss so that its gap is filled.
    async fn sweep(&self, present: HashSet<String>) {
        let mut subscribed = self.rooms.lock().await;
        let now = Instant::now();
        let mut strays = Vec::new();
        for room in present {
            if room.starts_with(Room::ORDER_PREFIX)
                && let Some(wanted) = subscribed.get_mut(&Routed::locations_of(&room))
            {
                wanted.seen = now;
            }
            match subscribed.get_mut(&room) {
                Some(wanted) => wanted.seen = now,
                None => strays.push(room),
            }
        }
        let idle: Vec<String> = subscribed
            .iter()
            .filter(|(_, wanted)| now.duration_since(wanted.seen) >= LINGER)
            .map(|(room, _)| room.clone())
            .collect();
        if !idle.is_empty() {
            let left =
                tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.engine.rooms().unsubscribe(&idle))
                    .await;
            match left {
                Ok(Ok(())) => {
                    for room in &idle {
                        subscribed.remove(room);
                    }
                    subscribed.shrink_when_sparse();
                    tracing::debug!(rooms = idle.len(), "room channels left");
                }
                // Stays subscribed: the next sweep tries again.
                Ok(Err(e)) => tracing::debug!(error = %e, "unsubscribing room channels failed"),
                Err(_) => tracing::debug!("unsubscribing room channels timed out"),
            }
        }
        if !strays.is_empty() {
            tracing::warn!(
                rooms = strays.len(),
                "rooms with local sockets were not subscribed"
            );
            // Who is in them is not known here: their locations too.
            let located = with_locations(&strays);
            for room in strays.iter().chain(&located) {
                subscribed.insert(room.clone(), Wanted::new(now));
            }
            self.failures.send_modify(|n| *n += 1);
        }
        metrics::set_room_subscriptions(subscribed.len());
    }
}

/// The location channels of the order rooms among `rooms`.
fn with_locations(rooms: &[String]) -> Vec<String> {
    rooms
        .iter()
        .filter(|r| r.starts_with(Room::ORDER_PREFIX))
        .map(|r| Routed::locations_of(r))
        .collect()
}

/// Sweeps until `stop`: the rooms of this node's sockets decide what stays
/// subscribed.
pub async fn sweep<E: Engine>(
    interest: Arc<Interest<E>>,
    io: SocketIo<E::Adapter>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(present) = local_rooms(&io).await else {
            continue;
        };
        interest.sweep(present).await;
    }
}

/// The rooms this node's sockets are in; None before the namespace opens.
async fn local_rooms<A: Adapter>(io: &SocketIo<A>) -> Option<HashSet<String>> {
    let ns = io.of("/")?;
    match ns.local().rooms().await {
        Ok(rooms) => Some(rooms.into_iter().map(|r| r.into_owned()).collect()),
        Err(e) => {
            tracing::debug!(error = %e, "local rooms unavailable");
            None
        }
    }
}
