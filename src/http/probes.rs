use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde_json::json;

use super::HttpState;
use crate::metrics;

/// The process is up and serving HTTP.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready for traffic: store reachable, adapter subscribed, not shutting down.
pub async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
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
        "draining": health.draining(),
    });
    (status, Json(body))
}

pub async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (state.census)();
    metrics::set_health(state.health.ready(), state.health.store_up());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.prometheus.render(),
    )
}
