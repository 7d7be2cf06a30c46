//! Probes, metrics, start without Redis, and graceful shutdown.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use relay::auth::Role;
use relay_client::{Client, ConnectOptions, Transport};
use serde_json::json;

use crate::support::{
    InProcessNode, NodeProcess, RedisServer, WAIT, free_port, http, token, unique_prefix,
    wait_for_status,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_node_is_healthy_and_ready() {
    let node = NodeProcess::spawn_ready(&[]).await;
    let ready: serde_json::Value = http()
        .get(format!("{}/readyz", node.url()))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["ready"], true);
    wait_for_status(&format!("{}/healthz", node.url()), 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_without_redis_and_becomes_ready_when_it_appears() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let prefix = unique_prefix("late");
    let node = NodeProcess::spawn(&[("REDIS_URL", &url), ("RELAY_KEY_PREFIX", &prefix)]).await;
    let readyz = format!("{}/readyz", node.url());
    wait_for_status(&readyz, 503).await;
    // Until its namespace opens, new sessions are shed with a 503 the
    // clients retry on, not refused with a bare "Invalid namespace".
    let handshake = http()
        .get(format!("{}/socket.io/?EIO=4&transport=polling", node.url()))
        .send()
        .await
        .expect("handshake");
    assert_eq!(handshake.status(), 503);
    assert_eq!(handshake.headers()["retry-after"], "1");
    assert_eq!(
        crate::support::metric(
            &node.url(),
            r#"relay_connections_shed_total{reason="not_ready"}"#
        )
        .await,
        1.0
    );
    let redis = RedisServer::start_on(port).await;
    node.wait_ready().await;
    // And it serves clients once ready.
    Client::connect(
        ConnectOptions::new(node.url())
            .transport(Transport::WebSocket)
            .auth(json!({ "token": token("1", Role::Admin) }))
            .timeout(WAIT),
    )
    .await
    .expect("connect once ready");
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connected_sockets_by_role_and_transport() {
    let node = NodeProcess::spawn_ready(&[]).await;
    let connect = |jwt: String, transport| {
        Client::connect(
            ConnectOptions::new(node.url())
                .transport(transport)
                .auth(json!({ "token": jwt }))
                .timeout(WAIT),
        )
    };
    let _c1 = connect(token("1", Role::Customer), Transport::WebSocket)
        .await
        .expect("c1");
    let _c2 = connect(token("2", Role::Customer), Transport::WebSocket)
        .await
        .expect("c2");
    let _d = connect(token("3", Role::Driver), Transport::Polling)
        .await
        .expect("d");
    let metrics = http()
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    for line in [
        r#"relay_connected_sockets{role="customer",transport="websocket"} 2"#,
        r#"relay_connected_sockets{role="driver",transport="polling"} 1"#,
        r#"relay_connected_sockets{role="admin",transport="websocket"} 0"#,
        "relay_ready 1",
        "relay_cluster_nodes 1",
        r#"relay_http_requests_total{route="/readyz",status="200"}"#,
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_cpu_seconds_total ",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_disconnects_clients_and_exits_cleanly() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("term");
    let mut node =
        NodeProcess::spawn_ready(&[("REDIS_URL", &redis.url()), ("RELAY_KEY_PREFIX", &prefix)])
            .await;
    let mut clients = Vec::new();
    for transport in [Transport::WebSocket, Transport::Polling] {
        clients.push(
            Client::connect(
                ConnectOptions::new(node.url())
                    .transport(transport)
                    .auth(json!({ "token": token("1", Role::Customer) }))
                    .timeout(WAIT),
            )
            .await
            .expect("connect"),
        );
    }
    node.terminate();
    for client in &mut clients {
        client
            .closed(WAIT)
            .await
            .expect("server closed the connection");
    }
    assert_eq!(node.exit_code().await, Some(0));
}

/// The long-lived tasks of every node, whichever its engine.
const NODE_TASKS: [&str; 9] = [
    "location cache writer",
    "location prune",
    "token expiry sweeper",
    "delivery loop",
    "room sweep",
    "health watch",
    "consumer",
    "consumer maintenance",
    "http server",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_returns_once_every_task_of_an_embedded_node_has_ended() {
    let node = InProcessNode::start_ready(&[]).await;
    stop_joins_every_task(node, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_returns_once_every_task_of_a_redis_node_has_ended() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("join");
    let node =
        InProcessNode::start_ready(&[("REDIS_URL", &redis.url()), ("RELAY_KEY_PREFIX", &prefix)])
            .await;
    // With peers: the cluster-wide session counts, and the engine's own
    // tasks.
    let cluster_tasks = ["limits keep-alive", "moved channels", "sequencing notices"];
    stop_joins_every_task(node, &cluster_tasks).await;
}

/// Stops `node` with clients on both transports, and checks that every task
/// it ran (`NODE_TASKS` and `more`) had ended when `stop` returned.
async fn stop_joins_every_task(node: InProcessNode, more: &[&str]) {
    let tasks = node.node().tasks().clone();
    let expected: Vec<&str> = NODE_TASKS.iter().chain(more).copied().collect();
    // The consumer's maintenance starts once it has taken its own pending entries.
    tokio::time::timeout(WAIT, async {
        while !expected.iter().all(|t| tasks.running().contains(t)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("expected {expected:?}, running {:?}", tasks.running()));
    let mut clients = Vec::new();
    for transport in [Transport::WebSocket, Transport::Polling] {
        clients.push(
            Client::connect(
                ConnectOptions::new(node.url())
                    .transport(transport)
                    .auth(json!({ "token": token("1", Role::Customer) }))
                    .timeout(WAIT),
            )
            .await
            .expect("connect"),
        );
    }
    // A task slower to stop than all the others: `stop` waits for it too.
    let ended = Arc::new(AtomicBool::new(false));
    tasks.spawn("slow to stop", {
        let (stop, ended) = (node.node().stop_token(), ended.clone());
        async move {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            ended.store(true, Ordering::SeqCst);
        }
    });
    node.stop().await;
    assert!(
        ended.load(Ordering::SeqCst),
        "stop returned before a task ended"
    );
    assert_eq!(
        tasks.running(),
        Vec::<&str>::new(),
        "still running after stop"
    );
    assert!(tasks.is_empty());
    assert_eq!(tasks.panicked(), Vec::<&str>::new());
    for client in &mut clients {
        client
            .closed(WAIT)
            .await
            .expect("server closed the connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_does_not_stop_holds_the_drain_only_for_the_grace_period() {
    let node = InProcessNode::start_ready(&[("RELAY_SHUTDOWN_GRACE_S", "1")]).await;
    let tasks = node.node().tasks().clone();
    tasks.spawn("stuck", std::future::pending::<()>());
    let started = Instant::now();
    node.stop().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "stop returned after {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "stop returned after {took:?}"
    );
    assert_eq!(tasks.running(), ["stuck"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_readyz_answers_503_for_the_shutdown_delay_then_the_node_exits() {
    const DELAY: Duration = Duration::from_millis(1500);
    let mut node = NodeProcess::spawn_ready(&[
        ("RELAY_SHUTDOWN_DELAY_MS", "1500"),
        ("RELAY_SHUTDOWN_GRACE_S", "4"),
    ])
    .await;
    let url = format!("{}/readyz", node.url());
    // A new connection per probe, as a load balancer's health check makes.
    let probe = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(WAIT)
        .build()
        .expect("client");
    let signalled = Instant::now();
    node.terminate();
    let mut answers = Vec::new();
    // Until a probe gets no answer: refused, or (a probe accepted just as the
    // listener closed) closed unanswered.
    let refused_after = loop {
        match probe.get(&url).send().await {
            Ok(response) => answers.push((signalled.elapsed(), response.status().as_u16())),
            Err(_) => break signalled.elapsed(),
        }
        assert!(signalled.elapsed() < WAIT, "the listener never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // 503 from (nearly) the signal on, never 200 once it was 503, until the
    // delay is over: load balancers see the node leave.
    let first_503 = answers
        .iter()
        .position(|(_, status)| *status == 503)
        .unwrap_or_else(|| panic!("no 503 before the listener closed: {answers:?}"));
    assert!(
        answers[first_503..].iter().all(|(_, s)| *s == 503),
        "{answers:?}"
    );
    assert!(
        answers[first_503].0 < Duration::from_millis(500),
        "{answers:?}"
    );
    assert!(refused_after >= DELAY, "refused after {refused_after:?}");
    assert_eq!(node.exit_code().await, Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "exited after {:?}",
        signalled.elapsed()
    );
}
