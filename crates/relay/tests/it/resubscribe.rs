//! issue #17 (2): the orders a socket joined with `order:subscribe` are
//! remembered per user, on every node: a socket of that user that resumes
//! (`auth.last_event_id`, or `sync`) gets their missed events like those of
//! its own rooms and is in their rooms again; `order:unsubscribe` is
//! remembered too.

use relay::auth::Role;
use relay_client::{Client, Event};
use serde_json::json;

use crate::support::{
    API_KEY, Cluster, InProcessNode, WAIT, ask, connect, expect_event, publish, resume, token,
    until_sync_done,
};

async fn subscribe(client: &Client, event: &str, order: &str) {
    let ack = ask(client, event, json!({ "order_id": order })).await;
    assert_eq!(ack, json!({ "ok": true }), "{event} {order}");
}

fn statuses(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            assert_eq!(e.name, "order:status_update", "{e:?}");
            (
                e.data()["order_id"].as_str().unwrap_or_default().to_owned(),
                e.data()["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn pair(order: &str, status: &str) -> (String, String) {
    (order.to_owned(), status.to_owned())
}

async fn status(cluster: &Cluster, order: &str, status: &str) -> String {
    cluster
        .xadd("order.status", json!({"order_id": order, "status": status}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_support_agent_resuming_on_the_other_node_is_back_in_the_orders_it_subscribed_to() {
    let cluster = Cluster::start("resubscribe", 2, &[]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    for (order, customer) in [("o1", "c1"), ("o2", "c2"), ("o3", "c3")] {
        cluster.create_order(order, customer, "s1").await;
    }
    let mut c2 = connect(&b, &token("c2", Role::Customer)).await;
    // A foreign order is only support's and admin's to watch.
    let stranger = connect(&a, &token("c9", Role::Customer)).await;
    let refused = ask(&stranger, "order:subscribe", json!({ "order_id": "o1" })).await;
    assert_eq!(refused["ok"], false, "{refused}");

    let mut support = connect(&a, &token("sup1", Role::Support)).await;
    for order in ["o1", "o2", "o3"] {
        subscribe(&support, "order:subscribe", order).await;
    }
    let seen = status(&cluster, "o1", "accepted").await;
    let update = expect_event(&mut support, "order:status_update").await;
    assert_eq!(update.data()["event_id"], seen);
    subscribe(&support, "order:unsubscribe", "o2").await;
    support.disconnect().await;

    // While it is away: updates of each order, and o3 ends.
    status(&cluster, "o1", "preparing").await;
    status(&cluster, "o2", "preparing").await;
    status(&cluster, "o3", "delivered").await;
    let ready = status(&cluster, "o1", "ready").await;
    expect_event(&mut c2, "order:status_update").await;
    // Everything recorded before the resume: what it missed, not live.
    cluster.wait_handled(&ready).await;

    // Back, on the other node, with the last event it saw.
    let mut support = resume(&b, &token("sup1", Role::Support), &seen).await;
    let (missed, done) = until_sync_done(&mut support).await;
    assert_eq!(done, json!({ "recovered": true }));
    let mut missed = statuses(&missed);
    missed.sort();
    assert_eq!(
        missed,
        [
            pair("o1", "preparing"),
            pair("o1", "ready"),
            pair("o3", "delivered")
        ],
        "o1's and o3's updates, not o2's (unsubscribed)"
    );

    // Live again in o1, not in o2 nor in o3 (over, and forgotten). An o2
    // update published before an o1 update would reach it first.
    status(&cluster, "o2", "ready").await;
    assert_eq!(
        expect_event(&mut c2, "order:status_update").await.data()["status"],
        "ready"
    );
    let picked_up = status(&cluster, "o1", "picked_up").await;
    let next = expect_event(&mut support, "order:status_update").await;
    assert_eq!(
        (&next.data()["order_id"], &next.data()["event_id"]),
        (&json!("o1"), &json!(picked_up)),
        "{next:?}"
    );
    let mut conn = cluster.redis.connection().await;
    let watched: Vec<String> = redis::cmd("ZRANGE")
        .arg(cluster.key("watching:support:sup1"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("ZRANGE");
    assert_eq!(watched, ["o1"], "o2 unsubscribed, o3 over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_puts_a_connected_socket_back_in_the_orders_it_subscribed_to() {
    let cluster = Cluster::start("resubscribe-sync", 2, &[]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    cluster.create_order("o1", "c1", "s1").await;
    let mut admin = connect(&a, &token("adm1", Role::Admin)).await;
    subscribe(&admin, "order:subscribe", "o1").await;
    let seen = status(&cluster, "o1", "accepted").await;
    expect_event(&mut admin, "order:status_update").await;
    admin.disconnect().await;

    // A plain reconnect (no last_event_id) starts afresh, outside o1; its
    // `sync` brings back what it missed of o1, and the room.
    let mut admin = connect(&b, &token("adm1", Role::Admin)).await;
    let mut c1 = connect(&b, &token("c1", Role::Customer)).await;
    status(&cluster, "o1", "preparing").await;
    // Published (c1 has it) before the alert: an admin in o1 would get it first.
    expect_event(&mut c1, "order:status_update").await;
    let alert = cluster
        .xadd("admin.alert", json!({"level": "info", "message": "marker"}))
        .await;
    let next = admin.next_event(WAIT).await.expect("event");
    assert_eq!(
        (next.name.as_str(), &next.data()["event_id"]),
        ("admin:alert", &json!(alert)),
        "not in o1 before sync: {next:?}"
    );
    let ack = ask(&admin, "sync", json!({ "last_event_id": seen })).await;
    assert_eq!(ack, json!({ "ok": true, "recovered": true }));
    let (missed, done) = until_sync_done(&mut admin).await;
    assert_eq!(done, json!({ "recovered": true }));
    let missed: Vec<_> = missed
        .iter()
        .filter(|e| e.name == "order:status_update")
        .map(|e| e.data()["status"].clone())
        .collect();
    assert_eq!(missed, [json!("preparing")]);
    let ready = status(&cluster, "o1", "ready").await;
    let next = expect_event(&mut admin, "order:status_update").await;
    assert_eq!(next.data()["event_id"], ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_remembers_subscriptions_for_resumes() {
    let node = InProcessNode::start_ready(&[("RELAY_API_KEY", API_KEY)]).await;
    let url = node.url();
    publish(
        &url,
        "order.created",
        json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}),
    )
    .await;
    let mut support = connect(&url, &token("sup1", Role::Support)).await;
    subscribe(&support, "order:subscribe", "o1").await;
    let seen = publish(
        &url,
        "order.status",
        json!({"order_id": "o1", "status": "accepted"}),
    )
    .await;
    expect_event(&mut support, "order:status_update").await;
    support.disconnect().await;
    publish(
        &url,
        "order.status",
        json!({"order_id": "o1", "status": "preparing"}),
    )
    .await;

    let mut support = resume(&url, &token("sup1", Role::Support), &seen).await;
    let (missed, done) = until_sync_done(&mut support).await;
    assert_eq!(done, json!({ "recovered": true }));
    assert_eq!(statuses(&missed), [pair("o1", "preparing")]);
    let ready = publish(
        &url,
        "order.status",
        json!({"order_id": "o1", "status": "ready"}),
    )
    .await;
    let next = expect_event(&mut support, "order:status_update").await;
    assert_eq!(next.data()["event_id"], ready);
}
