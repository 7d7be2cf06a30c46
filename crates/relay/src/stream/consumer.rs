//! The stream consumer: reads the group, runs each order's entries one after
//! the other (and different orders side by side), claims the entries of
//! stopped nodes, and acknowledges an entry only once its effect is done.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::tasks::{Tasks, names};
use crate::{
    engine::{
        Engine, EventStream, Health, StoreError, StreamEntry, log_redis_failure, redis_failure,
    },
    events::{DecodeError, DecodeReason, decode_entry, sequence_key},
    metrics::{self, RedisFailure, StoreOp, StreamStage},
    stream::{Dispatcher, Effect, dispatch::Refusal},
};

/// Entries read per round trip.
const BATCH: usize = 100;
/// How often the group's lag and pending figures are refreshed.
const STATS_EVERY: Duration = Duration::from_secs(5);
/// Longest pause between retries of a failing store.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Entries being handled at once (read slots). An offer waiting for
    /// its merchant gives its read slot back once its order's turn has
    /// passed, and holds an offer slot instead.
    pub max_in_flight: usize,
    /// Offers waiting for their outcome at once. Each may wait its whole
    /// timer (60 s by default): were they counted against `max_in_flight`,
    /// that many open offers would stop the node reading the stream, and
    /// every status and chat event behind them would wait.
    pub max_open_offers: usize,
    pub claim_idle: Duration,
    /// Entries beyond this size are dead-lettered undecoded (`too_large`).
    /// The Redis engine refuses them as it reads them; this catches the
    /// rest (the memory engine, entries claimed from an older node).
    pub max_event_bytes: usize,
    /// Time given to in-progress emits at shutdown before handing back.
    pub drain: Duration,
    /// Test hook (`RELAY_TEST_CRASH_BEFORE_ACK=<type>`, never set in
    /// production): the process aborts once an entry of this type is
    /// complete and not yet acknowledged, the moment a crash leaves an
    /// entry to be handled twice.
    pub crash_before_ack: Option<String>,
}

struct Job {
    entry: StreamEntry,
    /// Claimed entries carry none: they may be the very ones that entries
    /// holding every slot wait for, so they must never wait for a slot.
    permit: Option<OwnedSemaphorePermit>,
}

pub struct Consumer<E: Engine> {
    engine: Arc<E>,
    dispatcher: Arc<Dispatcher<E>>,
    health: Health,
    settings: ConsumerSettings,
    permits: Arc<Semaphore>,
    /// Offers waiting for their outcome (see [`ConsumerSettings::max_open_offers`]).
    offer_slots: Arc<Semaphore>,
    /// Entries this node holds (for keep-alive, claim exclusion, hand-back).
    in_flight: Arc<Mutex<HashSet<String>>>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl<E: Engine> Clone for Consumer<E> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            dispatcher: self.dispatcher.clone(),
            health: self.health.clone(),
            settings: self.settings.clone(),
            permits: self.permits.clone(),
            offer_slots: self.offer_slots.clone(),
            in_flight: self.in_flight.clone(),
            tasks: self.tasks.clone(),
            stop: self.stop.clone(),
        }
    }
}

impl<E: Engine> Consumer<E> {
    pub fn new(
        engine: Arc<E>,
        dispatcher: Arc<Dispatcher<E>>,
        health: Health,
        settings: ConsumerSettings,
        stop: CancellationToken,
    ) -> Self {
        Self {
            engine,
            dispatcher,
            health,
            permits: Arc::new(Semaphore::new(settings.max_in_flight)),
            offer_slots: Arc::new(Semaphore::new(settings.max_open_offers)),
            settings,
            in_flight: Arc::default(),
            tasks: TaskTracker::new(),
            stop,
        }
    }

    fn stream(&self) -> &E::Stream {
        self.engine.stream()
    }

    /// Runs until `stop`, then drains and hands back what is left. Its
    /// maintenance (keep-alive, claims, stats) runs beside it in `tasks`.
    pub async fn run(self, tasks: &Tasks) {
        if !self.prepare().await {
            return;
        }
        self.take_own_pending().await;
        // Restarted after a panic: each round reads what it needs afresh.
        let maintenance = tasks.spawn_restarting(names::CONSUMER_MAINTENANCE, {
            let this = self.clone();
            move || this.clone().maintain()
        });
        self.read_loop().await;
        self.health.set_consumer_running(false);
        let _ = maintenance.await;
        self.drain().await;
    }

    async fn prepare(&self) -> bool {
        let mut backoff = Duration::from_millis(100);
        let mut told = false;
        loop {
            match self.stream().prepare().await {
                Ok(()) => {
                    self.health.set_consumer_running(true);
                    return true;
                }
                // Nothing can be read without the group: keep trying, at the
                // slowest pace when only an operator can help.
                Err(e) if e.told_by_health() => {
                    tracing::debug!(error = %e, "consumer group not ready")
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "consumer group not ready")
                }
                Err(e) => {
                    // A missing ACL permission (the health probe only needs
                    // pub/sub) is counted and told once; other refusals as before.
                    match e.redis().map(|r| (redis_failure(r), r)) {
                        Some((cause @ RedisFailure::Permission, r)) => {
                            metrics::redis_connect_error(cause);
                            if !told {
                                log_redis_failure(cause, r);
                                told = true;
                            }
                        }
                        _ => tracing::error!(error = %e, "consumer group cannot be created"),
                    }
                    backoff = MAX_BACKOFF;
                }
            }
            if !self.pause(&mut backoff).await {
                return false;
            }
        }
    }

    /// After a restart under the same node id, this node's own pending
    /// entries go before anything new.
    async fn take_own_pending(&self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.stream().own_pending(self.settings.max_in_flight).await {
                Ok(entries) => {
                    if !entries.is_empty() {
                        tracing::info!(
                            count = entries.len(),
                            "resuming this node's pending entries"
                        );
                    }
                    for entry in entries {
                        match self.permits.clone().acquire_owned().await {
                            Ok(permit) => self.schedule(Job {
                                entry,
                                permit: Some(permit),
                            }),
                            Err(_) => return,
                        }
                    }
                    return;
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "own pending entries unreadable");
                }
                // Not worth holding the stream for: the entries are not held
                // here, so the claim rounds take them once they are idle.
                Err(e) => {
                    tracing::error!(error = %e, "own pending entries unreadable; left to the claim rounds");
                    return;
                }
            }
            if !self.pause(&mut backoff).await {
                return;
            }
        }
    }

    async fn read_loop(&self) {
        let mut backoff = Duration::from_millis(100);
        while !self.stop.is_cancelled() {
            let first = tokio::select! {
                () = self.stop.cancelled() => return,
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let mut permits = vec![first];
            while permits.len() < BATCH {
                match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let asked = permits.len();
            let started = tokio::time::Instant::now();
            match self.stream().read_new(asked).await {
                Ok(entries) => {
                    metrics::stream_stage(StreamStage::Read, started.elapsed().as_secs_f64());
                    self.health.set_consumer_running(true);
                    backoff = Duration::from_millis(100);
                    // Fewer than asked: the stream is drained for now, and
                    // reading again at once would only find nothing.
                    let drained = entries.len() < asked;
                    for (entry, permit) in entries.into_iter().zip(permits) {
                        self.schedule(Job {
                            entry,
                            permit: Some(permit),
                        });
                    }
                    if !drained {
                        continue;
                    }
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        res = self.stream().wait_new(Duration::from_secs(2)) => {
                            if let Err(e) = res {
                                tracing::debug!(error = %e, "waiting for entries failed");
                                if !self.pause(&mut backoff).await {
                                    return;
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    drop(permits);
                    self.health.set_consumer_running(false);
                    metrics::store_error(StoreOp::StreamRead);
                    // The stream is all there is to read: keep trying, at the
                    // slowest pace when only an operator can help.
                    if e.told_by_health() {
                        tracing::debug!(error = %e, "reading the event stream failed");
                    } else if e.is_transient() {
                        tracing::warn!(error = %e, "reading the event stream failed");
                    } else {
                        tracing::error!(error = %e, "reading the event stream failed");
                        backoff = MAX_BACKOFF;
                    }
                    if !self.pause(&mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// Keep-alive of held entries, claims of stopped nodes' entries, stats.
    async fn maintain(self) {
        let tick = (self.settings.claim_idle / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(2));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_stats = tokio::time::Instant::now() - STATS_EVERY;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            let held = self.held();
            metrics::set_in_flight(held.len());
            if let Err(e) = self.stream().keep_alive(&held).await {
                metrics::store_error(StoreOp::KeepAlive);
                if e.is_transient() {
                    tracing::debug!(error = %e, "keep-alive failed");
                } else {
                    tracing::error!(error = %e, "keep-alive failed");
                }
            }
            self.claim(&held).await;
            if last_stats.elapsed() >= STATS_EVERY {
                last_stats = tokio::time::Instant::now();
                match self.stream().stats().await {
                    Ok(stats) => metrics::set_stream_stats(
                        stats.lag,
                        stats.pending,
                        stats.oldest_pending.map_or(0.0, |d| d.as_secs_f64()),
                    ),
                    Err(e) => tracing::debug!(error = %e, "stream stats unavailable"),
                }
            }
        }
    }

    async fn claim(&self, held: &[String]) {
        match self.stream().claim_stale(held).await {
            Ok(claimed) => {
                if claimed.dead_lettered > 0 {
                    metrics::stream_dead_lettered_after_max_deliveries();
                }
                if !claimed.entries.is_empty() {
                    tracing::info!(
                        count = claimed.entries.len(),
                        "claimed entries of a stopped node"
                    );
                    metrics::stream_claimed(claimed.entries.len());
                }
                for entry in claimed.entries {
                    self.schedule(Job {
                        entry,
                        permit: None,
                    });
                }
            }
            Err(e) => {
                metrics::store_error(StoreOp::Claim);
                if e.is_transient() {
                    tracing::debug!(error = %e, "claiming failed");
                } else {
                    tracing::error!(error = %e, "claiming failed");
                }
            }
        }
    }

    fn held(&self) -> Vec<String> {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn hold(&self, id: &str) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned());
    }

    fn release(&self, id: &str) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Every entry runs in a task of its own; entries of one order wait for
    /// each other through the stream's sequencing, on this node and across
    /// nodes alike, so an earlier entry that arrives late (claimed from a
    /// stopped node) is never stuck behind a later one.
    fn schedule(&self, job: Job) {
        self.hold(&job.entry.id);
        metrics::stream_consumed(metrics::entry_type(job.entry.kind.as_deref()));
        let order = sequence_key(job.entry.data.as_deref());
        let this = self.clone();
        self.tasks
            .spawn(async move { this.process(job, order.as_deref()).await });
    }

    /// Handles one entry up to its emits; offers finish in a task of their own.
    async fn process(&self, job: Job, order: Option<&str>) {
        let Job { entry, permit } = job;
        let kind = metrics::entry_type(entry.kind.as_deref());
        let size = entry.size();
        let decoded = if size > self.settings.max_event_bytes {
            Err(DecodeError {
                reason: DecodeReason::TooLarge,
                detail: format!("{size} bytes, limit {}", self.settings.max_event_bytes),
            })
        } else {
            decode_entry(entry.kind.as_deref(), entry.data.as_deref())
        };
        let event = match decoded {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(id = %entry.id, error = %e, "malformed entry: dead-lettered");
                if self.dead_letter(&entry, &e.to_string()).await {
                    metrics::stream_dead_lettered(kind, e.reason);
                }
                return;
            }
        };
        if let Some(order) = order {
            let started = tokio::time::Instant::now();
            // An entry read at the head of its order's queue skips the round trip.
            if !entry.first_in_order
                && !self
                    .retry(StoreOp::WaitTurn, &entry.id, || {
                        self.stream().wait_turn(order, &entry.id, &self.stop)
                    })
                    .await
            {
                return;
            }
            metrics::order_waited(started.elapsed().as_secs_f64());
        }
        let mut backoff = Duration::from_millis(50);
        let effect = loop {
            match self.dispatcher.handle(&entry.id, &event).await {
                Ok(effect) => break effect,
                Err(e) if e.is_transient() => {
                    metrics::stream_retried(kind);
                    tracing::warn!(id = %entry.id, error = %e, "dispatch failed, retrying");
                    if !self.pause(&mut backoff).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(
                        id = %entry.id,
                        error = %e,
                        "dispatch failed; left pending for redelivery"
                    );
                    self.give_up(&entry.id);
                    return;
                }
            }
        };
        if let Some(order) = order {
            let started = tokio::time::Instant::now();
            if !self
                .retry(StoreOp::Advance, &entry.id, || {
                    self.stream().advance(order, &entry.id)
                })
                .await
            {
                return;
            }
            metrics::stream_stage(StreamStage::Advance, started.elapsed().as_secs_f64());
        }
        match effect {
            Effect::Done => self.complete(&entry.id, kind).await,
            Effect::Refused(reason) => {
                tracing::warn!(id = %entry.id, %reason, "event refused: dead-lettered");
                if self.dead_letter(&entry, &reason.to_string()).await {
                    match reason {
                        Refusal::OrderExists { .. } => metrics::stream_dead_lettered_order_exists(),
                        Refusal::ChatOrderNotActive { .. } => {
                            metrics::stream_dead_lettered_chat_order_not_active()
                        }
                    }
                }
            }
            Effect::Offers(outcomes) => {
                // The order's turn has passed (advanced above); from here the
                // entry only waits for its merchant. It stays held (kept
                // alive, handed back at shutdown) but gives its read slot
                // back, so that open offers never stop the stream. Past the
                // offer bound the read slot is kept: reading stops there.
                let slot = match self.offer_slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => return,
                };
                drop(permit);
                let this = self.clone();
                self.tasks.spawn(async move {
                    if outcomes.await {
                        this.complete(&entry.id, kind).await;
                    } else if !this.stop.is_cancelled() {
                        // An outcome could not be written: redelivered later.
                        this.give_up(&entry.id);
                    }
                    drop(slot);
                });
                return;
            }
        }
        drop(permit);
    }

    /// Copies the entry to the dead letters (which acks it); true once done.
    async fn dead_letter(&self, entry: &StreamEntry, reason: &str) -> bool {
        let done = self
            .retry(StoreOp::DeadLetter, &entry.id, || {
                self.stream().dead_letter(entry, reason)
            })
            .await;
        if done {
            self.release(&entry.id);
        }
        done
    }

    async fn complete(&self, id: &str, kind: &'static str) {
        if self.settings.crash_before_ack.as_deref() == Some(kind) {
            tracing::error!(
                id,
                kind,
                "RELAY_TEST_CRASH_BEFORE_ACK: aborting before the ack"
            );
            std::process::abort();
        }
        let started = tokio::time::Instant::now();
        if self.retry(StoreOp::Ack, id, || self.stream().ack(id)).await {
            metrics::stream_stage(StreamStage::Ack, started.elapsed().as_secs_f64());
            metrics::stream_acked(kind);
            self.release(id);
        }
    }

    /// Retries a store operation on entry `id` while it fails transiently,
    /// until it succeeds (true) or the node stops (false: the entry stays
    /// pending and is handed back). Any other failure would fail the same
    /// way again: the entry is given up (false), left pending for the
    /// claim rounds, which redeliver it after the claim time and
    /// dead-letter it after `RELAY_MAX_DELIVERIES`.
    async fn retry<T, F, Fut>(&self, op: StoreOp, id: &str, mut attempt: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = Duration::from_millis(50);
        loop {
            match attempt().await {
                Ok(_) => return true,
                Err(e) => {
                    if self.stop.is_cancelled() {
                        return false;
                    }
                    metrics::store_error(op);
                    if !e.is_transient() {
                        tracing::error!(op = op.as_str(), id, error = %e, "stream operation failed; entry left pending for redelivery");
                        self.give_up(id);
                        return false;
                    }
                    tracing::warn!(op = op.as_str(), id, error = %e, "stream operation failed, retrying");
                }
            }
            if !self.pause(&mut backoff).await {
                return false;
            }
        }
    }

    /// Stops holding an entry that failed in a way retrying here will not
    /// fix: no longer kept alive, it becomes claimable after the claim time.
    fn give_up(&self, id: &str) {
        self.release(id);
    }

    /// Sleeps with exponential back-off; false when the node is stopping.
    async fn pause(&self, backoff: &mut Duration) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => return false,
            () = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        true
    }

    /// Lets in-progress work finish for a moment, then makes every entry
    /// still held claimable by the other nodes at once.
    async fn drain(&self) {
        self.tasks.close();
        let _ = tokio::time::timeout(self.settings.drain, self.tasks.wait()).await;
        let held = self.held();
        if held.is_empty() {
            return;
        }
        match self.stream().hand_back(&held).await {
            Ok(()) => tracing::info!(count = held.len(), "handed back unfinished entries"),
            Err(e) => tracing::warn!(
                count = held.len(),
                error = %e,
                "could not hand back entries; they will be claimed after the claim time"
            ),
        }
    }
}
