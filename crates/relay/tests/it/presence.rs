//! CONTRACT §7 presence: stores and drivers online across nodes, the grace
//! that keeps a reconnect from showing as an outage, `{prefix}presence`
//! once per change, dead nodes, token refresh, `GET /api/presence`, and the
//! memory engine; the cross-node behaviours also on a Redis Cluster.

use std::{collections::HashMap, time::Duration};

use relay::auth::Role;
use relay_client::Client;
use serde_json::{Value as Json, json};

use crate::support::{
    API_KEY, Cluster, InProcessNode, Kind, WAIT, ask, connect, http, merchant_token, metric, token,
};

type Entry = (String, HashMap<String, String>);

fn now_ms() -> u64 {
    relay::events::now_ms()
}

/// The `{prefix}presence` entries of one id, as (online, ts).
async fn changes_of(cluster: &Cluster, kind: &str, id: &str) -> Vec<(bool, u64)> {
    of(&cluster.entries("presence").await, kind, id)
}

fn of(entries: &[Entry], kind: &str, id: &str) -> Vec<(bool, u64)> {
    entries
        .iter()
        .filter(|(_, f)| f["kind"] == kind && f["id"] == id)
        .map(|(_, f)| {
            assert!(
                f["online"] == "true" || f["online"] == "false",
                "online is true or false: {f:?}"
            );
            (
                f["online"] == "true",
                f["ts"].parse().expect("ts is unix ms"),
            )
        })
        .collect()
}

/// Waits (within `bound`) until the id has `n` entries, and returns them.
async fn wait_changes(
    cluster: &Cluster,
    kind: &str,
    id: &str,
    n: usize,
    bound: Duration,
) -> Vec<(bool, u64)> {
    let what = format!("{n} presence entries of {kind} {id}");
    let all = cluster
        .wait_entries_until("presence", bound, &what, |all| of(all, kind, id).len() >= n)
        .await;
    of(&all, kind, id)
}

async fn query(url: &str, query: &str, key: Option<&str>) -> (u16, Json) {
    let mut request = http().get(format!("{url}/api/presence?{query}"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("GET /api/presence");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

async fn leave(client: Client) -> u64 {
    let before = now_ms();
    client.disconnect().await;
    before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_is_online_at_once_and_a_reconnect_within_the_grace_is_no_change() {
    a_driver_is_online_at_once_and_a_reconnect_within_the_grace_is_no_change_on(Kind::Server).await;
}

async fn a_driver_is_online_at_once_and_a_reconnect_within_the_grace_is_no_change_on(kind: Kind) {
    let grace = 5000;
    let cluster = Cluster::start_on(
        kind,
        "presence-grace",
        2,
        &[("RELAY_PRESENCE_GRACE_MS", &grace.to_string())],
    )
    .await;
    let jwt = token("d1", Role::Driver);
    let first = connect(&cluster.url(0), &jwt).await;
    let online = wait_changes(&cluster, "driver", "d1", 1, WAIT).await;
    assert!(online[0].0, "{online:?}");
    // The app drops its connection and is back, on the other node.
    leave(first).await;
    let second = connect(&cluster.url(1), &jwt).await;
    let (status, body) = query(&cluster.url(1), "driver_id=d1", Some(API_KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({ "stores": {}, "drivers": { "d1": { "online": true, "since": online[0].1 } } })
    );
    // Gone for good: offline once the grace has passed since it left.
    let left_at = leave(second).await;
    let all = wait_changes(
        &cluster,
        "driver",
        "d1",
        2,
        WAIT + Duration::from_millis(grace),
    )
    .await;
    assert_eq!(
        all.iter().map(|c| c.0).collect::<Vec<_>>(),
        [true, false],
        "one entry per change, none for the reconnect: {all:?}"
    );
    assert!(all[1].1 >= left_at + grace, "{all:?}, left at {left_at}");
    let (_, body) = query(&cluster.url(0), "driver_id=d1", Some(API_KEY)).await;
    assert_eq!(
        body["drivers"]["d1"],
        json!({ "online": false, "since": all[1].1 })
    );
    let changes = metric(
        &cluster.url(0),
        "relay_presence_changes_total{kind=\"driver\",online=\"false\"}",
    )
    .await
        + metric(
            &cluster.url(1),
            "relay_presence_changes_total{kind=\"driver\",online=\"false\"}",
        )
        .await;
    assert_eq!(
        changes, 1.0,
        "the offline change is counted once, cluster-wide"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_on_two_nodes_keeps_its_store_online_until_both_devices_left() {
    a_merchant_on_two_nodes_keeps_its_store_online_until_both_devices_left_on(Kind::Server).await;
}

async fn a_merchant_on_two_nodes_keeps_its_store_online_until_both_devices_left_on(kind: Kind) {
    let grace = 1000;
    let cluster = Cluster::start_on(
        kind,
        "presence-two-devices",
        2,
        &[("RELAY_PRESENCE_GRACE_MS", &grace.to_string())],
    )
    .await;
    let jwt = merchant_token("m1", &["s1"]);
    let tablet = connect(&cluster.url(0), &jwt).await;
    let phone = connect(&cluster.url(1), &jwt).await;
    // A driver that leaves with the tablet: its offline entry marks the
    // moment the tablet's grace is over.
    let witness = connect(&cluster.url(0), &token("witness", Role::Driver)).await;
    wait_changes(&cluster, "driver", "witness", 1, WAIT).await;
    leave(tablet).await;
    leave(witness).await;
    wait_changes(&cluster, "driver", "witness", 2, WAIT).await;
    assert_eq!(
        changes_of(&cluster, "store", "s1").await.len(),
        1,
        "s1 online once and still online with the phone there"
    );
    let (_, body) = query(&cluster.url(0), "store_id=s1", Some(API_KEY)).await;
    assert_eq!(body["stores"]["s1"]["online"], true);
    let left_at = leave(phone).await;
    let all = wait_changes(&cluster, "store", "s1", 2, WAIT).await;
    assert_eq!(all.iter().map(|c| c.0).collect::<Vec<_>>(), [true, false]);
    assert!(all[1].1 >= left_at + grace, "{all:?}, left at {left_at}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_sockets_stop_counting_within_the_grace_plus_10_s() {
    a_killed_nodes_sockets_stop_counting_within_the_grace_plus_10_s_on(Kind::Server).await;
}

async fn a_killed_nodes_sockets_stop_counting_within_the_grace_plus_10_s_on(kind: Kind) {
    let grace: u64 = 1000;
    let mut cluster = Cluster::start_on(
        kind,
        "presence-killed",
        2,
        &[("RELAY_PRESENCE_GRACE_MS", &grace.to_string())],
    )
    .await;
    let _driver = connect(&cluster.url(1), &token("d1", Role::Driver)).await;
    let _merchant = connect(&cluster.url(1), &merchant_token("m1", &["s1", "s2"])).await;
    // s2 is also open on the node that survives.
    let _other = connect(&cluster.url(0), &merchant_token("m2", &["s2"])).await;
    wait_changes(&cluster, "store", "s1", 1, WAIT).await;
    wait_changes(&cluster, "driver", "d1", 1, WAIT).await;
    let killed_at = now_ms();
    cluster.nodes[1].kill().await;
    let bound = Duration::from_millis(grace + 10_000);
    let driver = wait_changes(&cluster, "driver", "d1", 2, bound + WAIT).await;
    let store = wait_changes(&cluster, "store", "s1", 2, WAIT).await;
    for (what, all) in [("d1", &driver), ("s1", &store)] {
        assert_eq!(
            all.iter().map(|c| c.0).collect::<Vec<_>>(),
            [true, false],
            "{what}"
        );
        let after = all[1].1.saturating_sub(killed_at);
        assert!(
            after <= grace + 10_000,
            "{what} offline {after} ms after the kill: beyond grace + 10 s"
        );
        eprintln!("{what}: offline {after} ms after the node was killed (grace {grace} ms)");
    }
    assert_eq!(
        changes_of(&cluster, "store", "s2").await.len(),
        1,
        "s2 stays online: a live node still has it"
    );
    // The gauge follows at the surviving node's next sweep.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let online = metric(&cluster.url(0), "relay_presence_online{kind=\"store\"}").await;
        if online == 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "online stores: {online}, s2 alone expected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_on_the_same_stores_append_one_entry_per_change() {
    two_nodes_racing_on_the_same_stores_append_one_entry_per_change_on(Kind::Server).await;
}

async fn two_nodes_racing_on_the_same_stores_append_one_entry_per_change_on(kind: Kind) {
    let cluster = Cluster::start_on(
        kind,
        "presence-race",
        2,
        &[("RELAY_PRESENCE_GRACE_MS", "0")],
    )
    .await;
    let stores: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    let store_refs: Vec<&str> = stores.iter().map(String::as_str).collect();
    for round in 1..=2 {
        // Merchants of every store arrive on both nodes at once, then all leave at once.
        let mut arriving = Vec::new();
        for m in 0..6 {
            let url = cluster.url(m % 2);
            let jwt = merchant_token(&format!("m{m}"), &store_refs);
            arriving.push(tokio::spawn(async move { connect(&url, &jwt).await }));
        }
        let mut clients = Vec::new();
        for a in arriving {
            clients.push(a.await.expect("connect"));
        }
        for store in &stores {
            wait_changes(&cluster, "store", store, 2 * round - 1, WAIT).await;
        }
        let leaving: Vec<_> = clients
            .into_iter()
            .map(|c| tokio::spawn(c.disconnect()))
            .collect();
        for l in leaving {
            l.await.expect("disconnect");
        }
        for store in &stores {
            wait_changes(&cluster, "store", store, 2 * round, WAIT).await;
        }
    }
    let entries = cluster.entries("presence").await;
    for store in &stores {
        let all = of(&entries, "store", store);
        assert_eq!(
            all.iter().map(|c| c.0).collect::<Vec<_>>(),
            [true, false, true, false],
            "{store}: exactly once per change, in order"
        );
        assert!(all.windows(2).all(|w| w[0].1 <= w[1].1), "{store}: {all:?}");
    }
    assert_eq!(entries.len(), stores.len() * 4, "nothing else: {entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_changes_store_ids_moves_the_merchants_presence() {
    a_refresh_that_changes_store_ids_moves_the_merchants_presence_on(Kind::Server).await;
}

async fn a_refresh_that_changes_store_ids_moves_the_merchants_presence_on(kind: Kind) {
    let grace = 1000;
    let cluster = Cluster::start_on(
        kind,
        "presence-refresh",
        2,
        &[("RELAY_PRESENCE_GRACE_MS", &grace.to_string())],
    )
    .await;
    let client = connect(&cluster.url(0), &merchant_token("m1", &["s1", "s2"])).await;
    wait_changes(&cluster, "store", "s1", 1, WAIT).await;
    wait_changes(&cluster, "store", "s2", 1, WAIT).await;
    let ack = ask(
        &client,
        "auth:refresh",
        json!({ "token": merchant_token("m1", &["s2", "s3"]) }),
    )
    .await;
    let refreshed_at = now_ms();
    assert_eq!(ack["ok"], true, "{ack}");
    let s3 = wait_changes(&cluster, "store", "s3", 1, WAIT).await;
    assert!(s3[0].0, "a store added comes online: {s3:?}");
    let s1 = wait_changes(&cluster, "store", "s1", 2, WAIT).await;
    assert_eq!(s1.iter().map(|c| c.0).collect::<Vec<_>>(), [true, false]);
    assert!(
        s1[1].1 + 100 >= refreshed_at + grace,
        "after the grace: {s1:?}"
    );
    assert_eq!(
        changes_of(&cluster, "store", "s2").await.len(),
        1,
        "a store kept is no change"
    );
    let (_, body) = query(
        &cluster.url(1),
        "store_id=s1&store_id=s2&store_id=s3",
        Some(API_KEY),
    )
    .await;
    let online = |s: &str| body["stores"][s]["online"].clone();
    assert_eq!(
        (online("s1"), online("s2"), online("s3")),
        (json!(false), json!(true), json!(true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_presence_api_checks_its_key_and_its_query_and_counts_refusals() {
    let cluster = Cluster::start("presence-api", 1, &[]).await;
    let url = cluster.url(0);
    let _driver = connect(&url, &token("d1", Role::Driver)).await;
    let since = wait_changes(&cluster, "driver", "d1", 1, WAIT).await[0].1;
    let (status, body) = query(
        &url,
        "driver_id=d1&store_id=never&driver_id=d1",
        Some(API_KEY),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "stores": { "never": { "online": false, "since": 0 } },
            "drivers": { "d1": { "online": true, "since": since } }
        })
    );
    let counted = |reason: &'static str| {
        let url = url.clone();
        async move {
            metric(
                &url,
                &format!("relay_presence_queries_rejected_total{{reason=\"{reason}\"}}"),
            )
            .await
        }
    };
    for key in [None, Some("wrong")] {
        let (status, body) = query(&url, "driver_id=d1", key).await;
        assert_eq!(status, 401, "{key:?}");
        assert!(body["error"].is_string());
    }
    assert_eq!(counted("unauthorized").await, 2.0);
    for bad in ["", "store=s1", "store_id=", "driver_id=a&x=1"] {
        let (status, body) = query(&url, bad, Some(API_KEY)).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(body["error"].is_string(), "{bad:?}: {body}");
    }
    assert_eq!(counted("bad_query").await, 4.0);
    let ids = |n: usize| {
        (0..n)
            .map(|i| format!("store_id=s{i}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let (status, body) = query(&url, &ids(1000), Some(API_KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(body["stores"].as_object().map(|o| o.len()), Some(1000));
    let (status, body) = query(&url, &ids(1001), Some(API_KEY)).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("1000")),
        "{body}"
    );
    assert_eq!(counted("too_many_ids").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_engine_answers_presence_the_same_way() {
    let grace = 500;
    let node = InProcessNode::start_ready(&[
        ("RELAY_PRESENCE_GRACE_MS", "500"),
        ("RELAY_API_KEY", API_KEY),
    ])
    .await;
    let url = node.url();
    let merchant = connect(&url, &merchant_token("m1", &["s1"])).await;
    let (status, body) = query(&url, "store_id=s1&driver_id=d1", Some(API_KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(body["stores"]["s1"]["online"], true, "{body}");
    assert_eq!(
        body["drivers"]["d1"],
        json!({ "online": false, "since": 0 })
    );
    let left_at = leave(merchant).await;
    // No stream to wait on in embedded mode: the API is the way to watch.
    let deadline = tokio::time::Instant::now() + WAIT;
    let since = loop {
        let (_, body) = query(&url, "store_id=s1", Some(API_KEY)).await;
        if body["stores"]["s1"]["online"] == false {
            break body["stores"]["s1"]["since"].as_u64().expect("since");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "s1 still online: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        since >= left_at + grace,
        "offline at {since}, left at {left_at}"
    );
    assert_eq!(
        metric(
            &url,
            "relay_presence_changes_total{kind=\"store\",online=\"false\"}"
        )
        .await,
        1.0
    );
    // Without RELAY_API_KEY the server API, presence included, is off.
    let off = InProcessNode::start_ready(&[]).await;
    assert_eq!(query(&off.url(), "store_id=s1", Some(API_KEY)).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_drains_hands_its_sockets_over_and_a_reconnect_elsewhere_is_no_change() {
    a_node_that_drains_hands_its_sockets_over_and_a_reconnect_elsewhere_is_no_change_on(
        Kind::Server,
    )
    .await;
}

async fn a_node_that_drains_hands_its_sockets_over_and_a_reconnect_elsewhere_is_no_change_on(
    kind: Kind,
) {
    let grace = 5000;
    let mut cluster = Cluster::start_on(
        kind,
        "presence-drain",
        2,
        &[("RELAY_PRESENCE_GRACE_MS", &grace.to_string())],
    )
    .await;
    let jwt = token("d1", Role::Driver);
    let mut first = connect(&cluster.url(1), &jwt).await;
    wait_changes(&cluster, "driver", "d1", 1, WAIT).await;
    // SIGTERM: the node closes its clients, which come back elsewhere.
    cluster.nodes[1].terminate();
    first
        .closed(WAIT)
        .await
        .expect("closed by the draining node");
    let second = connect(&cluster.url(0), &jwt).await;
    assert_eq!(cluster.nodes[1].exit_code().await, Some(0));
    let left_at = leave(second).await;
    let all = wait_changes(
        &cluster,
        "driver",
        "d1",
        2,
        WAIT + Duration::from_millis(grace),
    )
    .await;
    assert_eq!(
        all.iter().map(|c| c.0).collect::<Vec<_>>(),
        [true, false],
        "no change for the move to another node: {all:?}"
    );
    assert!(all[1].1 >= left_at + grace, "{all:?}, left at {left_at}");
}

/// The same behaviours with the nodes on a Redis Cluster (three primaries
/// with a replica each) instead of one server.
mod on_a_redis_cluster {
    use crate::support::Kind;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_driver_is_online_at_once_and_a_reconnect_within_the_grace_is_no_change() {
        super::a_driver_is_online_at_once_and_a_reconnect_within_the_grace_is_no_change_on(
            Kind::Cluster,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_merchant_on_two_nodes_keeps_its_store_online_until_both_devices_left() {
        super::a_merchant_on_two_nodes_keeps_its_store_online_until_both_devices_left_on(
            Kind::Cluster,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_nodes_sockets_stop_counting_within_the_grace_plus_10_s() {
        super::a_killed_nodes_sockets_stop_counting_within_the_grace_plus_10_s_on(Kind::Cluster)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_racing_on_the_same_stores_append_one_entry_per_change() {
        super::two_nodes_racing_on_the_same_stores_append_one_entry_per_change_on(Kind::Cluster)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refresh_that_changes_store_ids_moves_the_merchants_presence() {
        super::a_refresh_that_changes_store_ids_moves_the_merchants_presence_on(Kind::Cluster)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_drains_hands_its_sockets_over_and_a_reconnect_elsewhere_is_no_change() {
        super::a_node_that_drains_hands_its_sockets_over_and_a_reconnect_elsewhere_is_no_change_on(
            Kind::Cluster,
        )
        .await;
    }
}
