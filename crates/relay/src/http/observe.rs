//! Counts every HTTP request by matched route and status, and times it.

use axum::{
    extract::{MatchedPath, Request},
    http::StatusCode,
    middleware::Next,
    response::Response,
};
use tokio::time::Instant;

use crate::metrics;

pub async fn count_requests(request: Request, next: Next) -> Response {
    // The route template, never the raw path: label values stay bounded.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |path| metrics::http_route(path.as_str()));
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::http_request(
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Paths that match no route (scanners, typos, old clients) are counted too,
/// under the one bounded label `other`.
pub async fn not_found() -> StatusCode {
    metrics::http_unmatched();
    StatusCode::NOT_FOUND
}
