use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde_json::json;

use super::HttpState;
use crate::{engine::Engine, metrics};

/// The process is up and serving HTTP.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready for traffic: store reachable, adapter subscribed, not shutting down.
pub async fn readyz<E: Engine>(State(state): State<HttpState<E>>) -> impl IntoResponse {
    let health = &state.health;
    let ready = health.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "store": health.store_up(),
        "adapter": health.adapter_ready(),
        "consumer": health.consumer_running(),
        "draining": health.draining(),
    });
    (status, Json(body))
}

pub async fn metrics<E: Engine>(State(state): State<HttpState<E>>) -> impl IntoResponse {
    (state.census)();
    metrics::set_health(
        state.health.ready(),
        state.health.store_up(),
        state.health.consumer_running(),
    );
    metrics::record_process_faults();
    let mut text = state.prometheus.render();
    text.push_str(&crate::metrics::process::prometheus_text(state.started_at));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
