//! Batches location writes: updates queue here and go to the cache in one
//! pipeline per batch, flushed by size or after a few milliseconds, so an
//! update costs a small fraction of a Redis round trip.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Queued, fanout, throttle::DriverThrottle};
use crate::{
    engine::{DriverLocation, Engine, LocationCache, RoomChannels},
    events::now_ms,
    metrics::{self, StoreOp},
};

/// Largest batch written in one pipeline.
const MAX_BATCH: usize = 512;
/// Longest a queued update waits for others to share its round trip.
const FLUSH_AFTER: Duration = Duration::from_millis(2);
/// How often expired drivers leave the geo index: within half a TTL, at
/// most every 10 s.
fn prune_every(ttl: Duration) -> Duration {
    (ttl / 2).clamp(Duration::from_millis(500), Duration::from_secs(10))
}

pub type Writes = mpsc::Receiver<Queued>;

pub async fn run<E: Engine>(
    engine: Arc<E>,
    node_id: String,
    mut writes: Writes,
    stop: CancellationToken,
) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    let mut batch: HashMap<String, DriverLocation> = HashMap::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            n = writes.recv_many(&mut buf, MAX_BATCH) => n,
        };
        if received == 0 {
            return;
        }
        // A small batch waits a moment for company; a full one goes at once.
        if buf.len() < MAX_BATCH {
            let deadline = tokio::time::Instant::now() + FLUSH_AFTER;
            while buf.len() < MAX_BATCH {
                let room = MAX_BATCH - buf.len();
                let more =
                    tokio::time::timeout_at(deadline, writes.recv_many(&mut buf, room)).await;
                match more {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        }
        // Every delivery goes to its room's channel; only each driver's
        // latest location goes to the cache.
        let routed: Vec<(String, Vec<u8>)> = buf
            .iter()
            .flat_map(|q| q.deliveries.iter().map(|d| fanout::routed(&node_id, d)))
            .collect();
        for Queued {
            driver, location, ..
        } in buf.drain(..)
        {
            batch.insert(driver, location);
        }
        let flush: Vec<(String, DriverLocation)> = batch.drain().collect();
        let started = tokio::time::Instant::now();
        // Both at once: the other nodes' customers should not wait for the cache.
        let (cached, published) = tokio::join!(
            engine.locations().write(&flush),
            engine.rooms().publish(routed)
        );
        if let Err(e) = published {
            // Volatile like every location: the driver's next update follows.
            metrics::store_error(StoreOp::LocationWrite);
            tracing::debug!(error = %e, "location deliveries not published");
        }
        match cached {
            Ok(()) => {
                metrics::location_flush(flush.len(), started.elapsed().as_secs_f64());
            }
            Err(e) => {
                // Locations are ephemeral: the next update replaces this batch.
                metrics::store_error(StoreOp::LocationWrite);
                if e.is_transient() {
                    tracing::warn!(error = %e, drivers = flush.len(), "location batch not cached");
                } else {
                    tracing::error!(error = %e, drivers = flush.len(), "location batch not cached");
                }
            }
        }
    }
}

/// Drops expired drivers from the geo index and idle drivers from the
/// throttle, on every node (both are idempotent).
pub async fn prune<E: Engine>(
    engine: Arc<E>,
    throttle: Arc<DriverThrottle>,
    ttl: Duration,
    stop: CancellationToken,
) {
    let mut interval = tokio::time::interval(prune_every(ttl));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let cutoff = now_ms().saturating_sub(ttl.as_millis() as u64);
        match engine.locations().prune(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(drivers = n, "expired drivers left the geo index"),
            Err(e) => {
                metrics::store_error(StoreOp::LocationPrune);
                tracing::debug!(error = %e, "pruning the geo index failed");
            }
        }
        throttle.forget_idle(
            tokio::time::Instant::now(),
            ttl.max(Duration::from_secs(60)),
        );
    }
}
