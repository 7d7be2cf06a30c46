//! Network faults between one node and Redis, through the harness's own
//! fault proxy: the link stalls, goes silent for good, or is reset. The
//! node must notice within bounded time (`/readyz` 503), come back by
//! itself, and its clients must get every order event, in order.

use std::time::{Duration, Instant};

use relay::auth::Role;
use relay_client::{Client, ConnectOptions};
use serde_json::json;

use crate::support::{Cluster, WAIT, connect, fault_proxy::FaultProxy, token, wait_for_status};

/// A cluster of one node on Redis directly and one (index 1) through the
/// proxy, with a customer of order `o1` on the proxied node.
async fn proxied(test: &str) -> (Cluster, FaultProxy, Client) {
    let mut cluster = Cluster::start(test, 1, &[("RELAY_CLAIM_IDLE_MS", "1000")]).await;
    let upstream = format!("127.0.0.1:{}", cluster.redis.port());
    let proxy = FaultProxy::start(upstream.parse().expect("addr")).await;
    cluster.add_node_with(&[("REDIS_URL", &proxy.url())]).await;
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": [], "accept_timeout_s": 1}),
        )
        .await;
    let mut customer = connect(&cluster.url(1), &token("c1", Role::Customer)).await;
    status(&cluster, "before").await;
    assert_eq!(next_status(&mut customer).await.1, "before");
    (cluster, proxy, customer)
}

async fn status(cluster: &Cluster, status: &str) -> String {
    cluster
        .xadd("order.status", json!({"order_id": "o1", "status": status}))
        .await
}

async fn next_status(client: &mut Client) -> (String, String) {
    let event = client
        .wait_for("order:status_update", WAIT)
        .await
        .expect("status update");
    (
        event.data()["event_id"].as_str().expect("id").to_owned(),
        event.data()["status"].as_str().expect("status").to_owned(),
    )
}

/// Appends statuses while the link is broken and after, and checks the
/// customer of the proxied node gets each of them at least once, in
/// order (duplicates dropped by event id, as clients do).
async fn every_status_arrives_in_order(
    cluster: &Cluster,
    customer: &mut Client,
    during: &[String],
) {
    let after = status(cluster, "after").await;
    let mut want: Vec<String> = during.to_vec();
    want.push(after);
    let mut got: Vec<String> = Vec::new();
    while got.last() != want.last() {
        let (id, _) = next_status(customer).await;
        // An entry handled but not acknowledged before the fault is handled
        // again (also the status from before it): a client drops an id it
        // has seen.
        if want.contains(&id) && !got.contains(&id) {
            got.push(id);
        }
    }
    assert_eq!(got, want, "every status of the fault and after, in order");
}

async fn appended_during(cluster: &Cluster, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(status(cluster, &format!("during-{i}")).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_makes_the_node_unready_and_it_catches_up_when_bytes_flow() {
    let (cluster, proxy, mut customer) = proxied("net-stall").await;
    let readyz = format!("{}/readyz", cluster.url(1));

    let started = Instant::now();
    proxy.stall();
    wait_for_status(&readyz, 503).await;
    let detected = started.elapsed();
    let during = appended_during(&cluster, 3).await;
    // Held long enough for the node's own timeouts to fire on the stalled link.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.heal();
    let healed = Instant::now();
    wait_for_status(&readyz, 200).await;
    eprintln!(
        "stall detected in {detected:?}, ready again {:?} after the link flowed",
        healed.elapsed()
    );
    every_status_arrives_in_order(&cluster, &mut customer, &during).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_goes_silent_for_good_is_dropped_and_dialed_again() {
    let (cluster, proxy, mut customer) = proxied("net-blackhole").await;
    let readyz = format!("{}/readyz", cluster.url(1));

    let started = Instant::now();
    proxy.blackhole_open_connections();
    wait_for_status(&readyz, 503).await;
    let detected = started.elapsed();
    let during = appended_during(&cluster, 3).await;
    // Nothing heals the old connections: only new ones get through.
    let deadline = Instant::now() + 3 * WAIT;
    let mut ready = false;
    while !ready && Instant::now() < deadline {
        ready = crate::support::http()
            .get(&readyz)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the node dialed Redis again within {:?}", 3 * WAIT);
    eprintln!(
        "silent link detected in {detected:?}, ready again after {:?}",
        started.elapsed()
    );
    every_status_arrives_in_order(&cluster, &mut customer, &during).await;
    let redials = crate::support::metric(&cluster.url(1), "relay_redis_redials_total").await;
    assert!(redials >= 1.0, "the redial is counted ({redials})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connections_are_dialed_again_and_nothing_is_lost() {
    let (cluster, proxy, mut customer) = proxied("net-reset").await;
    let readyz = format!("{}/readyz", cluster.url(1));
    let before = proxy.open_connections();
    assert!(before > 0, "the node holds connections through the proxy");

    proxy.reset_all();
    let during = appended_during(&cluster, 3).await;
    proxy.reset_all();
    wait_for_status(&readyz, 200).await;
    every_status_arrives_in_order(&cluster, &mut customer, &during).await;
    assert!(
        proxy.open_connections() > 0,
        "the node dialed Redis again after the resets"
    );
}

/// One `driver:location_update` with an ack; returns the ack.
async fn send_location(driver: &Client, lat: f64) -> serde_json::Value {
    driver
        .emit_with_ack(
            "driver:location_update",
            json!({"lat": lat, "lng": 7.0}),
            WAIT,
        )
        .await
        .expect("ack")
        .into_iter()
        .next()
        .expect("ack payload")
}

/// Waits for an `order:driver_location` of `o1` at `lat`, skipping others.
async fn location_at(client: &mut Client, lat: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = client
            .wait_for("order:driver_location", left)
            .await
            .unwrap_or_else(|e| panic!("no location at {lat}: {e}"));
        if event.data()["lat"].as_f64() == Some(lat) {
            assert_eq!(event.data()["order_id"], "o1");
            return;
        }
    }
}

async fn try_connect(url: &str, jwt: &str) -> Result<Client, String> {
    Client::connect(
        ConnectOptions::new(url)
            .auth(json!({ "token": jwt }))
            .timeout(WAIT),
    )
    .await
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_that_connect_while_redis_stalls_are_never_left_outside_their_order_rooms() {
    let cluster = Cluster::start(
        "connect-stall",
        1,
        &[("RELAY_LOCATION_MIN_INTERVAL_MS", "0")],
    )
    .await;
    let url = cluster.url(0);
    let readyz = format!("{url}/readyz");
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}),
        )
        .await;
    cluster
        .xadd(
            "order.assigned",
            json!({"order_id": "o1", "driver_id": "d1"}),
        )
        .await;
    let mut driver = connect(&url, &token("d1", Role::Driver)).await;
    status(&cluster, "preparing").await;
    assert_eq!(next_status(&mut driver).await.1, "preparing");

    // Redis stalls (SIGSTOP: connections open, nothing answered).
    cluster.redis.pause();
    // A customer let in before the node notices: its order lookup fails.
    let early = tokio::spawn({
        let url = url.clone();
        async move { try_connect(&url, &token("c1", Role::Customer)).await }
    });
    wait_for_status(&readyz, 503).await;
    // Once the node knows, new sessions are shed with 503 (clients retry).
    let refused = try_connect(&url, &token("c1", Role::Customer))
        .await
        .expect_err("shed while the store does not answer");
    assert!(refused.contains("503"), "{refused}");
    let mut early = early
        .await
        .expect("task")
        .expect("connected, though its orders could not be read");

    cluster.redis.resume();
    wait_for_status(&readyz, 200).await;
    let mut late = try_connect(&url, &token("c1", Role::Customer))
        .await
        .expect("let in once the store answers");

    // The early customer's order room is joined once the store answers:
    // the driver's updates reach it (first the catch-up or a live one, then
    // a fresh one through the room).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut lat = 45.0;
    loop {
        lat += 0.001;
        assert_eq!(send_location(&driver, lat).await["ok"], true);
        if early
            .wait_for("order:driver_location", Duration::from_millis(200))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the customer that connected during the stall never joined order_o1"
        );
    }
    assert_eq!(send_location(&driver, 46.5).await["ok"], true);
    location_at(&mut early, 46.5).await;
    location_at(&mut late, 46.5).await;
    let url = cluster.url(0);
    assert!(
        crate::support::metric(&url, "relay_deferred_order_joins_total{result=\"joined\"}").await
            >= 1.0
    );
}
