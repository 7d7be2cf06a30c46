//! Real parts for the integration tests: a redis-server child process, relay
//! nodes as child processes or in this process, tokens and HTTP helpers.

pub mod backend;
pub mod client;
pub mod cluster;
pub mod fault_proxy;
pub mod node;
pub mod redis_cluster;
pub mod redis_server;

use std::{path::Path, time::Duration};

use relay::auth::{Role, mint_hs256};
use relay::config::Secret;

pub use backend::{Backend, Kind, TestConnection};
pub use client::{ask, refusal, resume, until_status, until_statuses, until_sync_done};
pub use cluster::{API_KEY, Cluster, connect, connect_with, expect_event};
pub use node::{InProcessNode, NodeProcess};
pub use redis_cluster::RedisCluster;
pub use redis_server::{RedisServer, TestCerts, TlsRedisServer};

pub const SECRET: &str = "integration-secret";
/// Upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits to be sure something does NOT arrive.
pub const QUIET: Duration = Duration::from_millis(300);

/// The repository's top folder (scripts/, interop/, docs/ are there).
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

pub fn token(sub: &str, role: Role) -> String {
    mint_hs256(
        &Secret::new(SECRET),
        sub,
        role,
        &[],
        Duration::from_secs(600),
        None,
        None,
    )
    .expect("mint token")
}

pub fn merchant_token(sub: &str, stores: &[&str]) -> String {
    let stores: Vec<String> = stores.iter().map(|s| (*s).to_owned()).collect();
    mint_hs256(
        &Secret::new(SECRET),
        sub,
        Role::Merchant,
        &stores,
        Duration::from_secs(600),
        None,
        None,
    )
    .expect("mint token")
}

/// A free loopback port (the small race until the node binds it is accepted).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A key prefix of its own per test, so tests sharing a Redis never meet.
pub fn unique_prefix(test: &str) -> String {
    format!("t{}:{test}:", std::process::id())
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("http client")
}

/// `POST /api/events` of a node with [`API_KEY`], the way a backend
/// publishes without Redis: `body` is `{ "type", "data" }`.
pub async fn post_event(url: &str, body: &serde_json::Value) -> reqwest::Response {
    http()
        .post(format!("{url}/api/events"))
        .bearer_auth(API_KEY)
        .json(body)
        .send()
        .await
        .expect("POST /api/events")
}

/// Publishes an event of type `kind` through the API (202 expected) and
/// returns its `event_id`.
pub async fn publish(url: &str, kind: &str, data: serde_json::Value) -> String {
    let response = post_event(url, &serde_json::json!({ "type": kind, "data": data })).await;
    assert_eq!(response.status(), 202, "POST /api/events {kind}");
    let body: serde_json::Value = response.json().await.expect("json");
    body["event_id"].as_str().expect("event_id").to_owned()
}

/// Polls `url` until it answers `status`, within [`WAIT`].
pub async fn wait_for_status(url: &str, status: u16) {
    let client = http();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = client
            .get(url)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok();
        if got == Some(status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} did not answer {status} within {WAIT:?} (last: {got:?})"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of one series (`name{labels}`, as exposed) in a node's scrape;
/// 0 when absent.
pub async fn metric(url: &str, series: &str) -> f64 {
    scrape(url)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A node's `/metrics` text.
pub async fn scrape(url: &str) -> String {
    http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}
