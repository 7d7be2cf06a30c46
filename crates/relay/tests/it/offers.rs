//! Durable offers: `merchant:new_order` reaches a merchant that was offline
//! or reconnecting while its timer runs, on any node, also when the node
//! that made the offer dies; and there is exactly one outcome per offer.

use std::time::Duration;

use redis::Value;
use serde_json::json;

use crate::support::{Cluster, Kind, WAIT, connect, expect_event, merchant_token};

async fn order_for_store(cluster: &Cluster, order: &str, store: &str, timer_s: u32) -> String {
    cluster
        .xadd(
            "order.created",
            json!({"order_id": order, "customer_id": "c1", "store_id": store, "items": [], "accept_timeout_s": timer_s}),
        )
        .await
}

/// Outcomes of `event_id`, once the stream entry behind it is acknowledged
/// (so no node can still write one).
async fn settled_outcomes(cluster: &Cluster, event_id: &str) -> Vec<String> {
    let mut conn = cluster.redis.connection().await;
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let pending: Value = redis::cmd("XPENDING")
            .arg(cluster.key("events"))
            .arg(format!("{}relay", cluster.prefix))
            .arg(event_id)
            .arg(event_id)
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("XPENDING");
        if matches!(&pending, Value::Array(items) if items.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "entry {event_id} still pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster
        .entries("outcomes")
        .await
        .into_iter()
        .filter(|(_, o)| o["event_id"] == event_id)
        .map(|(_, o)| o["outcome"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_offline_when_the_order_arrives_gets_it_when_it_connects() {
    a_merchant_offline_when_the_order_arrives_gets_it_when_it_connects_on(Kind::Server).await;
}

async fn a_merchant_offline_when_the_order_arrives_gets_it_when_it_connects_on(kind: Kind) {
    let cluster = Cluster::start_on(kind, "offline-merchant", 2, &[]).await;
    let id = order_for_store(&cluster, "o1", "s1", 30).await;
    // The merchant's tablet comes online 5 s later, on either node.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut tablet = connect(&cluster.url(1), &merchant_token("m1", &["s1"])).await;
    let offer = expect_event(&mut tablet, "merchant:new_order").await;
    assert_eq!(offer.data()["event_id"], id);
    assert!(offer.needs_ack());
    tablet
        .ack(&offer, json!({"accepted": true}))
        .await
        .expect("ack");
    assert_eq!(settled_outcomes(&cluster, &id).await, ["acked"]);
}

/// More offers waiting for their merchants than a node has read slots
/// (1,024): an event behind them is still read and handled at once, not
/// after the offers' timers (60 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_waiting_for_merchants_do_not_stop_the_stream_behind_them() {
    let cluster = Cluster::start("open-offers", 1, &[]).await;
    cluster
        .xadd_many((0..1_100).map(|i| {
            let data = json!({"order_id": format!("busy{i}"), "customer_id": "c1", "store_id": "s-closed", "items": [], "accept_timeout_s": 60});
            ("order.created", data)
        }))
        .await;
    let behind = cluster
        .xadd(
            "order.status",
            json!({"order_id": "elsewhere", "status": "preparing"}),
        )
        .await;
    cluster.wait_handled(&behind).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_that_drops_before_acking_gets_the_offer_again_on_reconnect() {
    let cluster = Cluster::start("reconnecting-merchant", 2, &[]).await;
    let mut tablet = connect(&cluster.url(0), &merchant_token("m1", &["s1"])).await;
    let id = order_for_store(&cluster, "o1", "s1", 30).await;
    let first = expect_event(&mut tablet, "merchant:new_order").await;
    assert_eq!(first.data()["event_id"], id);
    tablet.disconnect().await;

    let mut again = connect(&cluster.url(1), &merchant_token("m1", &["s1"])).await;
    let offer = expect_event(&mut again, "merchant:new_order").await;
    assert_eq!(
        offer.data()["event_id"],
        id,
        "the same offer, same event_id"
    );
    again
        .ack(&offer, json!({"accepted": false, "reason": "busy"}))
        .await
        .expect("ack");
    assert_eq!(settled_outcomes(&cluster, &id).await, ["acked"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_survives_the_node_that_made_it() {
    an_offer_survives_the_node_that_made_it_on(Kind::Server).await;
}

async fn an_offer_survives_the_node_that_made_it_on(kind: Kind) {
    let mut cluster = Cluster::start_on(
        kind,
        "offer-takeover",
        1,
        &[("RELAY_CLAIM_IDLE_MS", "1000")],
    )
    .await;
    let mut tablet = connect(&cluster.url(0), &merchant_token("m1", &["s1"])).await;
    let acked = order_for_store(&cluster, "o1", "s1", 20).await;
    assert_eq!(
        expect_event(&mut tablet, "merchant:new_order").await.data()["event_id"],
        acked
    );
    // An offer its merchant sees but never answers, held by the same node.
    let mut quiet = connect(&cluster.url(0), &merchant_token("m2", &["s2"])).await;
    let silent = order_for_store(&cluster, "o2", "s2", 4).await;
    expect_event(&mut quiet, "merchant:new_order").await;
    cluster.add_node(None).await;
    cluster.nodes[0].kill().await;

    // The tablet comes back on the surviving node; that node claims the
    // entry and offers it again for what is left of its timer.
    let mut again = connect(&cluster.url(1), &merchant_token("m1", &["s1"])).await;
    let offer = expect_event(&mut again, "merchant:new_order").await;
    assert_eq!(offer.data()["event_id"], acked);
    again
        .ack(&offer, json!({"accepted": true}))
        .await
        .expect("ack");
    assert_eq!(settled_outcomes(&cluster, &acked).await, ["acked"]);
    // Offered by the dead node, never answered: one timeout, from the survivor.
    assert_eq!(settled_outcomes(&cluster, &silent).await, ["timeout"]);
}

/// The same behaviours with the nodes on a Redis Cluster (three primaries
/// with a replica each) instead of one server.
mod on_a_redis_cluster {
    use crate::support::Kind;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_merchant_offline_when_the_order_arrives_gets_it_when_it_connects() {
        super::a_merchant_offline_when_the_order_arrives_gets_it_when_it_connects_on(Kind::Cluster)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_offer_survives_the_node_that_made_it() {
        super::an_offer_survives_the_node_that_made_it_on(Kind::Cluster).await;
    }
}
