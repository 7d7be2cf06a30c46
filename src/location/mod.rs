//! The high-volume path: drivers' location updates, checked, rate limited,
//! cached in batches and fanned out to their orders.

mod limits;
mod update;
mod writer;

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

pub use limits::{DriverThrottle, EventBudget};
pub use update::{LocationUpdate, Reject};

use crate::{
    engine::{DriverLocation, Engine},
    events::now_ms,
};

/// Updates queued for the cache before new ones are dropped (and counted):
/// a few seconds of a city's traffic.
const QUEUE: usize = 65_536;

/// What the socket handlers call: admission and the cache queue.
pub struct LocationPipeline {
    throttle: Arc<DriverThrottle>,
    writes: mpsc::Sender<(String, DriverLocation)>,
}

impl LocationPipeline {
    /// Starts the cache writer and pruner on `engine`.
    pub fn start<E: Engine>(
        engine: Arc<E>,
        min_interval: Duration,
        ttl: Duration,
        stop: CancellationToken,
    ) -> Self {
        let (writes, queued) = mpsc::channel(QUEUE);
        let throttle = Arc::new(DriverThrottle::new(min_interval));
        tokio::spawn(writer::run(engine.clone(), queued, stop.clone()));
        tokio::spawn(writer::prune(engine, throttle.clone(), ttl, stop));
        Self { throttle, writes }
    }

    /// Accepts an update of `driver` or says why not; an accepted update is
    /// stamped and queued for the cache.
    pub fn accept(&self, driver: &str, update: LocationUpdate) -> Result<DriverLocation, Reject> {
        if !self.throttle.admit(driver, Instant::now()) {
            return Err(Reject::TooFrequent);
        }
        let location = DriverLocation {
            lat: update.lat,
            lng: update.lng,
            heading: update.heading,
            speed: update.speed,
            ts: now_ms(),
        };
        // Never wait on the hot path: a full queue means Redis cannot keep
        // up, and a dropped cache write is replaced by the next update.
        self.writes
            .try_send((driver.to_owned(), location))
            .map_err(|_| Reject::Backpressure)?;
        Ok(location)
    }
}
