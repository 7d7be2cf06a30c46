//! Presence of stores and drivers (CONTRACT §7): this node's share of it.
//!
//! The gateway tells [`Presence`] which sockets arrive, change their
//! stores (`auth:refresh`) and leave; that is plain bookkeeping under a
//! lock, never a wait on the store. One worker ([`run`]) writes this
//! node's count per id to the engine, coalescing bursts (absolute counts:
//! the last write wins, and a retry is harmless), keeps the node's
//! instance alive, and sweeps: the engine turns counts into transitions,
//! each made once cluster-wide. A write that fails is tried again; an
//! instance the store had given up for dead sets all its counts again.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use socketioxide::socket::Sid;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{Principal, Role},
    engine::{Engine, PresenceStore, PresenceWrite, StoreError},
    events::{PresenceId, PresenceKind},
    metrics::{self, StoreOp},
};

/// How often grace periods and dead nodes are looked at: the accuracy of
/// the offline transitions.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// How often this node's instance is kept alive in the store (the Redis
/// engine gives a silent instance up after 9 s).
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(2);

/// Ids per write: a full resync of a node with many drivers is cut into
/// script calls that each keep Redis busy briefly.
const IDS_PER_WRITE: usize = 500;

/// The forgetting of a node that stops cleanly waits at most this long.
const FORGET_TIMEOUT: Duration = Duration::from_secs(2);

/// Whose presence a principal makes: a merchant its stores, a driver
/// itself; the other roles none.
pub fn ids_of(principal: &Principal) -> Vec<PresenceId> {
    match principal.role() {
        Role::Merchant => principal
            .store_ids()
            .iter()
            .map(|s| PresenceId::new(PresenceKind::Store, s.clone()))
            .collect(),
        Role::Driver => vec![PresenceId::new(PresenceKind::Driver, principal.sub())],
        Role::Customer | Role::Admin | Role::Support => Vec::new(),
    }
}

#[derive(Default)]
struct Local {
    /// This node's sockets per id.
    counts: HashMap<PresenceId, u32>,
    /// What each socket is counted for, so that a leave undoes exactly
    /// its arrival and refreshes, whatever the socket's principal says then.
    sockets: HashMap<Sid, Vec<PresenceId>>,
    /// Ids whose count the store has not had yet.
    dirty: HashSet<PresenceId>,
}

impl Local {
    fn add(&mut self, who: &PresenceId) {
        *self.counts.entry(who.clone()).or_default() += 1;
        self.dirty.insert(who.clone());
    }

    fn remove(&mut self, who: &PresenceId) {
        if let Some(n) = self.counts.get_mut(who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(who);
            }
        }
        self.dirty.insert(who.clone());
    }
}

/// This node's sockets per store and driver, for the worker to write.
pub struct Presence {
    local: Mutex<Local>,
    wake: Notify,
    grace: Duration,
}

impl Presence {
    /// `grace`: `RELAY_PRESENCE_GRACE_MS`, how long an id with no socket
    /// left stays online.
    pub fn new(grace: Duration) -> Self {
        Self {
            local: Mutex::default(),
            wake: Notify::new(),
            grace,
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A socket connected.
    pub fn arrive(&self, sid: Sid, principal: &Principal) {
        let ids = ids_of(principal);
        if ids.is_empty() {
            return;
        }
        let mut local = self.local();
        for who in &ids {
            local.add(who);
        }
        local.sockets.insert(sid, ids);
        drop(local);
        self.wake.notify_one();
    }

    /// A socket's principal changed (`auth:refresh`): a merchant's stores
    /// follow its new `store_ids`. A socket already gone stays gone.
    pub fn update(&self, sid: Sid, principal: &Principal) {
        let ids = ids_of(principal);
        let mut local = self.local();
        let Some(before) = local.sockets.remove(&sid) else {
            return;
        };
        for who in before.iter().filter(|w| !ids.contains(w)) {
            local.remove(who);
        }
        for who in ids.iter().filter(|w| !before.contains(w)) {
            local.add(who);
        }
        let changed = local.dirty.len();
        if !ids.is_empty() {
            local.sockets.insert(sid, ids);
        }
        drop(local);
        if changed > 0 {
            self.wake.notify_one();
        }
    }

    /// A socket disconnected.
    pub fn depart(&self, sid: Sid) {
        let mut local = self.local();
        let Some(ids) = local.sockets.remove(&sid) else {
            return;
        };
        for who in &ids {
            local.remove(who);
        }
        drop(local);
        self.wake.notify_one();
    }

    /// The dirty ids with their current counts, no longer dirty.
    fn take_dirty(&self) -> Vec<(PresenceId, u32)> {
        let mut local = self.local();
        let dirty = std::mem::take(&mut local.dirty);
        dirty
            .into_iter()
            .map(|who| {
                let n = local.counts.get(&who).copied().unwrap_or(0);
                (who, n)
            })
            .collect()
    }

    /// Writes that did not reach the store, to be tried again.
    fn restore_dirty(&self, ids: impl IntoIterator<Item = PresenceId>) {
        self.local().dirty.extend(ids);
    }

    /// Every id this node counts, to be written again.
    fn mark_all_dirty(&self) {
        let mut local = self.local();
        let all: Vec<PresenceId> = local.counts.keys().cloned().collect();
        local.dirty.extend(all);
    }
}

/// Writes this node's counts, keeps its instance alive and sweeps, until
/// `stop`; then forgets the instance (its ids go offline after the grace
/// unless a socket reconnects elsewhere).
pub async fn run<E: Engine>(
    presence: Arc<Presence>,
    engine: Arc<E>,
    instance: String,
    stop: CancellationToken,
) {
    let store = engine.presence();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE_EVERY);
    for timer in [&mut sweep, &mut keep_alive] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    // While the store fails, writes wait for the keep-alive tick instead of
    // following every socket event.
    let mut failing = false;
    let mut refused = Refusals::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = presence.wake.notified(), if !failing => {
                let done = flush(&presence, store, &instance, false).await;
                failing = refused.note("presence write", done);
            }
            _ = keep_alive.tick() => {
                let done = flush(&presence, store, &instance, true).await;
                failing = refused.note("presence write", done);
            }
            _ = sweep.tick() => {
                let done = store.sweep(presence.grace).await.map(|done| {
                    metrics::presence_changes(&done.changes);
                    metrics::set_presence_online(done.online_stores, done.online_drivers);
                });
                refused.note("presence sweep", done);
            }
        }
    }
    match tokio::time::timeout(
        FORGET_TIMEOUT,
        store.forget_instance(&instance, presence.grace),
    )
    .await
    {
        Ok(Ok(done)) => metrics::presence_changes(&done.changes),
        Ok(Err(e)) => {
            metrics::store_error(StoreOp::Presence);
            tracing::debug!(error = %e, "presence not handed over at stop; other nodes drop it once this node stops keeping alive");
        }
        Err(_) => tracing::debug!("presence hand-over timed out at stop"),
    }
}

/// Failures are counted; Redis away (or refusing the password or the
/// certificate) is the health watch's to tell, so they are logged at debug
/// level. A refusal only an operator can fix (a missing ACL permission,
/// WRONGTYPE) is an error, told once until presence works again.
#[derive(Default)]
struct Refusals {
    told: bool,
}

impl Refusals {
    /// Returns whether `result` failed.
    fn note(&mut self, what: &str, result: Result<(), StoreError>) -> bool {
        match result {
            Ok(()) => {
                if std::mem::take(&mut self.told) {
                    tracing::info!("{what}s work again");
                }
                false
            }
            Err(e) => {
                metrics::store_error(StoreOp::Presence);
                if e.is_transient() || e.told_by_health() || self.told {
                    tracing::debug!(error = %e, "{what} failed");
                } else {
                    tracing::error!(error = %e, "{what} refused: presence does not change until this is fixed");
                    self.told = true;
                }
                true
            }
        }
    }
}

/// One round of writes (or a bare keep-alive). Failed ids are dirty again.
async fn flush<S: PresenceStore>(
    presence: &Presence,
    store: &S,
    instance: &str,
    keep_alive: bool,
) -> Result<(), StoreError> {
    let mut dirty = presence.take_dirty();
    if dirty.is_empty() && !keep_alive {
        return Ok(());
    }
    loop {
        let rest = dirty.split_off(dirty.len().min(IDS_PER_WRITE));
        let batch = std::mem::replace(&mut dirty, rest);
        match store.set_counts(instance, &batch, presence.grace).await {
            Ok(PresenceWrite { changes, known }) => {
                metrics::presence_changes(&changes);
                if !known {
                    // New, or given up for dead while it could not keep
                    // alive: the store has none of this node's counts.
                    presence.mark_all_dirty();
                    presence.wake.notify_one();
                }
            }
            Err(e) => {
                presence.restore_dirty(batch.into_iter().chain(dirty).map(|(who, _)| who));
                return Err(e);
            }
        }
        if dirty.is_empty() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merchant(stores: &[&str]) -> Principal {
        Principal::new(
            "m1",
            Role::Merchant,
            stores.iter().map(|s| (*s).to_owned()).collect(),
        )
    }

    fn store(id: &str) -> PresenceId {
        PresenceId::new(PresenceKind::Store, id)
    }

    fn dirty(presence: &Presence) -> Vec<(PresenceId, u32)> {
        let mut dirty = presence.take_dirty();
        dirty.sort();
        dirty
    }

    #[test]
    fn a_socket_counts_for_its_ids_until_it_leaves_whatever_it_says_then() {
        let presence = Presence::new(Duration::ZERO);
        let (tablet, phone) = (Sid::new(), Sid::new());
        presence.arrive(tablet, &merchant(&["s1", "s2"]));
        presence.arrive(phone, &merchant(&["s2"]));
        assert_eq!(dirty(&presence), [(store("s1"), 1), (store("s2"), 2)]);
        assert_eq!(dirty(&presence), [], "written once");
        // A refresh that swaps s1 for s3.
        presence.update(tablet, &merchant(&["s2", "s3"]));
        assert_eq!(dirty(&presence), [(store("s1"), 0), (store("s3"), 1)]);
        presence.depart(tablet);
        presence.depart(tablet);
        assert_eq!(dirty(&presence), [(store("s2"), 1), (store("s3"), 0)]);
        // Gone: a late refresh of it counts for nothing.
        presence.update(tablet, &merchant(&["s9"]));
        assert_eq!(dirty(&presence), []);
    }

    #[test]
    fn only_merchants_and_drivers_count() {
        let presence = Presence::new(Duration::ZERO);
        for role in [Role::Customer, Role::Admin, Role::Support] {
            presence.arrive(Sid::new(), &Principal::new("u1", role, vec![]));
        }
        assert_eq!(dirty(&presence), []);
        presence.arrive(Sid::new(), &Principal::new("d1", Role::Driver, vec![]));
        assert_eq!(
            dirty(&presence),
            [(PresenceId::new(PresenceKind::Driver, "d1"), 1)]
        );
    }

    #[test]
    fn failed_writes_and_a_lost_instance_write_again() {
        let presence = Presence::new(Duration::ZERO);
        presence.arrive(Sid::new(), &merchant(&["s1", "s2"]));
        let taken = presence.take_dirty();
        presence.restore_dirty(taken.into_iter().map(|(who, _)| who));
        assert_eq!(dirty(&presence), [(store("s1"), 1), (store("s2"), 1)]);
        presence.mark_all_dirty();
        assert_eq!(dirty(&presence), [(store("s1"), 1), (store("s2"), 1)]);
    }
}
