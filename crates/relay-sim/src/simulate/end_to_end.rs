//! `relay-sim simulate` end to end: a small, fast city against one embedded
//! node, through the public interface only (Socket.IO clients and the HTTP
//! API). Real things must happen: orders delivered, locations accepted and
//! fanned out, offers acked, customers and drivers chatting, bad input
//! refused and counted.

use std::time::Duration;

use clap::Parser;
use relay::{
    config::{Config, Secret, ServeArgs},
    server::{self, Prepared, RunningNode},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{SimulateArgs, Simulation, Summary};

const SECRET: &str = "simulate-secret";
const API_KEY: &str = "simulate-api-key";

/// A whole order takes about half an hour of city time: at x200, 9 s.
const SPEED: f64 = 200.0;
const BOUND: Duration = Duration::from_secs(30);
const GRACE_MS: &str = "500";

/// Polls the simulation's counters until `done` holds, within [`BOUND`].
async fn until(simulation: &Simulation, what: &str, done: impl Fn(&Summary) -> bool) {
    let deadline = Instant::now() + BOUND;
    loop {
        let summary = simulation.summary();
        if done(&summary) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {BOUND:?}: {summary}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_city_delivers_orders_through_an_embedded_node() {
    let node = embedded_node().await;
    let url = format!("http://{}", node.addr());
    let mut args = SimulateArgs::new(vec![url.clone()], Secret::new(API_KEY), Secret::new(SECRET));
    args.drivers = 8;
    args.stores = 2;
    args.customers = 8;
    args.orders_per_minute = 60.0;
    args.speed = SPEED;
    args.glitch_every = Duration::from_secs(2);
    args.status_every = Duration::ZERO;
    // Tablets go away every couple of seconds; the node's grace is short.
    args.store_breaks_every = Duration::from_secs(2);
    args.presence_grace_ms = GRACE_MS.parse().expect("grace");
    let stop = CancellationToken::new();
    let simulation = Simulation::start(args, stop.clone())
        .await
        .expect("the simulation starts");

    until(&simulation, "delivered order", |s| s.orders_delivered >= 1).await;
    until(&simulation, "store back after a break", |s| {
        // Each store comes online once, then once more per return.
        s.stores_offline_seen >= 1 && s.stores_online_seen > s.stores_offline_seen
    })
    .await;
    until(&simulation, "chat between a customer and a driver", |s| {
        s.chat_sent >= 2 && s.chat_received >= 1 && s.typing_received >= 1
    })
    .await;
    until(&simulation, "refused bad input", |s| {
        s.glitches >= 2 && s.locations_refused >= 1
    })
    .await;
    stop.cancel();
    let summary = simulation.finish().await;

    assert_eq!(summary.errors, 0, "{summary}");
    assert!(summary.store_breaks >= 1, "{summary}");
    assert_eq!(summary.presence_repeats, 0, "{summary}");
    assert_eq!(summary.chat_refused, 0, "{summary}");
    assert!(summary.locations_accepted > 0, "{summary}");
    assert!(
        summary.driver_locations_received > 0,
        "customers saw riders move: {summary}"
    );
    assert!(summary.events_received > summary.orders_placed, "{summary}");
    assert_eq!(
        summary.orders_active(),
        summary.cancelled_at_stop,
        "{summary}"
    );
    // The node counted the same things from its side.
    let series = [
        r#"relay_location_updates_total{outcome="accepted"}"#,
        r#"relay_location_rejected_total{reason="out_of_range"}"#,
        r#"relay_ack_outcomes_total{event="merchant:new_order",outcome="acked"}"#,
        r#"relay_ack_outcomes_total{event="delivery:new_request",outcome="acked"}"#,
        r#"relay_emits_total{event="order:driver_location"}"#,
        r#"relay_events_published_total{type="order.assigned"}"#,
        r#"relay_client_events_total{event="driver:location_update",outcome="ok"}"#,
        r#"relay_presence_changes_total{kind="store",online="false"}"#,
        r#"relay_chat_messages_total{outcome="sent"}"#,
        r#"relay_emits_total{event="chat:message"}"#,
        r#"relay_client_events_total{event="chat:typing",outcome="ok"}"#,
    ];
    for series in series {
        assert!(metric(&url, series).await > 0.0, "{series} is 0");
    }
    assert!(
        metric(&url, r#"relay_events_published_total{type="order.status"}"#).await
            >= summary.orders_delivered as f64 * 5.0,
        "accepted, preparing, driver_assigned, picked_up, delivered per delivered order"
    );
    node.stop().await.expect("the node stops");
}

/// Two nodes over one real Redis, the simulation's clients spread over
/// both: the backend reads `{prefix}chat` and `{prefix}presence` as a
/// production backend would, and finds every accepted chat message there
/// exactly once and every presence change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_city_on_two_nodes_finds_every_chat_message_once_in_the_chat_stream() {
    let redis = RedisServer::start().await;
    let prefix = "simchat:";
    let url = redis.url();
    let settings = ["--redis-url", &url, "--key-prefix", prefix];
    let nodes = [node(&settings).await, node(&settings).await];
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("http://{}", n.addr()))
        .collect();
    let mut args = SimulateArgs::new(urls.clone(), Secret::new(API_KEY), Secret::new(SECRET));
    args.drivers = 8;
    args.stores = 2;
    args.customers = 8;
    args.orders_per_minute = 60.0;
    args.speed = SPEED;
    args.status_every = Duration::ZERO;
    args.store_breaks_every = Duration::from_secs(2);
    args.presence_grace_ms = GRACE_MS.parse().expect("grace");
    args.redis_url = Some(Secret::new(url.clone()));
    args.key_prefix = prefix.to_owned();
    let stop = CancellationToken::new();
    let simulation = Simulation::start(args, stop.clone())
        .await
        .expect("the simulation starts");

    until(&simulation, "chat messages in {prefix}chat", |s| {
        s.chat_logged >= 3 && s.chat_received >= 1
    })
    .await;
    until(
        &simulation,
        "a store offline and back in {prefix}presence",
        |s| s.stores_offline_seen >= 1 && s.stores_online_seen > s.stores_offline_seen,
    )
    .await;
    stop.cancel();
    let summary = simulation.finish().await;
    assert_eq!(summary.errors, 0, "{summary}");
    assert_eq!(summary.chat_refused, 0, "{summary}");
    assert_eq!(summary.chat_log_repeats, 0, "{summary}");
    assert_eq!(summary.chat_log_missing, 0, "{summary}");
    assert_eq!(summary.presence_repeats, 0, "{summary}");
    for node in nodes {
        node.stop().await.expect("the node stops");
    }
}

/// A throwaway redis-server on a free port, killed on drop.
struct RedisServer {
    port: u16,
    _child: tokio::process::Child,
}

impl RedisServer {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (Debian package redis-server)");
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
        let deadline = Instant::now() + BOUND;
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            port,
            _child: child,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

#[derive(Parser)]
struct NodeArgs {
    #[command(flatten)]
    serve: ServeArgs,
}

/// One embedded node (no Redis) in this process, ready for clients.
async fn embedded_node() -> RunningNode {
    node(&[]).await
}

/// One node in this process with `extra` settings, ready for clients.
async fn node(extra: &[&str]) -> RunningNode {
    let mut argv = vec![
        "relay",
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--addr",
        "127.0.0.1:0",
        "--presence-grace-ms",
        GRACE_MS,
    ];
    argv.extend_from_slice(extra);
    let args = NodeArgs::try_parse_from(argv).expect("settings").serve;
    let prepared = Prepared::new(Config::from_args(args).expect("config")).expect("prepared");
    let node = server::start(prepared).await.expect("start node");
    let ready = format!("http://{}/readyz", node.addr());
    let deadline = Instant::now() + BOUND;
    while reqwest::get(&ready).await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "{ready} not ready within {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node
}

/// One series of the node's `/metrics`, 0 when it is not there.
async fn metric(url: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
