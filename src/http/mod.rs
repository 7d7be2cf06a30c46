//! The HTTP surface on the Socket.IO port: probes and metrics (CONTRACT §5).

mod probes;

use std::sync::Arc;

use axum::{Router, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::engine::Health;

/// Refreshes gauges that are counted rather than tracked (connected sockets)
/// right before a scrape.
pub type Census = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
pub struct HttpState {
    pub health: Health,
    pub prometheus: PrometheusHandle,
    pub census: Census,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
        .with_state(state)
}
