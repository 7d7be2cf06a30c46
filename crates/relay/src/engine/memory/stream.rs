//! The event stream in process: the same contract as the Redis stream for
//! one consumer. The publish API is the only way in.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::Mutex,
    time::Duration,
};

use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::engine::{StoreError, StoreResult};
use crate::{
    engine::traits::{
        Claimed, DeadLetter, EventStream, KeyedAppend, OfferState, StreamEntry, StreamStats,
    },
    events::{now_ms, sequence_key},
    outcome::Outcome,
};

/// Recent outcomes and dead letters kept for the operations API.
const KEEP_RECENT: usize = 1000;

type Id = (u64, u64);

fn id_string((ms, seq): Id) -> String {
    format!("{ms}-{seq}")
}

#[derive(Default)]
struct State {
    last_id: Id,
    /// Entries not yet acknowledged, delivered or not.
    log: BTreeMap<Id, (String, String)>,
    /// Last id handed to the consumer.
    cursor: Id,
    pending: BTreeSet<Id>,
    outcomes: VecDeque<Map<String, Value>>,
    /// Offers sent and offers decided, by event id and target room.
    offered: HashSet<(String, String)>,
    decided: HashSet<(String, String)>,
    dead: VecDeque<DeadLetter>,
    /// The last appended entries, acknowledged or not (the log forgets
    /// acknowledged ones), for `recent_events`.
    recent: VecDeque<(Id, String, String)>,
    /// Per order, the ids read and not yet emitted, in stream order.
    queues: HashMap<String, VecDeque<String>>,
    /// The drivers each geo-fenced request went to, by event id.
    offer_targets: HashMap<String, Vec<String>>,
    /// Idempotency keys of the publish API: the event each one appended.
    keyed: HashMap<String, Keyed>,
    /// The keys in the order they expire (they all live as long).
    keyed_expiry: VecDeque<(u64, String)>,
}

/// What an idempotency key appended. Embedded mode keeps the event itself:
/// comparing it is exact, and one process's 24 h of API calls is small.
struct Keyed {
    kind: String,
    data: String,
    id: String,
}

pub struct MemoryStream {
    state: Mutex<State>,
    arrived: Notify,
    /// Woken whenever any order's queue moves; waiters re-check their own.
    advanced: Notify,
    node: String,
}

impl MemoryStream {
    pub fn new(node: &str) -> Self {
        Self {
            state: Mutex::default(),
            arrived: Notify::new(),
            advanced: Notify::new(),
            node: node.to_owned(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn append(&mut self, kind: &str, data: &str) -> Id {
        let ms = now_ms();
        let id = if ms > self.last_id.0 {
            (ms, 0)
        } else {
            (self.last_id.0, self.last_id.1 + 1)
        };
        self.last_id = id;
        self.log.insert(id, (kind.to_owned(), data.to_owned()));
        push_capped(&mut self.recent, (id, kind.to_owned(), data.to_owned()));
        id
    }
}

fn parse_id(id: &str) -> Option<Id> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn push_capped<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.len() == KEEP_RECENT {
        queue.pop_front();
    }
    queue.push_back(item);
}

impl EventStream for MemoryStream {
    async fn prepare(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn own_pending(&self, _count: usize) -> StoreResult<Vec<StreamEntry>> {
        Ok(Vec::new())
    }

    async fn read_new(&self, count: usize) -> StoreResult<Vec<StreamEntry>> {
        let mut state = self.state();
        let cursor = state.cursor;
        let mut batch: Vec<(Id, StreamEntry)> = state
            .log
            .range((
                std::ops::Bound::Excluded(cursor),
                std::ops::Bound::Unbounded,
            ))
            .take(count)
            .map(|(id, (kind, data))| {
                (
                    *id,
                    StreamEntry {
                        id: id_string(*id),
                        kind: Some(kind.clone().into_bytes()),
                        data: Some(data.clone().into_bytes()),
                        first_in_order: false,
                    },
                )
            })
            .collect();
        for (id, entry) in &mut batch {
            state.pending.insert(*id);
            state.cursor = *id;
            if let Some(order) = sequence_key(entry.data.as_deref()) {
                let queue = state.queues.entry(order).or_default();
                // As the Redis read script tells: nothing of the order is before it.
                entry.first_in_order = queue.is_empty();
                queue.push_back(entry.id.clone());
            }
        }
        Ok(batch.into_iter().map(|(_, e)| e).collect())
    }

    async fn wait_new(&self, timeout: Duration) -> StoreResult<()> {
        let _ = tokio::time::timeout(timeout, self.arrived.notified()).await;
        Ok(())
    }

    async fn claim_stale(&self, _in_flight: &[String]) -> StoreResult<Claimed> {
        Ok(Claimed::default())
    }

    async fn keep_alive(&self, _ids: &[String]) -> StoreResult<()> {
        Ok(())
    }

    async fn hand_back(&self, _ids: &[String]) -> StoreResult<()> {
        Ok(())
    }

    /// The same sequencing as the Redis stream, in process: entries are
    /// queued per order when read and emitted from the head.
    async fn wait_turn(
        &self,
        order: &str,
        id: &str,
        cancel: &CancellationToken,
    ) -> StoreResult<()> {
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            let my_turn = match self.state().queues.get(order) {
                Some(queue) => {
                    queue.front().map(String::as_str) == Some(id) || !queue.iter().any(|q| q == id)
                }
                None => true,
            };
            if my_turn {
                return Ok(());
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(StoreError::Cancelled),
                () = advanced => {}
            }
        }
    }

    async fn advance(&self, order: &str, id: &str) -> StoreResult<()> {
        {
            let mut state = self.state();
            if let Some(queue) = state.queues.get_mut(order) {
                queue.retain(|queued| queued != id);
                if queue.is_empty() {
                    state.queues.remove(order);
                }
            }
        }
        self.advanced.notify_waiters();
        Ok(())
    }

    async fn ack(&self, id: &str) -> StoreResult<()> {
        if let Some(id) = parse_id(id) {
            let mut state = self.state();
            state.log.remove(&id);
            state.pending.remove(&id);
        }
        Ok(())
    }

    async fn dead_letter(&self, entry: &StreamEntry, reason: &str) -> StoreResult<()> {
        tracing::warn!(id = %entry.id, reason, "event dead-lettered");
        let letter = DeadLetter {
            id: entry.id.clone(),
            kind: entry.kind.clone(),
            data: entry.data.clone(),
            reason: reason.to_owned(),
            node: self.node.clone(),
        };
        push_capped(&mut self.state().dead, letter);
        if let Some(order) = sequence_key(entry.data.as_deref()) {
            self.advance(&order, &entry.id).await?;
        }
        self.ack(&entry.id).await
    }

    async fn append(&self, kind: &str, data: &str) -> StoreResult<String> {
        let id = self.state().append(kind, data);
        self.arrived.notify_one();
        Ok(id_string(id))
    }

    async fn append_keyed(&self, key: &str, kind: &str, data: &str) -> StoreResult<KeyedAppend> {
        let now = now_ms();
        let appended = {
            // Checked and appended under one lock: copies of a request
            // racing append once.
            let mut state = self.state();
            while let Some((expires, _)) = state.keyed_expiry.front()
                && *expires <= now
            {
                if let Some((_, gone)) = state.keyed_expiry.pop_front() {
                    state.keyed.remove(&gone);
                }
            }
            if let Some(seen) = state.keyed.get(key) {
                let id = seen.id.clone();
                return Ok(if seen.kind == kind && seen.data == data {
                    KeyedAppend::Replayed(id)
                } else {
                    KeyedAppend::Conflict(id)
                });
            }
            let id = id_string(state.append(kind, data));
            let ttl = crate::engine::IDEMPOTENCY_TTL.as_millis() as u64;
            state.keyed_expiry.push_back((now + ttl, key.to_owned()));
            state.keyed.insert(
                key.to_owned(),
                Keyed {
                    kind: kind.to_owned(),
                    data: data.to_owned(),
                    id: id.clone(),
                },
            );
            id
        };
        self.arrived.notify_one();
        Ok(KeyedAppend::Appended(appended))
    }

    async fn offer_targets(&self, event_id: &str, found: &[String]) -> StoreResult<Vec<String>> {
        Ok(self
            .state()
            .offer_targets
            .entry(event_id.to_owned())
            .or_insert_with(|| found.to_vec())
            .clone())
    }

    async fn offer_state(&self, event_id: &str, target: &str) -> StoreResult<OfferState> {
        let state = self.state();
        let key = (event_id.to_owned(), target.to_owned());
        Ok(if state.decided.contains(&key) {
            OfferState::Decided
        } else if state.offered.contains(&key) {
            OfferState::Offered
        } else {
            OfferState::Fresh
        })
    }

    async fn mark_offered(&self, event_id: &str, target: &str) -> StoreResult<()> {
        let key = (event_id.to_owned(), target.to_owned());
        self.state().offered.insert(key);
        Ok(())
    }

    async fn append_outcome(&self, outcome: &Outcome) -> StoreResult<bool> {
        let key = (outcome.event_id.clone(), outcome.target.clone());
        if !self.state().decided.insert(key) {
            return Ok(false);
        }
        tracing::info!(
            event_id = %outcome.event_id,
            event = outcome.event.as_str(),
            target = %outcome.target,
            outcome = outcome.outcome.as_str(),
            latency_ms = outcome.latency_ms,
            "offer outcome"
        );
        if let Ok(Value::Object(mut map)) = serde_json::to_value(outcome) {
            // As in the outcomes stream: no ack, no `response` field.
            map.retain(|_, value| !value.is_null());
            push_capped(&mut self.state().outcomes, map);
        }
        Ok(true)
    }

    async fn stats(&self) -> StoreResult<StreamStats> {
        let state = self.state();
        let cursor = state.cursor;
        let lag = state
            .log
            .range((
                std::ops::Bound::Excluded(cursor),
                std::ops::Bound::Unbounded,
            ))
            .count() as u64;
        let oldest_pending = state
            .pending
            .first()
            .map(|(ms, _)| Duration::from_millis(now_ms().saturating_sub(*ms)));
        Ok(StreamStats {
            lag: Some(lag),
            pending: state.pending.len() as u64,
            oldest_pending,
        })
    }

    async fn recent_outcomes(&self, limit: usize) -> StoreResult<Vec<Map<String, Value>>> {
        let state = self.state();
        let skip = state.outcomes.len().saturating_sub(limit);
        Ok(state.outcomes.iter().skip(skip).cloned().collect())
    }

    async fn recent_dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        let state = self.state();
        let skip = state.dead.len().saturating_sub(limit);
        Ok(state.dead.iter().skip(skip).cloned().collect())
    }

    async fn recent_events(&self, limit: usize) -> StoreResult<Vec<StreamEntry>> {
        let state = self.state();
        let skip = state.recent.len().saturating_sub(limit);
        Ok(state
            .recent
            .iter()
            .skip(skip)
            .map(|(id, kind, data)| StreamEntry {
                id: id_string(*id),
                kind: Some(kind.clone().into_bytes()),
                data: Some(data.clone().into_bytes()),
                first_in_order: false,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recent_events_outlive_their_ack_and_come_newest_last() {
        let stream = MemoryStream::new("n1");
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(
                stream
                    .append("admin.alert", &format!(r#"{{"n":{n}}}"#))
                    .await
                    .unwrap(),
            );
        }
        for entry in stream.read_new(10).await.unwrap() {
            stream.ack(&entry.id).await.unwrap();
        }
        let recent = stream.recent_events(2).await.unwrap();
        let got: Vec<_> = recent.iter().map(|e| e.id.clone()).collect();
        assert_eq!(got, ids[1..]);
        assert_eq!(recent[1].kind_str(), Some("admin.alert"));
        assert_eq!(recent[1].data_str(), Some(r#"{"n":2}"#));
        assert_eq!(stream.recent_events(100).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn recent_events_keep_a_bounded_window() {
        let stream = MemoryStream::new("n1");
        for _ in 0..KEEP_RECENT + 5 {
            stream.append("admin.alert", "{}").await.unwrap();
        }
        let all = stream.recent_events(usize::MAX).await.unwrap();
        assert_eq!(all.len(), KEEP_RECENT);
    }
}
