//! CONTRACT §2 and §4 for locations: validation, limits, the cache in Redis,
//! fan-out across nodes and the latest location on join.

use relay::auth::Role;
use relay_client::Client;
use serde_json::{Value, json};

use crate::support::{
    API_KEY, Cluster, InProcessNode, Kind, WAIT, connect, expect_event, http, token,
};

async fn send(driver: &Client, update: Value) -> Value {
    driver
        .emit_with_ack("driver:location_update", update, WAIT)
        .await
        .expect("ack")
        .into_iter()
        .next()
        .expect("ack payload")
}

/// An order of customer `c` at store s1, assigned to driver `d`.
async fn assigned_order(cluster: &Cluster, order: &str, c: &str, d: &str) {
    cluster
        .xadd(
            "order.created",
            json!({"order_id": order, "customer_id": c, "store_id": "s1", "items": []}),
        )
        .await;
    cluster
        .xadd("order.assigned", json!({"order_id": order, "driver_id": d}))
        .await;
}

async fn metrics_of(url: &str) -> String {
    http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_validated_and_answered_through_the_ack() {
    let cluster = Cluster::start(
        "loc-validate",
        1,
        &[("RELAY_LOCATION_MIN_INTERVAL_MS", "0")],
    )
    .await;
    let url = cluster.url(0);
    let driver = connect(&url, &token("d1", Role::Driver)).await;
    let customer = connect(&url, &token("c1", Role::Customer)).await;
    assert_eq!(
        send(
            &driver,
            json!({"lat": 12.9716, "lng": 77.5946, "heading": 90, "speed": 40})
        )
        .await,
        json!({"ok": true})
    );
    assert_eq!(
        send(&driver, json!({"lat": 12.9716, "lng": 77.5946})).await,
        json!({"ok": true})
    );
    for bad in [
        json!({"lat": 91, "lng": 0}),
        json!({"lat": 0, "lng": 181}),
        json!({"lat": 0, "lng": 0, "heading": 360}),
        json!({"lat": 0, "lng": 0, "speed": -1}),
    ] {
        let ack = send(&driver, bad.clone()).await;
        assert_eq!(ack["ok"], false, "{bad}");
        assert!(
            ack["error"]
                .as_str()
                .expect("error")
                .starts_with("out of range"),
            "{ack}"
        );
    }
    for bad in [
        json!({"lat": "12.9", "lng": 77.5}),
        json!({"lng": 77.5}),
        json!([12.9, 77.5]),
        json!(null),
    ] {
        let ack = send(&driver, bad.clone()).await;
        assert!(
            ack["error"]
                .as_str()
                .expect("error")
                .starts_with("invalid payload"),
            "{bad}: {ack}"
        );
    }
    let ack = send(&customer, json!({"lat": 1, "lng": 1})).await;
    assert_eq!(
        ack,
        json!({"ok": false, "error": "only drivers send locations"})
    );
    // Without an ack request the update is handled all the same.
    driver
        .emit("driver:location_update", json!({"lat": 1, "lng": 1}))
        .await
        .expect("emit");
    assert_eq!(send(&driver, json!({"lat": 2, "lng": 2})).await["ok"], true);

    let metrics = metrics_of(&url).await;
    for line in [
        r#"relay_location_rejected_total{reason="out_of_range"} 4"#,
        r#"relay_location_rejected_total{reason="invalid_payload"} 4"#,
        r#"relay_location_rejected_total{reason="not_driver"} 1"#,
        r#"relay_location_updates_total{outcome="accepted"} 4"#,
        r#"relay_location_updates_total{outcome="received"} 13"#,
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_are_throttled_and_sockets_rate_limited() {
    let cluster = Cluster::start(
        "loc-limits",
        1,
        &[
            ("RELAY_LOCATION_MIN_INTERVAL_MS", "60000"),
            ("RELAY_CLIENT_EVENTS_PER_S", "3"),
        ],
    )
    .await;
    let url = cluster.url(0);
    let d1 = connect(&url, &token("d1", Role::Driver)).await;
    let d2 = connect(&url, &token("d2", Role::Driver)).await;
    assert_eq!(send(&d1, json!({"lat": 1, "lng": 1})).await["ok"], true);
    let second = send(&d1, json!({"lat": 1, "lng": 1})).await;
    assert!(
        second["error"]
            .as_str()
            .expect("error")
            .starts_with("too frequent"),
        "{second}"
    );
    // Another driver is not held back by the first.
    assert_eq!(send(&d2, json!({"lat": 1, "lng": 1})).await["ok"], true);
    // d1 has used its 3 events of this second; the fourth is refused
    // whatever the event.
    let third = send(&d1, json!({"lat": 1, "lng": 1})).await;
    assert!(
        third["error"]
            .as_str()
            .expect("error")
            .starts_with("too frequent"),
        "{third}"
    );
    let fourth = send(&d1, json!({"lat": 1, "lng": 1})).await;
    assert!(
        fourth["error"]
            .as_str()
            .expect("error")
            .starts_with("rate limited"),
        "{fourth}"
    );
    let sub = d1
        .emit_with_ack("order:subscribe", json!({"order_id": "o1"}), WAIT)
        .await
        .expect("ack");
    assert_eq!(sub[0], json!({"ok": false, "error": "rate limited"}));
    let metrics = metrics_of(&url).await;
    assert!(
        metrics.contains(r#"relay_location_rejected_total{reason="too_frequent"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"relay_location_rejected_total{reason="rate_limited"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_holds_the_contract_fields_and_expires() {
    the_cache_holds_the_contract_fields_and_expires_on(Kind::Server).await;
}

async fn the_cache_holds_the_contract_fields_and_expires_on(kind: Kind) {
    let cluster = Cluster::start_on(
        kind,
        "loc-cache",
        1,
        &[
            ("RELAY_LOCATION_MIN_INTERVAL_MS", "0"),
            ("RELAY_LOCATION_TTL_S", "2"),
        ],
    )
    .await;
    let driver = connect(&cluster.url(0), &token("d1", Role::Driver)).await;
    assert_eq!(
        send(
            &driver,
            json!({"lat": 12.9716, "lng": 77.5946, "heading": 90, "speed": 40})
        )
        .await["ok"],
        true
    );
    let mut conn = cluster.redis.connection().await;
    let hash_key = cluster.key("driver:d1");
    let geo_key = cluster.key("drivers:geo");
    // Writes are batched: wait for the batch to land.
    let deadline = tokio::time::Instant::now() + WAIT;
    let fields: std::collections::HashMap<String, String> = loop {
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&hash_key)
            .query_async(&mut conn)
            .await
            .expect("HGETALL");
        if !fields.is_empty() {
            break fields;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "location never cached"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(fields["lat"].parse::<f64>().expect("lat"), 12.9716);
    assert_eq!(fields["lng"].parse::<f64>().expect("lng"), 77.5946);
    assert_eq!(fields["heading"].parse::<f64>().expect("heading"), 90.0);
    assert_eq!(fields["speed"].parse::<f64>().expect("speed"), 40.0);
    let ts: u64 = fields["ts"].parse().expect("ts");
    assert!(ts.abs_diff(relay::events::now_ms()) < 60_000);
    // A driver's hash is written in one transaction: its expiry came with it.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&hash_key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(ttl > 0 && ttl <= 2000, "ttl {ttl}");
    // On a cluster the hash and the geo set are in different slots, and the
    // batch writes them side by side: either may land first.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (lng, lat) = loop {
        let pos: Vec<Option<(f64, f64)>> = redis::cmd("GEOPOS")
            .arg(&geo_key)
            .arg("d1")
            .query_async(&mut conn)
            .await
            .expect("GEOPOS");
        if let Some(pos) = pos[0] {
            break pos;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never in the geo set"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!((lat - 12.9716).abs() < 1e-4 && (lng - 77.5946).abs() < 1e-4);

    // An update without heading and speed leaves none behind.
    assert_eq!(
        send(&driver, json!({"lat": 12.98, "lng": 77.6})).await["ok"],
        true
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&hash_key)
            .query_async(&mut conn)
            .await
            .expect("HGETALL");
        // The HSET and the HDEL of one update land together.
        if fields.get("lat").map(String::as_str) == Some("12.98") {
            assert!(
                !fields.contains_key("heading") && !fields.contains_key("speed"),
                "{fields:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "second location never cached"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // After the TTL the hash expires and the driver leaves the geo set.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&hash_key)
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        let member: Option<f64> = redis::cmd("ZSCORE")
            .arg(&geo_key)
            .arg("d1")
            .query_async(&mut conn)
            .await
            .expect("ZSCORE");
        if !exists && member.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stale driver still cached (hash {exists}, geo {member:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_reach_the_order_room_on_other_nodes_but_not_the_sender() {
    locations_reach_the_order_room_on_other_nodes_but_not_the_sender_on(Kind::Server).await;
}

async fn locations_reach_the_order_room_on_other_nodes_but_not_the_sender_on(kind: Kind) {
    let cluster = Cluster::start_on(
        kind,
        "loc-fanout",
        2,
        &[("RELAY_LOCATION_MIN_INTERVAL_MS", "0")],
    )
    .await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let mut customer = connect(&b, &token("c1", Role::Customer)).await;
    let mut other = connect(&b, &token("c2", Role::Customer)).await;
    let mut driver = connect(&a, &token("d1", Role::Driver)).await;
    assigned_order(&cluster, "o1", "c1", "d1").await;
    assigned_order(&cluster, "o2", "c2", "d2").await;
    // The assignment is done once a status of o1 reaches the driver.
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "picked_up"}),
        )
        .await;
    expect_event(&mut driver, "order:status_update").await;
    expect_event(&mut customer, "order:status_update").await;

    assert_eq!(
        send(
            &driver,
            json!({"lat": 12.9716, "lng": 77.5946, "heading": 90, "speed": 40})
        )
        .await["ok"],
        true
    );
    let event = expect_event(&mut customer, "order:driver_location").await;
    let data = event.data();
    assert_eq!(data["order_id"], "o1");
    assert_eq!(data["lat"], 12.9716);
    assert_eq!(data["lng"], 77.5946);
    assert_eq!(data["heading"], 90.0);
    assert_eq!(data["speed"], 40.0);
    assert!(data["ts"].as_u64().is_some());
    // Only the customer's node hears o1's locations: the driver's node
    // delivered them itself, and subscribes to the room for its events only.
    let numsub = if kind == Kind::Cluster {
        "SHARDNUMSUB"
    } else {
        "NUMSUB"
    };
    let (locations, room) = (
        cluster.key("room:~loc:order_o1"),
        cluster.key("room:order_o1"),
    );
    let subscribers: std::collections::HashMap<String, i64> = redis::cmd("PUBSUB")
        .arg(numsub)
        .arg(&locations)
        .arg(&room)
        .query_async(&mut cluster.redis.connection().await)
        .await
        .expect("PUBSUB NUMSUB");
    assert_eq!(
        (subscribers[&locations], subscribers[&room]),
        (1, 2),
        "{subscribers:?}"
    );
    let bare = send(&driver, json!({"lat": 12.97, "lng": 77.59})).await;
    assert_eq!(bare["ok"], true);
    let event = expect_event(&mut customer, "order:driver_location").await;
    assert!(event.data().get("heading").is_none() && event.data().get("speed").is_none());

    // Neither the sender nor another order's customer heard it: their next
    // events are the statuses sent next.
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "nearby"}),
        )
        .await;
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o2", "status": "preparing"}),
        )
        .await;
    assert_eq!(
        expect_event(&mut driver, "order:status_update")
            .await
            .data()["status"],
        "nearby"
    );
    assert_eq!(
        expect_event(&mut other, "order:status_update").await.data()["status"],
        "preparing"
    );
    // After delivery the driver's updates reach nobody in o1 any more.
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "delivered"}),
        )
        .await;
    expect_event(&mut driver, "order:status_update").await;
    expect_event(&mut customer, "order:status_update").await;
    expect_event(&mut customer, "order:status_update").await;
    send(&driver, json!({"lat": 1, "lng": 1})).await;
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o3", "customer_id": "c1", "store_id": "s1", "items": []}),
        )
        .await;
    cluster
        .xadd("order.status", json!({"order_id": "o3", "status": "next"}))
        .await;
    assert_eq!(
        expect_event(&mut customer, "order:status_update")
            .await
            .data()["order_id"],
        "o3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_location_arrives_on_connect_assignment_and_subscribe() {
    let cluster = Cluster::start("loc-join", 2, &[("RELAY_LOCATION_MIN_INTERVAL_MS", "0")]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let driver = connect(&a, &token("d1", Role::Driver)).await;
    // Customer c1 waits for its order; d1 is located before being assigned.
    let mut customer = connect(&b, &token("c1", Role::Customer)).await;
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}),
        )
        .await;
    assert_eq!(
        send(&driver, json!({"lat": 12.5, "lng": 77.5})).await["ok"],
        true
    );
    // The cache write is batched; the backend sees it in Redis before assigning.
    let mut conn = cluster.redis.connection().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !redis::cmd("EXISTS")
        .arg(cluster.key("driver:d1"))
        .query_async::<bool>(&mut conn)
        .await
        .expect("EXISTS")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "location never cached"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    cluster
        .xadd(
            "order.assigned",
            json!({"order_id": "o1", "driver_id": "d1"}),
        )
        .await;
    // On assignment: at once, without another update.
    let at_assignment = expect_event(&mut customer, "order:driver_location").await;
    assert_eq!(
        (
            at_assignment.data()["order_id"].clone(),
            at_assignment.data()["lat"].clone()
        ),
        (json!("o1"), json!(12.5))
    );

    // On connect: a reconnecting customer's first event is the location.
    let mut again = connect(&a, &token("c1", Role::Customer)).await;
    let at_connect = expect_event(&mut again, "order:driver_location").await;
    assert_eq!(at_connect.data()["lat"], 12.5);

    // On subscribe: support watching the order sees the driver at once.
    let mut support = connect(&b, &token("sup", Role::Support)).await;
    let ack = support
        .emit_with_ack("order:subscribe", json!({"order_id": "o1"}), WAIT)
        .await
        .expect("ack");
    assert_eq!(ack[0], json!({"ok": true}));
    assert_eq!(
        expect_event(&mut support, "order:driver_location")
            .await
            .data()["lng"],
        77.5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_fans_out_and_caches_locations() {
    let node = InProcessNode::start_ready(&[
        ("RELAY_API_KEY", API_KEY),
        ("RELAY_LOCATION_MIN_INTERVAL_MS", "0"),
    ])
    .await;
    let url = node.url();
    let mut customer = connect(&url, &token("c1", Role::Customer)).await;
    let driver = connect(&url, &token("d1", Role::Driver)).await;
    for (kind, data) in [
        (
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}),
        ),
        (
            "order.assigned",
            json!({"order_id": "o1", "driver_id": "d1"}),
        ),
        (
            "order.status",
            json!({"order_id": "o1", "status": "picked_up"}),
        ),
    ] {
        let response = http()
            .post(format!("{url}/api/events"))
            .bearer_auth(API_KEY)
            .json(&json!({"type": kind, "data": data}))
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status().as_u16(), 202);
    }
    expect_event(&mut customer, "order:status_update").await;
    send(&driver, json!({"lat": 12.9, "lng": 77.6})).await;
    assert_eq!(
        expect_event(&mut customer, "order:driver_location")
            .await
            .data()["lat"],
        12.9
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let active: Value = http()
            .get(format!("{url}/orders/active"))
            .bearer_auth(token("c1", Role::Customer))
            .send()
            .await
            .expect("active")
            .json()
            .await
            .expect("json");
        if active["orders"][0]["driver_location"]["lat"] == 12.9 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{active}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_sees_two_updates_mixed_in_a_driver_hash() {
    a_reader_never_sees_two_updates_mixed_in_a_driver_hash_on(Kind::Server).await;
}

/// Updates alternate between with and without heading and speed, so each
/// one both sets and deletes fields; a reader polling the hash (and its
/// expiry, in one transaction) all along must only ever see one whole
/// update: the fields of update `i` exactly, and a TTL.
async fn a_reader_never_sees_two_updates_mixed_in_a_driver_hash_on(kind: Kind) {
    const UPDATES: u32 = 200;
    let cluster = Cluster::start_on(
        kind,
        "loc-atomic",
        1,
        &[
            ("RELAY_LOCATION_MIN_INTERVAL_MS", "0"),
            ("RELAY_CLIENT_EVENTS_PER_S", "100000"),
        ],
    )
    .await;
    let hash_key = cluster.key("driver:d1");
    let lat_of = |i: u32| 10.0 + f64::from(i) / 1000.0;
    let done = tokio_util::sync::CancellationToken::new();
    let reader = {
        let mut conn = cluster.redis.connection().await;
        let hash_key = hash_key.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            while !done.is_cancelled() {
                let (fields, ttl): (std::collections::HashMap<String, String>, i64) = redis::pipe()
                    .atomic()
                    .cmd("HGETALL")
                    .arg(&hash_key)
                    .cmd("PTTL")
                    .arg(&hash_key)
                    .query_async(&mut conn)
                    .await
                    .expect("HGETALL and PTTL");
                if fields.is_empty() {
                    continue;
                }
                let lat: f64 = fields["lat"].parse().expect("lat");
                let i = ((lat - 10.0) * 1000.0).round() as u32;
                let expected: Vec<(&str, f64)> = if i.is_multiple_of(2) {
                    vec![("heading", f64::from(i % 360)), ("speed", f64::from(i))]
                } else {
                    Vec::new()
                };
                assert_eq!(
                    fields.len(),
                    3 + expected.len(),
                    "update {i} mixed with another: {fields:?}"
                );
                for (field, value) in expected {
                    let found = fields.get(field).and_then(|v| v.parse::<f64>().ok());
                    assert_eq!(found, Some(value), "update {i}: {fields:?}");
                }
                assert!(ttl > 0, "update {i} without its expiry: {ttl}");
                seen.insert(i);
            }
            seen
        })
    };
    let driver = connect(&cluster.url(0), &token("d1", Role::Driver)).await;
    for i in 1..=UPDATES {
        let update = if i.is_multiple_of(2) {
            json!({"lat": lat_of(i), "lng": 77.6, "heading": i % 360, "speed": i})
        } else {
            json!({"lat": lat_of(i), "lng": 77.6})
        };
        assert_eq!(send(&driver, update).await["ok"], true, "update {i}");
    }
    // The last update lands.
    let mut conn = cluster.redis.connection().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let lat: Option<f64> = redis::cmd("HGET")
            .arg(&hash_key)
            .arg("lat")
            .query_async(&mut conn)
            .await
            .expect("HGET");
        if lat == Some(lat_of(UPDATES)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last update never cached: {lat:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    done.cancel();
    let seen = tokio::time::timeout(WAIT, reader)
        .await
        .expect("reader stops")
        .expect("reader found no mixed update");
    assert!(!seen.is_empty(), "the reader never saw the hash");
}

/// The same behaviours with the nodes on a Redis Cluster (three primaries
/// with a replica each) instead of one server.
mod on_a_redis_cluster {
    use crate::support::Kind;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn locations_reach_the_order_room_on_other_nodes_but_not_the_sender() {
        super::locations_reach_the_order_room_on_other_nodes_but_not_the_sender_on(Kind::Cluster)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_holds_the_contract_fields_and_expires() {
        super::the_cache_holds_the_contract_fields_and_expires_on(Kind::Cluster).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_never_sees_two_updates_mixed_in_a_driver_hash() {
        super::a_reader_never_sees_two_updates_mixed_in_a_driver_hash_on(Kind::Cluster).await;
    }
}
