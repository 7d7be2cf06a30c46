//! The high-volume path: drivers' location updates, checked, rate limited,
//! cached in batches and fanned out to their orders.

mod fanout;
mod throttle;
mod writer;

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

pub use fanout::{Delivery, DriverLocationEvent, deliver};
pub use throttle::DriverThrottle;

use crate::tasks::{Tasks, names};
use crate::{
    engine::{DriverLocation, Engine},
    events::{LocationUpdate, Reject, now_ms},
    rooms::Room,
};

/// Updates queued for the cache before new ones are dropped (and counted):
/// a few seconds of a city's traffic.
const QUEUE: usize = 65_536;

/// What the socket handlers call: admission and the cache queue.
pub struct LocationPipeline {
    throttle: Arc<DriverThrottle>,
    writes: mpsc::Sender<Queued>,
}

/// An accepted update on its way to the cache and to the other nodes.
pub struct Queued {
    driver: String,
    location: DriverLocation,
    deliveries: Arc<[Delivery]>,
}

impl LocationPipeline {
    /// Starts the cache writer and pruner on `engine`, as `tasks`.
    pub fn start<E: Engine>(
        engine: Arc<E>,
        node_id: String,
        min_interval: Duration,
        ttl: Duration,
        stop: CancellationToken,
        tasks: &Tasks,
    ) -> Self {
        let (writes, queued) = mpsc::channel(QUEUE);
        let throttle = Arc::new(DriverThrottle::new(min_interval));
        let writer = writer::run(engine.clone(), node_id, queued, stop.clone());
        // Not restarted: it owns the queue's only receiver.
        tasks.spawn(names::LOCATION_CACHE_WRITER, writer);
        tasks.spawn_restarting(names::LOCATION_PRUNE, {
            let throttle = throttle.clone();
            move || writer::prune(engine.clone(), throttle.clone(), ttl, stop.clone())
        });
        Self { throttle, writes }
    }

    /// Accepts an update of `driver` for its order rooms (`order_{id}`, as
    /// this node sees them) or says why not. An accepted update is stamped
    /// and queued for the cache and the other nodes; the deliveries returned
    /// are for this node's own sockets.
    pub fn accept(
        &self,
        driver: &str,
        update: LocationUpdate,
        order_rooms: impl IntoIterator<Item = String>,
    ) -> Result<Arc<[Delivery]>, Reject> {
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
        let except = Room::Driver(driver.to_owned()).name();
        let deliveries: Arc<[Delivery]> = order_rooms
            .into_iter()
            .filter_map(|room| {
                let order_id = room.strip_prefix(Room::ORDER_PREFIX)?.to_owned();
                Some(Delivery {
                    event: DriverLocationEvent::new(&order_id, &location),
                    room,
                    except: except.clone(),
                })
            })
            .collect();
        // Never wait on the hot path: a full queue means Redis cannot keep
        // up, and a dropped update is replaced by the next one.
        self.writes
            .try_send(Queued {
                driver: driver.to_owned(),
                location,
                deliveries: deliveries.clone(),
            })
            .map_err(|_| Reject::Backpressure)?;
        Ok(deliveries)
    }
}
