//! The two engines behind one seam: Redis (shared by every node) and memory
//! (embedded single-node mode). The gateway and everything above it are
//! generic over [`Engine`], never branching on which one runs.

mod error;
pub mod memory;
pub mod redis;
mod routed;
mod traits;

pub use error::{EngineError, StoreError, StoreResult, log_redis_failure, redis_failure};
pub use routed::{MalformedRouted, Routed};
pub use traits::{
    Assignment, CHAT_TTL_ACTIVE, CHAT_TTL_AFTER_END, ChatAppend, ChatLog, ChatParties, ChatRecord,
    Claimed, Created, DeadLetter, DriverLocation, EventStream, History, IDEMPOTENCY_TTL,
    KeyedAppend, LocationCache, Missed, OfferState, OrderStore, OrderWrite, PresenceStore,
    PresenceSweep, PresenceWrite, Recorded, RoomChannels, RoomFeed, StreamEntry, StreamStats,
    UserSessions, WATCH_TTL, WatchedOrders, cmp_offsets, entry_size, in_offset_order, merge_rooms,
};

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use socketioxide::adapter::{Adapter, Emitter};
use socketioxide_core::adapter::CoreAdapter;
use socketioxide_core::adapter::DefinedAdapter;
use tokio_util::sync::CancellationToken;

/// State handed to socketioxide to build the adapter of each namespace.
pub type AdapterState<E> = <<E as Engine>::Adapter as CoreAdapter<Emitter>>::State;
/// What the adapter's namespace initialisation returns.
pub type AdapterInit<E> = <<E as Engine>::Adapter as CoreAdapter<Emitter>>::InitRes;

pub trait Engine: Send + Sync + 'static {
    type Adapter: Adapter + DefinedAdapter;
    type Stream: EventStream;
    type Orders: OrderStore;
    type Locations: LocationCache;
    type History: History;
    type Presence: PresenceStore;
    type Rooms: RoomChannels;
    type Watches: WatchedOrders;
    type Chat: ChatLog;

    /// Short name for logs and metrics: `redis` or `memory`.
    fn name(&self) -> &'static str;

    fn adapter_state(&self) -> AdapterState<Self>;

    fn stream(&self) -> &Self::Stream;
    fn orders(&self) -> &Self::Orders;
    fn locations(&self) -> &Self::Locations;
    fn history(&self) -> &Self::History;
    fn presence(&self) -> &Self::Presence;
    fn rooms(&self) -> &Self::Rooms;
    fn watches(&self) -> &Self::Watches;
    fn chat(&self) -> &Self::Chat;

    /// Completes a namespace's adapter initialisation (for Redis: the
    /// pub/sub subscriptions). Errors are retried by the caller.
    fn finish_init(init: AdapterInit<Self>)
    -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Each user's sockets counted across nodes, when the engine is shared
    /// (`instance` names this node's process). `None`: this node is the
    /// whole cluster, and its own count is the count.
    fn user_sessions(&self, instance: &str) -> Option<Arc<dyn UserSessions>> {
        let _ = instance;
        None
    }

    /// Watches the backing store until `shutdown`, keeping `health` current.
    fn watch_health(
        &self,
        health: Health,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send;
}

/// What `/readyz` is made of. Each part is set by the component that owns it.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<HealthInner>);

#[derive(Debug, Default)]
struct HealthInner {
    store_up: AtomicBool,
    adapter_ready: AtomicBool,
    consumer_running: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    pub fn set_store_up(&self, up: bool) {
        self.0.store_up.store(up, Ordering::Relaxed);
    }

    pub fn set_adapter_ready(&self) {
        self.0.adapter_ready.store(true, Ordering::Relaxed);
    }

    pub fn set_consumer_running(&self, running: bool) {
        self.0.consumer_running.store(running, Ordering::Relaxed);
    }

    pub fn consumer_running(&self) -> bool {
        self.0.consumer_running.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self) {
        self.0.draining.store(true, Ordering::Relaxed);
    }

    pub fn store_up(&self) -> bool {
        self.0.store_up.load(Ordering::Relaxed)
    }

    pub fn adapter_ready(&self) -> bool {
        self.0.adapter_ready.load(Ordering::Relaxed)
    }

    pub fn draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }

    pub fn ready(&self) -> bool {
        self.store_up() && self.adapter_ready() && self.consumer_running() && !self.draining()
    }
}
