//! CONTRACT §2, recovery of missed events: a client that comes back with its
//! last event id gets everything it missed, in order and once, then
//! `sync:done`; or, when the history no longer reaches back, only
//! `sync:done` `{ recovered: false }`.

use relay::auth::Role;
use serde_json::json;

use crate::support::{
    API_KEY, Cluster, InProcessNode, Kind, WAIT, connect, expect_event, publish, resume, token,
    until_sync_done,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_back_with_its_last_event_id_gets_exactly_what_it_missed_in_order() {
    a_customer_back_with_its_last_event_id_gets_exactly_what_it_missed_in_order_on(Kind::Server)
        .await;
}

async fn a_customer_back_with_its_last_event_id_gets_exactly_what_it_missed_in_order_on(
    kind: Kind,
) {
    let cluster = Cluster::start_on(kind, "recovery", 2, &[]).await;
    let mut customer = connect(&cluster.url(0), &token("c1", Role::Customer)).await;
    cluster.create_order("o1", "c1", "s1").await;
    let first = cluster
        .xadd("order.status", json!({"order_id": "o1", "status": "s0"}))
        .await;
    let seen = expect_event(&mut customer, "order:status_update").await;
    assert_eq!(seen.data()["event_id"], first);
    customer.disconnect().await;

    let mut missed = Vec::new();
    for i in 1..=50 {
        missed.push(
            cluster
                .xadd(
                    "order.status",
                    json!({"order_id": "o1", "status": format!("s{i}")}),
                )
                .await,
        );
    }
    // Wait until the relay has recorded all 50 for the customer's room.
    let mut conn = cluster.redis.connection().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let recorded: usize = redis::cmd("XLEN")
            .arg(cluster.history_key("history:customer_c1"))
            .query_async(&mut conn)
            .await
            .expect("XLEN");
        if recorded == 51 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{recorded} of 51 recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Back, on the other node, with the last event it saw.
    let mut back = resume(&cluster.url(1), &token("c1", Role::Customer), &first).await;
    let (replayed, done) = until_sync_done(&mut back).await;
    assert_eq!(done, json!({"recovered": true}));
    let ids: Vec<&str> = replayed
        .iter()
        .map(|e| {
            assert_eq!(e.name, "order:status_update");
            e.data()["event_id"].as_str().expect("event_id")
        })
        .collect();
    let statuses: Vec<String> = replayed
        .iter()
        .map(|e| e.data()["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    let expected: Vec<String> = (1..=50).map(|i| format!("s{i}")).collect();
    assert_eq!(
        statuses, expected,
        "exactly the 50 missed, in order, each once"
    );
    // Each update numbers itself within its order: a client sees a gap at once.
    assert_eq!(seen.data()["seq"], 1);
    let seqs: Vec<u64> = replayed
        .iter()
        .map(|e| e.data()["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (2..=51).collect::<Vec<u64>>());
    assert_eq!(ids, missed);

    // And it is in its rooms again: the next update arrives live.
    cluster
        .xadd("order.status", json!({"order_id": "o1", "status": "live"}))
        .await;
    assert_eq!(
        expect_event(&mut back, "order:status_update").await.data()["status"],
        "live"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_older_than_the_history_gets_no_partial_replay() {
    let cluster = Cluster::start("recovery-window", 2, &[("RELAY_HISTORY_SIZE", "10")]).await;
    let mut customer = connect(&cluster.url(0), &token("c1", Role::Customer)).await;
    cluster.create_order("o1", "c1", "s1").await;
    let first = cluster
        .xadd("order.status", json!({"order_id": "o1", "status": "s0"}))
        .await;
    expect_event(&mut customer, "order:status_update").await;
    for i in 1..=20 {
        cluster
            .xadd(
                "order.status",
                json!({"order_id": "o1", "status": format!("s{i}")}),
            )
            .await;
    }
    loop {
        let event = expect_event(&mut customer, "order:status_update").await;
        if event.data()["status"] == "s20" {
            break;
        }
    }
    customer.disconnect().await;

    let mut back = resume(&cluster.url(1), &token("c1", Role::Customer), &first).await;
    let (replayed, done) = until_sync_done(&mut back).await;
    assert_eq!(done, json!({"recovered": false}));
    assert!(replayed.is_empty(), "no partial replay: {replayed:?}");
    // Unknown ids are not recovered either.
    let mut stranger = resume(&cluster.url(0), &token("c1", Role::Customer), "1-0").await;
    let (replayed, done) = until_sync_done(&mut stranger).await;
    assert_eq!((replayed.len(), done), (0, json!({"recovered": false})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_while_connected_replays_after_the_given_event_and_acks() {
    let node = InProcessNode::start_ready(&[("RELAY_API_KEY", API_KEY)]).await;
    let url = node.url();
    let mut customer = connect(&url, &token("c1", Role::Customer)).await;
    let mut ids = Vec::new();
    for (kind, data) in [
        (
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}),
        ),
        ("order.status", json!({"order_id": "o1", "status": "a"})),
        ("order.status", json!({"order_id": "o1", "status": "b"})),
        ("order.status", json!({"order_id": "o1", "status": "c"})),
    ] {
        ids.push(publish(&url, kind, data).await);
    }
    for status in ["a", "b", "c"] {
        assert_eq!(
            expect_event(&mut customer, "order:status_update")
                .await
                .data()["status"],
            status
        );
    }
    let ack = customer
        .emit_with_ack("sync", json!({"last_event_id": ids[1]}), WAIT)
        .await
        .expect("sync ack");
    assert_eq!(ack[0], json!({"ok": true, "recovered": true}));
    let (replayed, done) = until_sync_done(&mut customer).await;
    let statuses: Vec<_> = replayed
        .iter()
        .map(|e| e.data()["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("b"), json!("c")]);
    assert_eq!(done, json!({"recovered": true}));

    let bad = customer
        .emit_with_ack("sync", json!({"since": 1}), WAIT)
        .await
        .expect("sync ack");
    assert_eq!(bad[0]["ok"], false);
}

/// The same behaviours with the nodes on a Redis Cluster (three primaries
/// with a replica each) instead of one server.
mod on_a_redis_cluster {
    use crate::support::Kind;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_customer_back_with_its_last_event_id_gets_exactly_what_it_missed_in_order() {
        super::a_customer_back_with_its_last_event_id_gets_exactly_what_it_missed_in_order_on(
            Kind::Cluster,
        )
        .await;
    }
}
