//! The consumer group under failure: bad entries, entries from before any
//! node, a node killed while holding entries, and ordering under load.

use std::collections::HashMap;

use relay::auth::Role;
use relay::config::Secret;
use relay::engine::redis::{RedisEngine, RedisSettings};
use relay::engine::{Engine, EventStream};
use serde_json::json;

use crate::support::{Cluster, WAIT, connect, expect_event, merchant_token, metric, token};

/// `XPENDING key group` summary: count, smallest id, largest id, consumers.
type PendingSummary = (
    u64,
    Option<String>,
    Option<String>,
    Option<Vec<(String, String)>>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_go_to_the_dead_letters_while_later_entries_flow() {
    let cluster = Cluster::start("poison", 2, &[]).await;
    let mut admin = connect(&cluster.url(0), &token("a1", Role::Admin)).await;
    cluster
        .xadd("admin.alert", json!({"level": "info", "message": "first"}))
        .await;
    let bad_json = cluster
        .xadd_raw(&[("type", "admin.alert"), ("data", "{not json")])
        .await;
    let unknown = cluster
        .xadd_raw(&[("type", "order.teleported"), ("data", "{}")])
        .await;
    let missing = cluster
        .xadd("order.status", json!({"order_id": "o1"}))
        .await;
    let no_type = cluster.xadd_raw(&[("data", "{}")]).await;
    cluster
        .xadd("admin.alert", json!({"level": "info", "message": "second"}))
        .await;

    // Entries of different orders run side by side: collect, then compare.
    let mut messages = Vec::new();
    for _ in 0..2 {
        messages.push(expect_event(&mut admin, "admin:alert").await.data()["message"].clone());
    }
    messages.sort_by_key(|m| m.to_string());
    assert_eq!(messages, ["first", "second"]);

    let dead = cluster.wait_entries("events:dead", 4).await;
    let reason_of = |id: &str| {
        dead.iter()
            .find(|(_, d)| d["id"] == id)
            .map(|(_, d)| d["reason"].split(':').next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {dead:?}"))
    };
    assert_eq!(reason_of(&bad_json), "bad_json");
    assert_eq!(reason_of(&unknown), "unknown_type");
    assert_eq!(reason_of(&missing), "missing_field");
    assert_eq!(reason_of(&no_type), "missing_type");
    let letter = dead
        .iter()
        .find(|(_, d)| d["id"] == bad_json)
        .expect("letter");
    assert_eq!(letter.1["data"], "{not json", "data kept as it was");
    assert_eq!(letter.1["type"], "admin.alert");
    assert!(!letter.1["node"].is_empty());

    // All of them were acknowledged: nothing stays pending.
    let mut conn = cluster.redis.connection().await;
    let pending: PendingSummary = redis::cmd("XPENDING")
        .arg(cluster.key("events"))
        .arg(cluster.key("relay"))
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    assert_eq!(pending.0, 0, "{pending:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_appended_before_any_node_started_are_delivered() {
    let mut cluster = Cluster::start("early", 0, &[]).await;
    let early = cluster
        .xadd(
            "admin.alert",
            json!({"level": "info", "message": "before boot"}),
        )
        .await;
    let node = cluster.add_node(None).await;
    let mut admin = connect(&cluster.url(node), &token("a1", Role::Admin)).await;
    // The node may have emitted before the admin connected: the proof is
    // the ack of the entry in the group.
    let mut conn = cluster.redis.connection().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let pending: (u64,) = redis::cmd("XPENDING")
            .arg(cluster.key("events"))
            .arg(cluster.key("relay"))
            .query_async(&mut conn)
            .await
            .map(|p: PendingSummary| (p.0,))
            .expect("XPENDING");
        let info: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(cluster.key("events"))
            .query_async(&mut conn)
            .await
            .expect("XINFO");
        let delivered = info
            .first()
            .and_then(|g| g.get("last-delivered-id"))
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
        if pending.0 == 0 && delivered.as_deref() == Some(early.as_str()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "early entry not consumed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // And a later one reaches the admin who is now connected.
    cluster
        .xadd(
            "admin.alert",
            json!({"level": "info", "message": "after boot"}),
        )
        .await;
    assert_eq!(
        expect_event(&mut admin, "admin:alert").await.data()["message"],
        "after boot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_offer_is_claimed_and_completed_by_another_node() {
    let mut cluster = Cluster::start("kill", 1, &[("RELAY_CLAIM_IDLE_MS", "1000")]).await;
    let merchant_jwt = merchant_token("m1", &["s1"]);
    let mut merchant = connect(&cluster.url(0), &merchant_jwt).await;
    let id = cluster
        .xadd("order.created", json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": [], "accept_timeout_s": 30}))
        .await;
    let first = expect_event(&mut merchant, "merchant:new_order").await;
    assert_eq!(first.data()["event_id"], id);

    // Node 0 dies holding the entry (its offer unanswered); node 1 takes over.
    let survivor = cluster.add_node(None).await;
    cluster.nodes[0].kill().await;
    let mut merchant = connect(&cluster.url(survivor), &merchant_jwt).await;
    let again = expect_event(&mut merchant, "merchant:new_order").await;
    assert_eq!(
        again.data()["event_id"],
        id,
        "the same offer, re-sent by the claiming node"
    );
    merchant
        .ack(&again, json!({"accepted": true}))
        .await
        .expect("ack");
    let outcomes = cluster.wait_entries("outcomes", 1).await;
    assert_eq!(outcomes[0].1["outcome"], "acked");
    assert_eq!(outcomes.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_events_of_an_order_wait_for_earlier_ones_a_stopped_consumer_held() {
    let mut cluster = Cluster::start("held", 0, &[("RELAY_CLAIM_IDLE_MS", "3000")]).await;
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}),
        )
        .await;
    let held = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "accepted"}),
        )
        .await;
    // Another consumer of the group (a node that then died) takes both
    // entries of o1 and never handles them.
    let ghost = RedisEngine::new(RedisSettings {
        url: &Secret::new(cluster.redis.url()),
        key_prefix: &cluster.prefix,
        node_id: "ghost",
        claim_idle: std::time::Duration::from_secs(3),
        max_deliveries: 5,
        location_ttl: std::time::Duration::from_secs(120),
        history_size: 100,
        history_ttl: std::time::Duration::from_secs(600),
    })
    .expect("ghost engine");
    ghost.stream().prepare().await.expect("group");
    let taken = ghost.stream().read_new(10).await.expect("ghost read");
    assert_eq!(taken.len(), 2);
    drop(ghost);

    let node = cluster.add_node(None).await;
    let mut customer = connect(&cluster.url(node), &token("c1", Role::Customer)).await;
    let later = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "preparing"}),
        )
        .await;
    // The node reads `later` at once, but emits it only after `held`, which
    // it gets by claiming it from the silent ghost after the claim time.
    let first = expect_event(&mut customer, "order:status_update").await;
    let second = expect_event(&mut customer, "order:status_update").await;
    assert_eq!(first.data()["event_id"], held);
    assert_eq!(second.data()["event_id"], later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_status_events_arrive_complete_and_in_order_per_order() {
    const ORDERS: usize = 1000;
    const STATUSES: usize = 10;
    const CUSTOMERS: usize = 30;
    let cluster = Cluster::start("load", 3, &[]).await;
    let mut clients = Vec::new();
    for c in 0..CUSTOMERS {
        clients.push(
            connect(
                &cluster.url(c % 3),
                &token(&format!("c{c}"), Role::Customer),
            )
            .await,
        );
    }
    let mut conn = cluster.redis.connection().await;
    let mut pipe = redis::pipe();
    for o in 0..ORDERS {
        let data = json!({"order_id": format!("o{o}"), "customer_id": format!("c{}", o % CUSTOMERS), "store_id": "nobody", "items": []});
        pipe.cmd("XADD")
            .arg(cluster.key("events"))
            .arg("*")
            .arg("type")
            .arg("order.created")
            .arg("data")
            .arg(data.to_string())
            .ignore();
    }
    for s in 0..STATUSES {
        for o in 0..ORDERS {
            let data = json!({"order_id": format!("o{o}"), "status": format!("s{s}")});
            pipe.cmd("XADD")
                .arg(cluster.key("events"))
                .arg("*")
                .arg("type")
                .arg("order.status")
                .arg("data")
                .arg(data.to_string())
                .ignore();
        }
    }
    let () = pipe.query_async(&mut conn).await.expect("XADD batch");

    let mut duplicates = 0usize;
    let mut tasks = Vec::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let expected_orders = (0..ORDERS).filter(|o| o % CUSTOMERS == c).count();
            let mut seen: HashMap<String, Vec<String>> = HashMap::new();
            let mut ids = std::collections::HashSet::new();
            let mut dups = 0usize;
            let mut received = 0usize;
            while received < expected_orders * STATUSES {
                let event = client
                    .next_event(std::time::Duration::from_secs(60))
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "c{c}: {received} of {} events: {e}",
                            expected_orders * STATUSES
                        )
                    });
                let id = event.data()["event_id"]
                    .as_str()
                    .expect("event_id")
                    .to_owned();
                if !ids.insert(id) {
                    dups += 1;
                    continue;
                }
                let order = event.data()["order_id"].as_str().expect("order").to_owned();
                seen.entry(order)
                    .or_default()
                    .push(event.data()["status"].as_str().expect("status").to_owned());
                received += 1;
            }
            (seen, dups)
        }));
    }
    for task in tasks {
        let (seen, dups) = task.await.expect("client task");
        duplicates += dups;
        for (order, statuses) in seen {
            let expected: Vec<String> = (0..STATUSES).map(|s| format!("s{s}")).collect();
            assert_eq!(
                statuses, expected,
                "order {order} out of order or incomplete"
            );
        }
    }
    println!(
        "10,000 status events over 1,000 orders on 3 nodes: none lost, none out of order, {duplicates} duplicates"
    );
}

/// An entry the store refuses (not a passing outage) is not retried in
/// place: it is left pending, claimed again after the claim time, and
/// dead-lettered after `RELAY_MAX_DELIVERIES`, while later entries flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_the_store_refuses_is_redelivered_then_dead_lettered_not_retried_in_place() {
    let cluster = Cluster::start(
        "refused",
        1,
        &[
            ("RELAY_CLAIM_IDLE_MS", "500"),
            ("RELAY_MAX_DELIVERIES", "2"),
        ],
    )
    .await;
    // The order's hash holds a string: every status update gets WRONGTYPE.
    let mut conn = cluster.redis.connection().await;
    let () = redis::cmd("SET")
        .arg(cluster.key("order:o-refused"))
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let mut admin = connect(&cluster.url(0), &token("a1", Role::Admin)).await;
    let refused = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o-refused", "status": "preparing"}),
        )
        .await;
    cluster
        .xadd("admin.alert", json!({"level": "info", "message": "after"}))
        .await;
    assert_eq!(
        expect_event(&mut admin, "admin:alert").await.data()["message"],
        "after"
    );

    let dead = cluster.wait_entries("events:dead", 1).await;
    let (_, letter) = dead
        .iter()
        .find(|(_, d)| d["id"] == refused)
        .unwrap_or_else(|| panic!("{refused} not dead-lettered: {dead:?}"));
    assert!(letter["reason"].starts_with("max_deliveries"), "{letter:?}");
    let retried = metric(
        &cluster.url(0),
        "relay_stream_retries_total{type=\"order.status\"}",
    )
    .await;
    assert_eq!(retried, 0.0, "a refused entry must not be retried in place");
}
