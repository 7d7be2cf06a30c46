//! The event stream in process: the same contract as the Redis stream for
//! one consumer. The publish API is the only way in.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Mutex,
    time::Duration,
};

use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    engine::traits::{Claimed, DeadLetter, EventStream, StoreResult, StreamEntry, StreamStats},
    events::now_ms,
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
    dead: VecDeque<DeadLetter>,
}

pub struct MemoryStream {
    state: Mutex<State>,
    arrived: Notify,
    node: String,
}

impl MemoryStream {
    pub fn new(node: &str) -> Self {
        Self {
            state: Mutex::default(),
            arrived: Notify::new(),
            node: node.to_owned(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
        let batch: Vec<(Id, StreamEntry)> = state
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
                        kind: Some(kind.clone()),
                        data: Some(data.clone()),
                    },
                )
            })
            .collect();
        for (id, _) in &batch {
            state.pending.insert(*id);
            state.cursor = *id;
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

    /// One consumer reads in order and runs each order's entries one after
    /// the other: its turn has always come.
    async fn wait_turn(
        &self,
        _order: &str,
        _id: &str,
        _cancel: &CancellationToken,
    ) -> StoreResult<()> {
        Ok(())
    }

    async fn advance(&self, _order: &str, _id: &str) -> StoreResult<()> {
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
        self.ack(&entry.id).await
    }

    async fn append(&self, kind: &str, data: &str) -> StoreResult<String> {
        let id = {
            let mut state = self.state();
            let ms = now_ms();
            let id = if ms > state.last_id.0 {
                (ms, 0)
            } else {
                (state.last_id.0, state.last_id.1 + 1)
            };
            state.last_id = id;
            state.log.insert(id, (kind.to_owned(), data.to_owned()));
            id
        };
        self.arrived.notify_one();
        Ok(id_string(id))
    }

    async fn append_outcome(&self, outcome: &Outcome) -> StoreResult<()> {
        tracing::info!(
            event_id = %outcome.event_id,
            event = outcome.event,
            target = %outcome.target,
            outcome = outcome.outcome.as_str(),
            latency_ms = outcome.latency_ms,
            "offer outcome"
        );
        if let Ok(Value::Object(map)) = serde_json::to_value(outcome) {
            push_capped(&mut self.state().outcomes, map);
        }
        Ok(())
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
}
