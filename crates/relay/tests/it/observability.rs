//! The dashboard and the alert rules against a live cluster: after a
//! scenario that exercises every path they watch, each node's scrape passes
//! `promtool check metrics`, and every metric name a panel, a variable or an
//! alert uses is exported (scripts/check_observability.py parses the
//! dashboard JSON and the rules; no list is kept by hand here).

use std::{path::PathBuf, process::Command};

use relay::auth::Role;
use relay_client::{Client, ConnectOptions, Transport};
use serde_json::{Value, json};

use crate::support::{
    API_KEY, Cluster, WAIT, connect, connect_with, expect_event, http, merchant_token, token,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported_by_a_live_cluster() {
    let cluster = Cluster::start(
        "observability",
        2,
        &[("RELAY_LOCATION_MIN_INTERVAL_MS", "0")],
    )
    .await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    exercise(&cluster, &a, &b).await;

    // Stream statistics and the cluster size come from background loops:
    // scrape until the check passes, within a bound.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("observability");
    std::fs::create_dir_all(&dir).expect("scrape dir");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut files = Vec::new();
        for (i, url) in [&a, &b].into_iter().enumerate() {
            let path = dir.join(format!("node-{}.prom", i + 1));
            std::fs::write(&path, scrape(url).await).expect("write scrape");
            files.push(path);
        }
        let mut check =
            Command::new(crate::support::repo_root().join("scripts/check-observability.sh"));
        for file in &files {
            check.arg("--metrics-file").arg(file);
        }
        let output = check.output().expect("run scripts/check-observability.sh");
        if output.status.success() {
            return;
        }
        let report = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert_ne!(
            output.status.code(),
            Some(2),
            "the checker could not run (is promtool installed? `make deps`):\n{report}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "observability check failed on the scrapes in {}:\n{report}",
            dir.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Every path the dashboard watches, across two nodes: connects by every
/// role and both transports, a refused handshake, an acked offer, an order
/// assigned to a driver whose locations fan out to a customer on the other
/// node, rejected locations, `order:subscribe`, an unknown client event, a
/// dead letter, the publish API (accepted and refused), the resync
/// endpoint, an unmatched path and a disconnect.
async fn exercise(cluster: &Cluster, a: &str, b: &str) {
    let mut merchant = connect(a, &merchant_token("m1", &["s1"])).await;
    let mut customer = connect(b, &token("c1", Role::Customer)).await;
    let driver = connect(a, &token("d1", Role::Driver)).await;
    let mut admin = connect_with(b, &token("a1", Role::Admin), Transport::Polling).await;
    let refused = Client::connect(
        ConnectOptions::new(a)
            .auth(json!({ "token": "not-a-jwt" }))
            .timeout(WAIT),
    )
    .await;
    assert!(refused.is_err(), "a malformed token must be refused");

    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}),
        )
        .await;
    let offer = expect_event(&mut merchant, "merchant:new_order").await;
    merchant
        .ack(&offer, json!({"accepted": true}))
        .await
        .expect("ack");
    cluster.wait_entries("outcomes", 1).await;

    cluster
        .xadd(
            "order.assigned",
            json!({"order_id": "o1", "driver_id": "d1"}),
        )
        .await;
    // Until the assignment reaches the driver's node, updates have no room
    // to go to: send until one arrives on the customer's node.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut lat = 12.0;
    loop {
        lat += 0.001;
        let ack = location(&driver, json!({"lat": lat, "lng": 77.5})).await;
        assert_eq!(ack, json!({"ok": true}));
        if let Ok(event) = customer
            .wait_for(
                "order:driver_location",
                std::time::Duration::from_millis(200),
            )
            .await
        {
            assert_eq!(event.data()["order_id"], "o1");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no location reached the customer"
        );
    }
    let rejected = location(&driver, json!({"lat": 91, "lng": 0})).await;
    assert_eq!(rejected["ok"], false);
    let not_driver = location(&customer, json!({"lat": 1, "lng": 1})).await;
    assert_eq!(not_driver["ok"], false);

    let subscribed = customer
        .emit_with_ack("order:subscribe", json!({"order_id": "o1"}), WAIT)
        .await
        .expect("subscribe ack");
    assert_eq!(subscribed[0], json!({"ok": true}));
    let unknown = customer
        .emit_with_ack("order:teleport", json!({}), WAIT)
        .await
        .expect("unknown event ack");
    assert_eq!(unknown[0]["ok"], false);

    cluster
        .xadd_raw(&[("type", "order.teleported"), ("data", "{}")])
        .await;
    cluster.wait_entries("events:dead", 1).await;

    let alert = r#"{"type":"admin.alert","data":{"level":"info","message":"lunch rush"}}"#;
    assert_eq!(publish(a, Some(API_KEY), alert).await, 202);
    expect_event(&mut admin, "admin:alert").await;
    assert_eq!(publish(a, Some("wrong"), alert).await, 401);
    assert_eq!(publish(b, Some(API_KEY), "{").await, 400);

    let active = http()
        .get(format!("{b}/orders/active"))
        .bearer_auth(token("c1", Role::Customer))
        .send()
        .await
        .expect("orders/active");
    assert_eq!(active.status(), 200);
    let missing = http()
        .get(format!("{a}/wp-login.php"))
        .send()
        .await
        .expect("unmatched path");
    assert_eq!(missing.status(), 404);

    driver.disconnect().await;
}

async fn location(client: &Client, update: Value) -> Value {
    client
        .emit_with_ack("driver:location_update", update, WAIT)
        .await
        .expect("location ack")
        .into_iter()
        .next()
        .expect("ack payload")
}

async fn publish(url: &str, key: Option<&str>, body: &str) -> u16 {
    let mut request = http()
        .post(format!("{url}/api/events"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("publish").status().as_u16()
}

async fn scrape(url: &str) -> String {
    http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}
