//! Presence in process: the Redis engine's rules (online at once, offline
//! after the grace), for the one node there is. No stream: the changes are
//! returned to the node, which counts them, and `GET /api/presence` reads
//! the state.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use crate::engine::StoreResult;
use crate::engine::traits::{PresenceStore, PresenceSweep, PresenceWrite};
use crate::events::{PresenceChange, PresenceId, PresenceKind, PresenceState, now_ms};

/// An id offline with no socket keeps its `since` this long, as on Redis.
const KEEP_OFFLINE_MS: u64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, Default)]
struct Entry {
    /// Sockets per instance (one instance in embedded mode; kept per
    /// instance so that the rules read as on Redis).
    counts: HashMap<String, u32>,
    online: bool,
    since: u64,
    /// When the grace of an online id with no socket ends.
    off_at: Option<u64>,
}

impl Entry {
    fn total(&self) -> u32 {
        self.counts.values().sum()
    }
}

#[derive(Debug, Default)]
pub struct MemoryPresence {
    entries: Mutex<HashMap<PresenceId, Entry>>,
}

/// The Redis script's `settle`, for one id at `now`.
fn settle(who: &PresenceId, entry: &mut Entry, off_at: u64, now: u64) -> Option<PresenceChange> {
    let change = |online| PresenceChange {
        who: who.clone(),
        online,
        ts: now,
    };
    if entry.total() > 0 {
        entry.off_at = None;
        if !entry.online {
            (entry.online, entry.since) = (true, now);
            return Some(change(true));
        }
    } else if entry.online {
        if off_at <= now {
            (entry.online, entry.since, entry.off_at) = (false, now, None);
            return Some(change(false));
        }
        entry.off_at.get_or_insert(off_at);
    }
    None
}

impl PresenceStore for MemoryPresence {
    async fn set_counts(
        &self,
        instance: &str,
        counts: &[(PresenceId, u32)],
        grace: Duration,
    ) -> StoreResult<PresenceWrite> {
        let now = now_ms();
        let off_at = now + grace.as_millis() as u64;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut changes = Vec::new();
        for (who, count) in counts {
            let entry = entries.entry(who.clone()).or_default();
            if *count > 0 {
                entry.counts.insert(instance.to_owned(), *count);
            } else {
                entry.counts.remove(instance);
            }
            changes.extend(settle(who, entry, off_at, now));
        }
        Ok(PresenceWrite {
            changes,
            known: true,
        })
    }

    async fn forget_instance(&self, instance: &str, grace: Duration) -> StoreResult<PresenceWrite> {
        let now = now_ms();
        let off_at = now + grace.as_millis() as u64;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut changes = Vec::new();
        for (who, entry) in entries.iter_mut() {
            if entry.counts.remove(instance).is_some() {
                changes.extend(settle(who, entry, off_at, now));
            }
        }
        Ok(PresenceWrite {
            changes,
            known: true,
        })
    }

    async fn sweep(&self, _grace: Duration) -> StoreResult<PresenceSweep> {
        let now = now_ms();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut sweep = PresenceSweep::default();
        entries.retain(|who, entry| {
            if entry.off_at.is_some_and(|at| at <= now) {
                sweep.changes.extend(settle(who, entry, now, now));
            }
            if entry.online {
                match who.kind {
                    PresenceKind::Store => sweep.online_stores += 1,
                    PresenceKind::Driver => sweep.online_drivers += 1,
                }
            }
            entry.online || entry.total() > 0 || now.saturating_sub(entry.since) < KEEP_OFFLINE_MS
        });
        Ok(sweep)
    }

    async fn lookup(&self, ids: &[PresenceId]) -> StoreResult<Vec<PresenceState>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        Ok(ids
            .iter()
            .map(|who| {
                entries.get(who).map_or(
                    PresenceState {
                        online: false,
                        since: 0,
                    },
                    |e| PresenceState {
                        online: e.online,
                        since: e.since,
                    },
                )
            })
            .collect())
    }
}
