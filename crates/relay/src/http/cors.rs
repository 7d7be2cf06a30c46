//! CORS for browser clients on another origin: Socket.IO long-polling and
//! the HTTP API need it (WebSocket does not).

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// The layer for the configured origins; `None` when there are none.
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let methods = [Method::GET, Method::POST, Method::OPTIONS];
    let headers: [HeaderName; 2] = [header::AUTHORIZATION, header::CONTENT_TYPE];
    let cors = CorsLayer::new()
        .allow_methods(methods)
        .allow_headers(headers);
    if origins.iter().any(|o| o == "*") {
        return Some(cors.allow_origin(Any));
    }
    // Origins were checked when the configuration was read.
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    // Named origins may send cookies: sticky sessions for polling often use one.
    Some(
        cors.allow_origin(AllowOrigin::list(list))
            .allow_credentials(true),
    )
}
