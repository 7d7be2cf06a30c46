//! Interest routing (docs/design.md): a node hears a room only while it has
//! sockets there; a socket that joins gets everything published after its
//! join is acknowledged; a node whose pub/sub link went silent fills the gap
//! from the history.

use std::sync::{Arc, Mutex};

use relay::auth::Role;
use relay_client::Client;
use serde_json::json;
use tokio::sync::watch;

use crate::support::{
    Cluster, NodeProcess, WAIT, connect, expect_event, fault_proxy::FaultProxy, metric, token,
};

/// The status updates a client receives, until the one with `last`.
async fn status_ids_until(client: &mut Client, last: &str) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let event = expect_event(client, "order:status_update").await;
        let id = event.data()["event_id"]
            .as_str()
            .expect("event_id")
            .to_owned();
        let done = id == last;
        ids.push(id);
        if done {
            return ids;
        }
    }
}

/// Appends `order.status` events of `order` one after the other until
/// stopped; `count` tells how many are appended, `ids` holds their ids in
/// stream order.
struct Hammer {
    ids: Arc<Mutex<Vec<String>>>,
    count: watch::Receiver<usize>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Hammer {
    fn start(cluster: &Cluster, order: &str) -> Self {
        let ids = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0);
        let (stop, stopped) = watch::channel(false);
        let (redis, events, order) = (cluster.redis.url(), cluster.key("events"), order.to_owned());
        let task = tokio::spawn({
            let ids = ids.clone();
            async move {
                let client = redis::Client::open(redis).expect("redis url");
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis");
                let mut n = 0;
                while !*stopped.borrow() {
                    let data = json!({"order_id": order, "status": format!("s{n}")}).to_string();
                    let id: String = redis::cmd("XADD")
                        .arg(&events)
                        .arg("*")
                        .arg("type")
                        .arg("order.status")
                        .arg("data")
                        .arg(data)
                        .query_async(&mut conn)
                        .await
                        .expect("XADD");
                    ids.lock().unwrap().push(id);
                    n += 1;
                    count_tx.send_replace(n);
                }
            }
        });
        Self {
            ids,
            count,
            stop,
            task,
        }
    }

    /// Waits until at least `n` events are appended.
    async fn appended(&mut self, n: usize) {
        tokio::time::timeout(WAIT, self.count.wait_for(|c| *c >= n))
            .await
            .expect("events appended in time")
            .expect("hammer running");
    }

    fn len(&self) -> usize {
        self.ids.lock().unwrap().len()
    }

    /// Stops appending; returns every id appended, in stream order.
    async fn stop(self) -> Vec<String> {
        self.stop.send_replace(true);
        self.task.await.expect("hammer");
        self.ids.lock().unwrap().clone()
    }
}

/// `seen` is exactly the appended ids from its first one to the end: no
/// gap, no duplicate, no reordering. Returns where it starts.
fn assert_gapless_suffix(who: &str, seen: &[String], appended: &[String]) -> usize {
    let first = appended
        .iter()
        .position(|id| *id == seen[0])
        .unwrap_or_else(|| panic!("{who}: first event {} was never appended", seen[0]));
    assert_eq!(
        seen,
        &appended[first..],
        "{who}: from its first event on, every appended event once and in order"
    );
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_joining_mid_stream_on_another_node_gets_every_later_event_without_a_gap() {
    let cluster = Cluster::start("interest-join", 2, &[]).await;
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}),
        )
        .await;
    // Nobody is in any room of the order on node 1 yet: it subscribes to
    // them only as the clients join, while the events keep coming.
    let support = connect(&cluster.url(1), &token("sup1", Role::Support)).await;
    let mut hammer = Hammer::start(&cluster, "o1");
    hammer.appended(30).await;
    // A join at connect (the customer's handshake rooms) ...
    let mut customer = connect(&cluster.url(1), &token("c1", Role::Customer)).await;
    let customer_joined = hammer.len();
    hammer.appended(customer_joined + 30).await;
    // ... and one on request.
    let ack = support
        .emit_with_ack("order:subscribe", json!({"order_id": "o1"}), WAIT)
        .await
        .expect("subscribe ack");
    assert_eq!(ack[0]["ok"], true, "{ack:?}");
    let support_joined = hammer.len();
    hammer.appended(support_joined + 30).await;
    let appended = hammer.stop().await;
    let last = appended.last().expect("appended").clone();

    let mut support = support;
    let seen = status_ids_until(&mut customer, &last).await;
    let first = assert_gapless_suffix("customer", &seen, &appended);
    assert!(
        first <= customer_joined,
        "the customer got everything appended after it connected (first at {first}, connected at {customer_joined})"
    );
    let seen = status_ids_until(&mut support, &last).await;
    let first = assert_gapless_suffix("support", &seen, &appended);
    assert!(
        first <= support_joined,
        "support got everything appended after its subscribe ack (first at {first}, acked at {support_joined})"
    );
}

/// Subscribers of a room's channel, as Redis counts them.
async fn subscribers(cluster: &Cluster, room: &str) -> u64 {
    let mut conn = cluster.redis.connection().await;
    let (_, count): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(cluster.key(&format!("room:{room}")))
        .query_async(&mut conn)
        .await
        .expect("PUBSUB NUMSUB");
    count
}

async fn eventually_subscribers(cluster: &Cluster, room: &str, expected: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let count = subscribers(cluster, room).await;
        if count == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{room}: {count} subscribers, expected {expected}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_with_sockets_in_a_room_subscribe_to_it_until_the_last_one_leaves() {
    let cluster = Cluster::start("interest-subscriptions", 3, &[]).await;
    let mut customer = connect(&cluster.url(1), &token("c1", Role::Customer)).await;
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}),
        )
        .await;
    let status = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "cooking"}),
        )
        .await;
    assert_eq!(
        expect_event(&mut customer, "order:status_update")
            .await
            .data()["event_id"],
        status
    );
    // The customer's node alone: its own room at connect, the order's and
    // its locations' (a customer watches them) when the cluster-wide join
    // reached it.
    eventually_subscribers(&cluster, "customer_c1", 1).await;
    eventually_subscribers(&cluster, "order_o1", 1).await;
    assert_eq!(subscribers(&cluster, "~loc:order_o1").await, 1);
    assert_eq!(subscribers(&cluster, "merchant_s1").await, 0);
    let gauge = "relay_room_subscriptions";
    assert_eq!(metric(&cluster.url(1), gauge).await, 3.0);
    for empty in [0, 2] {
        assert_eq!(
            metric(&cluster.url(empty), gauge).await,
            0.0,
            "node {empty}"
        );
    }

    customer.disconnect().await;
    // Gone after the linger, on every node.
    eventually_subscribers(&cluster, "customer_c1", 0).await;
    eventually_subscribers(&cluster, "order_o1", 0).await;
    eventually_subscribers(&cluster, "~loc:order_o1", 0).await;
    assert_eq!(metric(&cluster.url(1), gauge).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_pubsub_link_went_silent_fills_the_gap_from_the_history() {
    let cluster = Cluster::start("interest-gap", 1, &[]).await;
    // A second node whose every Redis connection passes a proxy.
    let proxy = FaultProxy::start(
        format!("127.0.0.1:{}", cluster.redis.port())
            .parse()
            .expect("addr"),
    )
    .await;
    let mut env = cluster.env();
    env.retain(|(k, _)| k != "REDIS_URL");
    env.push(("REDIS_URL".to_owned(), proxy.url()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let behind_proxy = NodeProcess::spawn_ready(&env).await;

    let mut customer = connect(&behind_proxy.url(), &token("c1", Role::Customer)).await;
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}),
        )
        .await;
    let mut appended = vec![
        cluster
            .xadd(
                "order.status",
                json!({"order_id": "o1", "status": "before"}),
            )
            .await,
    ];
    assert_eq!(
        status_ids_until(&mut customer, &appended[0]).await,
        appended
    );

    // Its connections go silent: whatever is published now never reaches
    // it live. The other node handles the stream meanwhile.
    proxy.blackhole_open_connections();
    for n in 0..20 {
        appended.push(
            cluster
                .xadd(
                    "order.status",
                    json!({"order_id": "o1", "status": format!("during{n}")}),
                )
                .await,
        );
    }
    // The health watch notices the silence and dials again; the node
    // subscribes again and fills the gap from the history, in order.
    let last_missed = appended.last().expect("appended").clone();
    let mut seen = status_ids_until(&mut customer, &last_missed).await;
    // If this node had dispatched "before" itself, its XACK went into the
    // black hole: the other node claims the entry and emits it again, as
    // at-least-once allows; clients drop the copy by its event_id.
    seen.retain(|id| *id != appended[0]);
    assert_eq!(seen, appended[1..], "every missed event, once and in order");
    assert!(
        metric(&behind_proxy.url(), "relay_gap_filled_events_total").await >= 1.0,
        "the missed events came from the history"
    );
    // And live again afterwards.
    let after = cluster
        .xadd("order.status", json!({"order_id": "o1", "status": "after"}))
        .await;
    assert_eq!(status_ids_until(&mut customer, &after).await, [after]);
}
