//! The memory engine: embedded single-node mode, for trying the relay out
//! and for development. Nothing leaves the process.

mod chat;
mod history;
mod locations;
mod order_store;
mod presence;
mod rooms;
mod stream;
mod watches;

use std::time::Duration;

use socketioxide::adapter::LocalAdapter;
use tokio_util::sync::CancellationToken;

pub use chat::MemoryChat;
pub use history::MemoryHistory;
pub use locations::{MemoryLocations, distance_m};
pub use order_store::MemoryOrders;
pub use presence::MemoryPresence;
pub use rooms::MemoryRooms;
pub use stream::MemoryStream;
pub use watches::MemoryWatches;

use super::{Engine, EngineError, Health};

pub struct MemoryEngine {
    stream: MemoryStream,
    orders: MemoryOrders,
    locations: MemoryLocations,
    history: MemoryHistory,
    presence: MemoryPresence,
    rooms: MemoryRooms,
    watches: MemoryWatches,
    chat: MemoryChat,
}

impl MemoryEngine {
    pub fn new(
        node_id: &str,
        location_ttl: Duration,
        history_size: usize,
        history_ttl: Duration,
    ) -> Self {
        let rooms = MemoryRooms::default();
        Self {
            history: MemoryHistory::new(history_size, history_ttl, rooms.clone()),
            rooms,
            stream: MemoryStream::new(node_id),
            orders: MemoryOrders::default(),
            locations: MemoryLocations::new(location_ttl),
            presence: MemoryPresence::default(),
            watches: MemoryWatches::default(),
            chat: MemoryChat::default(),
        }
    }
}

impl Engine for MemoryEngine {
    type Adapter = LocalAdapter;
    type Stream = MemoryStream;
    type Orders = MemoryOrders;
    type Locations = MemoryLocations;
    type History = MemoryHistory;
    type Presence = MemoryPresence;
    type Rooms = MemoryRooms;
    type Watches = MemoryWatches;
    type Chat = MemoryChat;

    fn name(&self) -> &'static str {
        "memory"
    }

    fn adapter_state(&self) {}

    fn stream(&self) -> &MemoryStream {
        &self.stream
    }

    fn orders(&self) -> &MemoryOrders {
        &self.orders
    }

    fn locations(&self) -> &MemoryLocations {
        &self.locations
    }

    fn history(&self) -> &MemoryHistory {
        &self.history
    }

    fn presence(&self) -> &MemoryPresence {
        &self.presence
    }

    fn rooms(&self) -> &MemoryRooms {
        &self.rooms
    }

    fn watches(&self) -> &MemoryWatches {
        &self.watches
    }

    fn chat(&self) -> &MemoryChat {
        &self.chat
    }

    async fn finish_init((): ()) -> Result<(), EngineError> {
        Ok(())
    }

    async fn watch_health(&self, health: Health, shutdown: CancellationToken) {
        health.set_store_up(true);
        crate::metrics::set_cluster_nodes(1);
        shutdown.cancelled().await;
    }
}
