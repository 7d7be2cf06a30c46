//! The HTTP surface on the Socket.IO port (CONTRACT §5): probes, metrics,
//! the resync endpoint for clients and the publish API for backends; and,
//! when `RELAY_DEMO` is on, the live demo page.

mod active_orders;
mod api;
pub mod cors;
pub mod demo;
mod detach;
mod errors;
mod idempotency;
mod observe;
mod presence;
mod probes;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::{
    auth::Verifier,
    config::Secret,
    engine::{Engine, Health},
};

pub use detach::detach_from_read_buffer;
/// The presence query parser, public for the fuzz target in `fuzz/`.
#[doc(hidden)]
pub use presence::{MAX_ID_BYTES, MAX_IDS, QueryError, presence_query};

/// Refreshes gauges that are counted rather than tracked (connected sockets)
/// right before a scrape.
pub type Census = Arc<dyn Fn() + Send + Sync>;

/// Smallest limit of a request body: an order with a long item list fits easily.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// Bodies are read up to twice the event limit: the event's size is checked
/// on `data` as appended, which may be shorter than the body (escapes,
/// whitespace); anything beyond is refused (413) unread.
fn body_limit(max_event_bytes: usize) -> usize {
    MAX_BODY_BYTES.max(max_event_bytes.saturating_mul(2))
}

pub struct HttpState<E: Engine> {
    pub health: Health,
    pub prometheus: PrometheusHandle,
    pub census: Census,
    pub engine: Arc<E>,
    pub verifier: Arc<Verifier>,
    pub api_key: Option<Secret>,
    /// `RELAY_MAX_EVENT_BYTES`: larger published events get 413.
    pub max_event_bytes: usize,
    /// Unix seconds at start, for `process_start_time_seconds`.
    pub started_at: f64,
    /// Set when `RELAY_DEMO` is on.
    pub demo: Option<Arc<demo::DemoSettings>>,
}

impl<E: Engine> Clone for HttpState<E> {
    fn clone(&self) -> Self {
        Self {
            health: self.health.clone(),
            prometheus: self.prometheus.clone(),
            census: self.census.clone(),
            engine: self.engine.clone(),
            verifier: self.verifier.clone(),
            api_key: self.api_key.clone(),
            max_event_bytes: self.max_event_bytes,
            started_at: self.started_at,
            demo: self.demo.clone(),
        }
    }
}

pub fn router<E: Engine>(state: HttpState<E>) -> Router {
    let router = Router::new()
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz::<E>))
        .route("/metrics", get(probes::metrics::<E>))
        .route("/orders/active", get(active_orders::active::<E>))
        .route("/api/events", post(api::publish::<E>))
        .route("/api/outcomes", get(api::outcomes::<E>))
        .route("/api/dead-letters", get(api::dead_letters::<E>))
        .route("/api/presence", get(presence::presence::<E>))
        .layer(DefaultBodyLimit::max(body_limit(state.max_event_bytes)))
        .route_layer(axum::middleware::from_fn(observe::count_requests));
    // Merged after the counting layer: the demo stays out of the API's metrics.
    let router = match state.demo {
        Some(_) => router.merge(demo::routes::<E>()),
        None => router,
    };
    router.fallback(observe::not_found).with_state(state)
}
