//! Faults with real processes: nodes killed under load, their clients
//! coming back elsewhere.

use std::{collections::HashMap, time::Duration};

use relay::auth::Role;
use relay_client::{Client, ConnectOptions};
use serde_json::json;

use crate::support::{Cluster, WAIT, connect, token};

const CUSTOMERS: usize = 8;
const UPDATES: usize = 40;

/// Reconnects with the last event seen, as an app does after a drop.
async fn resume(url: &str, customer: &str, last_event_id: Option<&str>) -> Client {
    let mut auth = json!({ "token": token(customer, Role::Customer) });
    if let Some(id) = last_event_id {
        auth["last_event_id"] = json!(id);
    }
    Client::connect(ConnectOptions::new(url).auth(auth).timeout(WAIT))
        .await
        .expect("reconnect")
}

/// Event ids as a client keeps them: an id seen before is dropped, also
/// when it comes back later (an entry a killed node handled but had not
/// acknowledged is handled again by the node that claims it).
fn as_a_client_keeps_them(ids: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.filter(|id| seen.insert(id.clone())).collect()
}

/// Appends `rounds` status updates to each of orders `o0..o{orders}` at a
/// steady pace, from its own task; returns the entry ids per order.
fn produce(
    cluster: &Cluster,
    orders: usize,
    rounds: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<HashMap<usize, Vec<String>>> {
    let (redis_url, key) = (cluster.redis.url(), cluster.key("events"));
    tokio::spawn(async move {
        let client = redis::Client::open(redis_url).expect("redis");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let mut ids: HashMap<usize, Vec<String>> = HashMap::new();
        for n in 0..rounds {
            for i in 0..orders {
                let data = json!({"order_id": format!("o{i}"), "status": format!("s{n}")});
                let id: String = redis::cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("type")
                    .arg("order.status")
                    .arg("data")
                    .arg(data.to_string())
                    .query_async(&mut conn)
                    .await
                    .expect("XADD");
                ids.entry(i).or_default().push(id);
            }
            tokio::time::sleep(pause).await;
        }
        ids
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_resume_elsewhere_and_miss_no_order_event() {
    let mut cluster =
        Cluster::start("kill-under-load", 2, &[("RELAY_CLAIM_IDLE_MS", "1000")]).await;
    let mut clients = Vec::new();
    for i in 0..CUSTOMERS {
        let customer = format!("c{i}");
        cluster
            .xadd(
                "order.created",
                json!({"order_id": format!("o{i}"), "customer_id": customer, "store_id": "s1", "items": [], "accept_timeout_s": 1}),
            )
            .await;
        clients.push(connect(&cluster.url(0), &token(&customer, Role::Customer)).await);
    }

    // A steady stream of status updates for every order, from another task.
    let producer = produce(&cluster, CUSTOMERS, UPDATES, Duration::from_millis(25));

    // Each client reads until a quarter of the updates went by, then its node dies.
    let mut seen: Vec<Vec<(String, String)>> = vec![Vec::new(); CUSTOMERS];
    for (i, client) in clients.iter_mut().enumerate() {
        while seen[i].len() < UPDATES / 4 {
            let event = client
                .wait_for("order:status_update", WAIT)
                .await
                .expect("update");
            seen[i].push((
                event.data()["event_id"].as_str().unwrap().to_owned(),
                event.data()["status"].as_str().unwrap().to_owned(),
            ));
        }
    }
    cluster.nodes[0].kill().await;

    // Back on the surviving node with the last event each one saw.
    let mut back = Vec::new();
    for (i, events) in seen.iter().enumerate() {
        let last = events.last().map(|(id, _)| id.as_str());
        back.push(resume(&cluster.url(1), &format!("c{i}"), last).await);
    }
    let expected = producer.await.expect("producer");
    for (i, client) in back.iter_mut().enumerate() {
        let mut done = false;
        let want = &expected[&i];
        let deadline = tokio::time::Instant::now() + WAIT;
        while seen[i].last().map(|(id, _)| id) != want.last() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "customer {i} stalled"
            );
            let event = client.next_event(WAIT).await.expect("event");
            match event.name.as_str() {
                "sync:done" => {
                    assert_eq!(event.data()["recovered"], true);
                    done = true;
                }
                "order:status_update" => seen[i].push((
                    event.data()["event_id"].as_str().unwrap().to_owned(),
                    event.data()["status"].as_str().unwrap().to_owned(),
                )),
                _ => {}
            }
        }
        assert!(done, "customer {i} got sync:done");
        // Every update of its order, in order; duplicates (at least once) dropped by id.
        let ids = as_a_client_keeps_them(seen[i].iter().map(|(id, _)| id.clone()));
        assert_eq!(&ids, want, "customer {i}: every update, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_the_stream_and_both_feeds_flow_again() {
    let mut cluster = Cluster::start("redis-restart", 2, &[]).await;
    let customer = connect(&cluster.url(1), &token("c1", Role::Customer)).await;
    let driver = connect(&cluster.url(0), &token("d1", Role::Driver)).await;
    let mut customer = customer;
    for (kind, data) in [
        (
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": [], "accept_timeout_s": 1}),
        ),
        (
            "order.assigned",
            json!({"order_id": "o1", "driver_id": "d1"}),
        ),
        (
            "order.status",
            json!({"order_id": "o1", "status": "before"}),
        ),
    ] {
        cluster.xadd(kind, data).await;
    }
    assert_eq!(
        customer
            .wait_for("order:status_update", WAIT)
            .await
            .expect("before")
            .data()["status"],
        "before"
    );

    cluster.redis.kill().await;
    for node in 0..2 {
        crate::support::wait_for_status(&format!("{}/readyz", cluster.url(node)), 503).await;
    }
    // While Redis is away, the publish API refuses rather than pretends.
    let refused = crate::support::http()
        .post(format!("{}/api/events", cluster.url(0)))
        .bearer_auth(crate::support::API_KEY)
        .json(&json!({"type": "order.status", "data": {"order_id": "o1", "status": "lost"}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(refused.status(), 503);

    cluster.redis.restart().await;
    for node in 0..2 {
        cluster.nodes[node].wait_ready().await;
    }
    // An empty Redis: the group is recreated and events appended now flow,
    // in order, to the customer on the other node (history channel).
    let mut appended = Vec::new();
    for n in 0..10 {
        appended.push(
            cluster
                .xadd(
                    "order.status",
                    json!({"order_id": "o1", "status": format!("after{n}")}),
                )
                .await,
        );
    }
    let mut got = Vec::new();
    while got.len() < appended.len() {
        let event = customer
            .wait_for("order:status_update", WAIT)
            .await
            .expect("after");
        got.push(event.data()["event_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, appended);
    // Locations too (the location channel): the driver is still in the
    // order room on its node, the customer on the other.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ack = driver
            .emit_with_ack(
                "driver:location_update",
                json!({"lat": 12.9, "lng": 77.6}),
                WAIT,
            )
            .await
            .expect("location ack");
        assert_eq!(ack[0]["ok"], true);
        if customer
            .wait_for("order:driver_location", Duration::from_millis(300))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no location after the restart"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

/// A client that completes the Socket.IO handshake, then never reads again.
async fn stalled_client(
    url: &str,
    jwt: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws_url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        url.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .expect("websocket");
    let open = ws.next().await.expect("open").expect("open frame");
    assert!(open.to_text().unwrap_or_default().starts_with('0'));
    ws.send(Message::text(format!("40{}", json!({ "token": jwt }))))
        .await
        .expect("connect");
    // The CONNECT reply, past anything else that may come first.
    for _ in 0..10 {
        let frame = ws.next().await.expect("connect reply").expect("frame");
        let text = frame.to_text().unwrap_or_default().to_owned();
        if text.starts_with("40") {
            return ws;
        }
        assert!(!text.starts_with("44"), "connect refused: {text}");
    }
    panic!("no CONNECT reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_not_buffered_forever() {
    let node = crate::support::InProcessNode::start_ready(&[
        ("RELAY_API_KEY", crate::support::API_KEY),
        ("RELAY_CLIENT_EVENTS_PER_S", "0"),
    ])
    .await;
    let url = node.url();
    let _stalled = stalled_client(&url, &token("slow", Role::Admin)).await;
    let mut reader = connect(&url, &token("fast", Role::Admin)).await;
    // Alerts of 60 KB until the stalled client's kernel buffers and its
    // bounded channel are full: a few hundred.
    let message = "x".repeat(60 * 1024);
    let counter = "relay_slow_client_disconnects_total";
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let mut sent = 0;
    loop {
        for _ in 0..50 {
            let status = crate::support::http()
                .post(format!("{url}/api/events"))
                .bearer_auth(crate::support::API_KEY)
                .json(
                    &json!({"type": "admin.alert", "data": {"level": "info", "message": message}}),
                )
                .send()
                .await
                .expect("publish")
                .status();
            assert_eq!(status, 202);
            sent += 1;
        }
        // The reading client keeps up with every one.
        for _ in 0..50 {
            reader.wait_for("admin:alert", WAIT).await.expect("alert");
        }
        let disconnected = crate::support::metric(&url, counter).await;
        if disconnected >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled client was never disconnected after {sent} alerts"
        );
    }
    assert!(reader.close_reason().is_none(), "the reading client stays");
}

/// Everything `client` still has, until its node closes it: (event_id) of
/// each status update, and whether the connection ended.
async fn drain(client: &mut Client, seen: &mut Vec<String>) {
    while let Ok(event) = client.next_event(WAIT).await {
        if event.name == "order:status_update" {
            seen.push(event.data()["event_id"].as_str().unwrap().to_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_order_event() {
    let mut cluster = Cluster::start("rolling", 2, &[("RELAY_CLAIM_IDLE_MS", "1000")]).await;
    const N: usize = 4;
    let mut clients = Vec::new();
    for i in 0..N {
        cluster
            .xadd(
                "order.created",
                json!({"order_id": format!("o{i}"), "customer_id": format!("c{i}"), "store_id": "s1", "items": [], "accept_timeout_s": 1}),
            )
            .await;
        clients.push(
            connect(
                &cluster.url(i % 2),
                &token(&format!("c{i}"), Role::Customer),
            )
            .await,
        );
    }
    let producer = produce(&cluster, N, 60, Duration::from_millis(40));

    // Replace each node in turn: a new one comes up, the old one gets SIGTERM,
    // and its clients come back on the new one with their last event id.
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); N];
    for old in 0..2 {
        let new = cluster.add_node(None).await;
        cluster.nodes[old].terminate();
        for i in (0..N).filter(|i| i % 2 == old) {
            drain(&mut clients[i], &mut seen[i]).await;
            let last = seen[i].last().cloned();
            clients[i] = resume(&cluster.url(new), &format!("c{i}"), last.as_deref()).await;
        }
    }
    let appended = producer.await.expect("producer");
    for (i, client) in clients.iter_mut().enumerate() {
        let want = &appended[&i];
        let deadline = tokio::time::Instant::now() + WAIT;
        while seen[i].last() != want.last() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "customer {i} stalled"
            );
            let event = client.next_event(WAIT).await.expect("event");
            match event.name.as_str() {
                "sync:done" => assert_eq!(event.data()["recovered"], true, "customer {i}"),
                "order:status_update" => {
                    seen[i].push(event.data()["event_id"].as_str().unwrap().to_owned())
                }
                _ => {}
            }
        }
        let ids = as_a_client_keeps_them(seen[i].iter().cloned());
        assert_eq!(&ids, want, "customer {i}: every update, in order");
    }
}
