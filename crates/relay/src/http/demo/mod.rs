//! The live demo page at `/demo` (`RELAY_DEMO`, off by default): drivers
//! moving on a map, active orders with their status timelines, the chat of
//! the selected order (its history, live messages, who is typing, and the
//! admin's own messages), the admin alert feed and the outcomes of merchant
//! offers, for someone who just ran `make run` and opened a browser.
//!
//! The page is a real Socket.IO client of the relay, through the official
//! browser client (vendored beside it: no CDN, no build step, nothing
//! fetched from the internet). It connects as an admin with a token this
//! module signs (`GET /demo/token`), so anyone who can reach the port while
//! the demo is on is an admin: that is why it is off by default and warned
//! about at start. Live events (`admin:alert`, and `order:status_update`,
//! `order:driver_location`, `chat:message` and `chat:typing` of every order
//! it subscribes to; `chat:history` when an order is selected) animate the
//! page; a bounded snapshot (`GET /demo/state`, see [`snapshot`]) polled
//! every couple of seconds fills in what no socket event carries: idle
//! drivers, stores and drops, offer outcomes, orders from before the page
//! opened.
//!
//! The routes sit outside the request metrics: a page polling every
//! 1.5 s would swamp the dashboards' picture of the real API.

mod snapshot;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use serde_json::json;

use super::{HttpState, errors::ApiError};
use crate::{
    auth::{Role, mint_hs256},
    config::Secret,
    engine::Engine,
    events::now_ms,
};

pub use snapshot::{MAX_DRIVERS, MAX_ORDERS};

/// Long enough for a page to connect and reconnect at leisure (it asks for
/// a fresh token at every connection), short enough that a copied token
/// soon stops working. The relay disconnects a socket whose token expires;
/// the page then connects again with a new one.
const TOKEN_TTL: Duration = Duration::from_secs(10 * 60);

/// Same-origin only, and no inline script or style: every byte the page
/// runs is one of the embedded files below.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const DEMO_JS: &str = include_str!("assets/demo.js");
const DEMO_CSS: &str = include_str!("assets/demo.css");
/// socket.io-client 4.8.1 (MIT, see assets/socket.io.LICENSE), the
/// official browser build, without its source map comment.
const SOCKET_IO_JS: &str = include_str!("assets/socket.io.min.js");

/// What the demo routes need from the configuration.
#[derive(Debug)]
pub struct DemoSettings {
    /// The HS256 secret clients' tokens are checked with (required by the
    /// configuration when the demo is on).
    pub secret: Secret,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub node_id: String,
    pub engine: &'static str,
    /// Numbers the minted tokens' subjects: every page is a user of its
    /// own, so many open tabs never reach the per-user connection limit.
    minted: AtomicU64,
}

impl DemoSettings {
    pub fn new(
        secret: Secret,
        issuer: Option<String>,
        audience: Option<String>,
        node_id: String,
        engine: &'static str,
    ) -> Self {
        Self {
            secret,
            issuer,
            audience,
            node_id,
            engine,
            minted: AtomicU64::new(0),
        }
    }
}

/// The routes of the demo, mounted only when `RELAY_DEMO` is on (else
/// `/demo` is a plain 404).
pub fn routes<E: Engine>() -> Router<HttpState<E>> {
    tracing::warn!(
        "RELAY_DEMO is on: /demo hands an admin token to anyone who can reach this port; \
         never enable it on a network you do not trust"
    );
    Router::new()
        .route("/demo", get(page))
        .route("/demo/", get(|| async { Redirect::permanent("/demo") }))
        .route("/demo/demo.js", get(script))
        .route("/demo/demo.css", get(style))
        .route("/demo/socket.io.min.js", get(socket_io))
        .route("/demo/token", get(token::<E>))
        .route("/demo/state", get(state::<E>))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Embedded in the binary: a new binary may bring new files.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    let mut response = asset("text/html; charset=utf-8", INDEX_HTML);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", DEMO_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", DEMO_CSS)
}

async fn socket_io() -> Response {
    asset("text/javascript; charset=utf-8", SOCKET_IO_JS)
}

/// Tokens and state go to the page's own origin only. A page of another
/// site cannot read them even when `RELAY_CORS_ORIGINS` lets it read the
/// relay's responses: browsers say where a request comes from, in
/// `Sec-Fetch-Site` (every current browser), else in `Origin` (older ones,
/// which send it on cross-origin requests). Tools without a browser (curl)
/// are not stopped; they are who the startup warning is about.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let forbidden = || ApiError::new(StatusCode::FORBIDDEN, "the demo answers its own page only");
    let value = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = value("sec-fetch-site") {
        // `none`: typed into the address bar.
        return if site == "same-origin" || site == "none" {
            Ok(())
        } else {
            Err(forbidden())
        };
    }
    let Some(origin) = value(header::ORIGIN.as_str()) else {
        return Ok(());
    };
    let origin_host = origin.split_once("://").map_or("", |(_, host)| host);
    let host = value(header::HOST.as_str()).unwrap_or_default();
    // A proxy may pass the Host without the port (nginx's `$host`).
    let same = !host.is_empty()
        && (origin_host.eq_ignore_ascii_case(host)
            || (!host.contains(':')
                && origin_host
                    .rsplit_once(':')
                    .is_some_and(|(name, _)| name.eq_ignore_ascii_case(host))));
    if same { Ok(()) } else { Err(forbidden()) }
}

fn demo<E: Engine>(state: &HttpState<E>) -> Result<&DemoSettings, ApiError> {
    state
        .demo
        .as_deref()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "the demo is off"))
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A short-lived admin token for the page's Socket.IO connection, with
/// the node and engine that signed it (shown as the connection's node).
async fn token<E: Engine>(
    State(state): State<HttpState<E>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let demo = demo(&state)?;
    same_origin(&headers)?;
    let n = demo.minted.fetch_add(1, Ordering::Relaxed);
    let sub = format!("demo-{}-{n}", demo.node_id);
    let token = mint_hs256(
        &demo.secret,
        &sub,
        Role::Admin,
        &[],
        TOKEN_TTL,
        demo.issuer.as_deref(),
        demo.audience.as_deref(),
    )
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(no_store(
        Json(json!({
            "token": token,
            "expires_in_s": TOKEN_TTL.as_secs(),
            "node": demo.node_id,
            "engine": demo.engine,
        }))
        .into_response(),
    ))
}

/// The snapshot the page polls; 503 while the store does not answer.
async fn state<E: Engine>(
    State(state): State<HttpState<E>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let demo = demo(&state)?;
    same_origin(&headers)?;
    let snapshot = snapshot::take(state.engine.as_ref(), now_ms()).await?;
    let mut body = serde_json::to_value(snapshot)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    body["node"] = json!(demo.node_id);
    body["engine"] = json!(demo.engine);
    Ok(no_store(Json(body).into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn only_the_pages_own_origin_gets_a_token() {
        for ok in [
            headers(&[]),
            headers(&[
                ("host", "127.0.0.1:3000"),
                ("sec-fetch-site", "same-origin"),
            ]),
            headers(&[("host", "127.0.0.1:3000"), ("sec-fetch-site", "none")]),
            headers(&[
                ("host", "localhost:3000"),
                ("origin", "http://LOCALHOST:3000"),
            ]),
            // Behind a proxy that drops the port from Host.
            headers(&[("host", "127.0.0.1"), ("origin", "http://127.0.0.1:3000")]),
            // The browser's own word wins over a rewritten Host.
            headers(&[
                ("host", "relay-internal"),
                ("sec-fetch-site", "same-origin"),
                ("origin", "http://demo.example"),
            ]),
        ] {
            assert!(same_origin(&ok).is_ok(), "{ok:?}");
        }
        for refused in [
            headers(&[("host", "127.0.0.1:3000"), ("sec-fetch-site", "cross-site")]),
            headers(&[("host", "127.0.0.1:3000"), ("sec-fetch-site", "same-site")]),
            headers(&[
                ("host", "127.0.0.1:3000"),
                ("origin", "http://evil.example"),
            ]),
            headers(&[
                ("host", "127.0.0.1:3000"),
                ("origin", "http://127.0.0.1:3001"),
            ]),
            headers(&[("origin", "http://127.0.0.1:3000")]),
            headers(&[("host", "127.0.0.1:3000"), ("origin", "null")]),
            headers(&[
                ("host", "127.0.0.1"),
                ("origin", "http://evil.example:3000"),
            ]),
        ] {
            assert!(same_origin(&refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("demo.js", DEMO_JS),
            ("demo.css", DEMO_CSS),
        ] {
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{name}"
            );
            assert!(
                !text.contains("//cdn") && !text.contains("@import"),
                "{name}"
            );
        }
        assert!(SOCKET_IO_JS.starts_with("/*!\n * Socket.IO v4.8.1"));
        assert!(!SOCKET_IO_JS.contains("sourceMappingURL"));
    }
}
