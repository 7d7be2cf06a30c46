//! The consumer group under failure: bad entries, entries from before any
//! node, a node killed while holding entries, and ordering under load.

use std::collections::HashMap;

use relay::auth::Role;
use relay::engine::redis::{RedisEngine, RedisSettings};
use relay::engine::{Engine, EventStream};
use serde_json::json;

use crate::support::{Cluster, Kind, WAIT, connect, expect_event, merchant_token, metric, token};

/// `XPENDING key group` summary: count, smallest id, largest id, consumers.
type PendingSummary = (
    u64,
    Option<String>,
    Option<String>,
    Option<Vec<(String, String)>>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_go_to_the_dead_letters_while_later_entries_flow() {
    malformed_entries_go_to_the_dead_letters_while_later_entries_flow_on(Kind::Server).await;
}

async fn malformed_entries_go_to_the_dead_letters_while_later_entries_flow_on(kind: Kind) {
    let cluster = Cluster::start_on(kind, "poison", 2, &[]).await;
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
    later_events_of_an_order_wait_for_earlier_ones_a_stopped_consumer_held_on(Kind::Server).await;
}

async fn later_events_of_an_order_wait_for_earlier_ones_a_stopped_consumer_held_on(kind: Kind) {
    let mut cluster = Cluster::start_on(kind, "held", 0, &[("RELAY_CLAIM_IDLE_MS", "3000")]).await;
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
        target: &cluster.redis.target(),
        tls: &Default::default(),
        key_prefix: &cluster.prefix,
        node_id: "ghost",
        claim_idle: std::time::Duration::from_secs(3),
        max_deliveries: 5,
        max_event_bytes: 64 * 1024,
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
    let created = (0..ORDERS).map(|o| {
        let data = json!({"order_id": format!("o{o}"), "customer_id": format!("c{}", o % CUSTOMERS), "store_id": "nobody", "items": []});
        ("order.created", data)
    });
    let statuses = (0..STATUSES).flat_map(|s| {
        (0..ORDERS).map(move |o| {
            let data = json!({"order_id": format!("o{o}"), "status": format!("s{s}")});
            ("order.status", data)
        })
    });
    cluster.xadd_many(created.chain(statuses)).await;

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

/// Waits (XREAD BLOCK, bounded) until `{prefix}events:dead` holds `n`
/// entries; returns them all with the fields' raw bytes.
async fn dead_letters_raw(cluster: &Cluster, n: usize) -> Vec<(String, HashMap<String, Vec<u8>>)> {
    let key = cluster.key("events:dead");
    let mut conn = cluster.redis.connection().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let dead: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("XRANGE");
        if dead.len() >= n {
            return dead;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "{} of {n} dead letters", dead.len());
        let last = dead.last().map_or("0-0".to_owned(), |(id, _)| id.clone());
        let _: redis::Value = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(left.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(last)
            .query_async(&mut conn)
            .await
            .expect("XREAD");
    }
}

/// CONTRACT §3: a dead letter keeps `type` and `data` as they were, also
/// when they are not text: the very bytes, with the reason `invalid_utf8`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_are_not_utf8_are_dead_lettered_byte_for_byte() {
    let cluster = Cluster::start("notutf8", 1, &[]).await;
    let mut admin = connect(&cluster.url(0), &token("a1", Role::Admin)).await;
    let bad_data: &[u8] = b"{\"order_id\":\"o1\",\"status\":\"ready\xff\xfe\"}";
    let bad_type: &[u8] = b"order.st\xc3\x28tus";
    let mut conn = cluster.redis.connection().await;
    let xadd = |kind: &[u8], data: &[u8]| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(cluster.key("events"))
            .arg("*")
            .arg("type")
            .arg(kind)
            .arg("data")
            .arg(data);
        cmd
    };
    let with_bad_data: String = xadd(b"order.status", bad_data)
        .query_async(&mut conn)
        .await
        .expect("XADD");
    let with_bad_type: String = xadd(bad_type, br#"{"order_id":"o2","status":"x"}"#)
        .query_async(&mut conn)
        .await
        .expect("XADD");
    // A later entry proves the consumer went on.
    cluster
        .xadd("admin.alert", json!({"level": "info", "message": "after"}))
        .await;
    assert_eq!(
        expect_event(&mut admin, "admin:alert").await.data()["message"],
        "after"
    );
    let dead = dead_letters_raw(&cluster, 2).await;
    let letter = |id: &str| {
        dead.iter()
            .find(|(_, d)| d.get("id").map(Vec::as_slice) == Some(id.as_bytes()))
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {dead:?}"))
    };
    let reason = |d: &HashMap<String, Vec<u8>>| {
        String::from_utf8_lossy(&d["reason"])
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let first = letter(&with_bad_data);
    assert_eq!(reason(&first), "invalid_utf8", "{first:?}");
    assert_eq!(first.get("data").map(Vec::as_slice), Some(bad_data));
    assert_eq!(
        first.get("type").map(Vec::as_slice),
        Some(&b"order.status"[..])
    );
    let second = letter(&with_bad_type);
    assert_eq!(reason(&second), "invalid_utf8", "{second:?}");
    assert_eq!(second.get("type").map(Vec::as_slice), Some(bad_type));
    assert_eq!(
        second.get("data").map(Vec::as_slice),
        Some(&br#"{"order_id":"o2","status":"x"}"#[..])
    );
}

/// An entry beyond `RELAY_MAX_EVENT_BYTES` goes to the dead letters as it
/// was, with the reason `too_large`: never emitted, never recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_beyond_the_size_limit_is_dead_lettered_not_emitted_or_recorded() {
    an_entry_beyond_the_size_limit_is_dead_lettered_not_emitted_or_recorded_on(Kind::Server).await;
}

async fn an_entry_beyond_the_size_limit_is_dead_lettered_not_emitted_or_recorded_on(kind: Kind) {
    let cluster =
        Cluster::start_on(kind, "toolarge", 1, &[("RELAY_MAX_EVENT_BYTES", "65536")]).await;
    let mut admin = connect(&cluster.url(0), &token("a1", Role::Admin)).await;
    let huge = json!({"level": "warn", "message": "x".repeat(100 * 1024)}).to_string();
    let big = cluster
        .xadd_raw(&[("type", "admin.alert"), ("data", &huge)])
        .await;
    cluster
        .xadd("admin.alert", json!({"level": "info", "message": "after"}))
        .await;
    // The first alert the admin gets is the small one: the big one never came.
    assert_eq!(
        expect_event(&mut admin, "admin:alert").await.data()["message"],
        "after"
    );
    let dead = cluster.wait_entries("events:dead", 1).await;
    assert_eq!(
        dead.len(),
        1,
        "{:?}",
        dead.iter().map(|(id, _)| id).collect::<Vec<_>>()
    );
    let letter = &dead[0].1;
    assert_eq!(letter["id"], big);
    assert!(
        letter["reason"].starts_with("too_large"),
        "{}",
        letter["reason"]
    );
    assert_eq!(letter["type"], "admin.alert");
    assert!(letter["data"] == huge, "data kept as it was");
    // Alerts run side by side: one appended after the dead letter is
    // written is the admin's very next event.
    cluster
        .xadd("admin.alert", json!({"level": "info", "message": "last"}))
        .await;
    assert_eq!(
        expect_event(&mut admin, "admin:alert").await.data()["message"],
        "last"
    );
    // Recorded: only the small alerts, in the room's and the cluster's history.
    for history in ["history:admin_updates", "history:all"] {
        let recorded = cluster.entries_of(&cluster.history_key(history)).await;
        assert_eq!(recorded.len(), 2, "{history}: {} entries", recorded.len());
    }
    let mut conn = cluster.redis.connection().await;
    let pending: PendingSummary = redis::cmd("XPENDING")
        .arg(cluster.key("events"))
        .arg(cluster.key("relay"))
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    assert_eq!(pending.0, 0, "{pending:?}");
}

/// The same behaviours with the nodes on a Redis Cluster (three primaries
/// with a replica each) instead of one server.
mod on_a_redis_cluster {
    use crate::support::Kind;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_entries_go_to_the_dead_letters_while_later_entries_flow() {
        super::malformed_entries_go_to_the_dead_letters_while_later_entries_flow_on(Kind::Cluster)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_entry_beyond_the_size_limit_is_dead_lettered_not_emitted_or_recorded() {
        super::an_entry_beyond_the_size_limit_is_dead_lettered_not_emitted_or_recorded_on(
            Kind::Cluster,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn later_events_of_an_order_wait_for_earlier_ones_a_stopped_consumer_held() {
        super::later_events_of_an_order_wait_for_earlier_ones_a_stopped_consumer_held_on(
            Kind::Cluster,
        )
        .await;
    }
}
