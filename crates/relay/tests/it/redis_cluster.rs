//! Faults of a Redis Cluster under load, with two relay nodes and their
//! clients: the primary holding the event stream killed, and a slot moved
//! to another shard. The cluster connection follows failovers, MOVED and
//! ASK by itself; these tests hold the relay to the contract meanwhile.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use relay::auth::Role;
use relay_client::Client;
use serde_json::{Value, json};

use crate::support::{
    Backend, Cluster, RedisCluster, TestConnection, WAIT, connect, expect_event, metric, token,
    wait_for_status,
};

/// An acknowledged append: its entry id and the status's number.
type Appended = (String, usize);

/// Appends a status update to each of `o0..o{orders}` every `pause`, until
/// `stop`, keeping only the appends Redis acknowledged; a refused one
/// (the cluster has no primary for the stream meanwhile) is counted and
/// not retried, as a backend would report it.
fn produce(
    mut conn: TestConnection,
    key: String,
    orders: usize,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(HashMap<usize, Vec<Appended>>, usize)> {
    tokio::spawn(async move {
        let mut appended: HashMap<usize, Vec<Appended>> = HashMap::new();
        let mut refused = 0;
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            for i in 0..orders {
                let data = json!({"order_id": format!("o{i}"), "status": format!("s{n}")});
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&key)
                    .arg("*")
                    .arg("type")
                    .arg("order.status")
                    .arg("data")
                    .arg(data.to_string());
                let xadd = cmd.query_async::<String>(&mut conn);
                match tokio::time::timeout(Duration::from_secs(2), xadd).await {
                    Ok(Ok(id)) => appended.entry(i).or_default().push((id, n)),
                    _ => refused += 1,
                }
            }
            n += 1;
            tokio::time::sleep(pause).await;
        }
        (appended, refused)
    })
}

/// Reads `client`'s status updates into `seen` (event id, status number)
/// until `done` says it has what it waits for.
async fn read_until(
    client: &mut Client,
    seen: &mut Vec<Appended>,
    what: &str,
    done: impl Fn(&[Appended]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while !done(seen) {
        assert!(tokio::time::Instant::now() < deadline, "{what}: stalled");
        let event = client
            .wait_for("order:status_update", WAIT)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let data = event.data();
        let number = data["status"].as_str().expect("status")[1..]
            .parse()
            .expect("s<n>");
        seen.push((data["event_id"].as_str().expect("id").to_owned(), number));
    }
}

/// SIGKILL of the primary that holds `{prefix}events` while a backend
/// appends steadily and customers on both nodes watch their orders: both
/// nodes go unready while the shard has no primary and come back by
/// themselves once its replica is promoted; no order's updates are
/// reordered, none is stuck, and every update Redis kept arrives. What Redis
/// itself acknowledged and then lost in the failover is counted and
/// reported (the contract's only exception).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_streams_primary_killed_under_load_nodes_recover_and_nothing_is_reordered() {
    const ORDERS: usize = 6;
    let redis = RedisCluster::start_with_node_timeout(1000).await;
    let mut cluster = Cluster::start_with(
        Backend::Cluster(redis),
        "failover",
        2,
        &[("RELAY_CLAIM_IDLE_MS", "1000")],
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..ORDERS {
        let customer = format!("c{i}");
        cluster
            .xadd(
                "order.created",
                json!({"order_id": format!("o{i}"), "customer_id": customer, "store_id": "s1", "items": [], "accept_timeout_s": 1}),
            )
            .await;
        clients.push(connect(&cluster.url(i % 2), &token(&customer, Role::Customer)).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce(
        cluster.redis.connection().await,
        cluster.key("events"),
        ORDERS,
        Duration::from_millis(25),
        stop.clone(),
    );
    let mut seen: Vec<Vec<Appended>> = vec![Vec::new(); ORDERS];
    for (i, client) in clients.iter_mut().enumerate() {
        read_until(client, &mut seen[i], "before the kill", |s| s.len() >= 5).await;
    }

    let events = cluster.key("events");
    cluster.redis.cluster().wait_replicas_synced(&events).await;
    let killed_at = Instant::now();
    let old = cluster.redis.cluster_mut().kill_primary_of(&events).await;
    for node in 0..2 {
        wait_for_status(&format!("{}/readyz", cluster.url(node)), 503).await;
    }
    let unready_after = killed_at.elapsed();
    let promoted = cluster.redis.cluster().wait_promoted(&events, old).await;
    let promoted_after = killed_at.elapsed();
    for node in 0..2 {
        cluster.nodes[node].wait_ready().await;
    }
    let ready_after = killed_at.elapsed();
    assert_ne!(promoted, old);

    // Updates appended once the nodes are back must all arrive: let some
    // rounds go by, then stop the backend.
    let mut after: Vec<Vec<Appended>> = vec![Vec::new(); ORDERS];
    for (i, client) in clients.iter_mut().enumerate() {
        read_until(client, &mut after[i], "after the failover", |s| {
            s.len() >= 5
        })
        .await;
        seen[i].append(&mut after[i]);
    }
    stop.store(true, Ordering::Relaxed);
    let (appended, refused) = producer.await.expect("producer");

    // What Redis acknowledged and then lost: no longer in the stream.
    let mut conn = cluster.redis.connection().await;
    let kept: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&events)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    let kept: HashSet<String> = kept.into_iter().map(|(id, _)| id).collect();
    let acknowledged: usize = appended.values().map(Vec::len).sum();
    let lost: usize = appended
        .values()
        .flatten()
        .filter(|(id, _)| !kept.contains(id))
        .count();
    println!(
        "failover of the stream's primary: nodes unready {:.2} s after the kill, \
         replica promoted after {:.2} s, nodes ready again after {:.2} s; \
         {acknowledged} appends acknowledged, {refused} refused during the failover, \
         {lost} acknowledged and then lost by Redis",
        unready_after.as_secs_f64(),
        promoted_after.as_secs_f64(),
        ready_after.as_secs_f64(),
    );

    for (i, client) in clients.iter_mut().enumerate() {
        let want: Vec<&Appended> = appended[&i]
            .iter()
            .filter(|(id, _)| kept.contains(id))
            .collect();
        let last = want.last().expect("appends kept").0.clone();
        read_until(client, &mut seen[i], "every kept update", |s| {
            s.iter().any(|(id, _)| *id == last)
        })
        .await;
        // As a client keeps them: a repeated id is dropped.
        let mut ids = HashSet::new();
        let got: Vec<&Appended> = seen[i]
            .iter()
            .filter(|(id, _)| ids.insert(id.clone()))
            .collect();
        assert!(
            got.windows(2).all(|w| w[0].1 < w[1].1),
            "customer {i}: updates in order: {:?}",
            got.iter().map(|(_, n)| n).collect::<Vec<_>>()
        );
        let missing: Vec<_> = want.iter().filter(|a| !ids.contains(&a.0)).collect();
        assert!(missing.is_empty(), "customer {i} missed {missing:?}");
    }
}

/// The slot of a driver's cached location, and then the slot of the
/// node-to-node location channel, moved to another shard while a driver
/// sends updates and a customer on the other node watches: every update is
/// acknowledged `ok`, no cache write fails, and updates keep reaching the
/// customer through both moves (Redis drops a sharded channel's
/// subscribers when its slot leaves; the driver subscribes them again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_of_location_keys_moved_under_load_no_client_sees_an_error() {
    let cluster = Cluster::start_with(
        Backend::Cluster(RedisCluster::start().await),
        "reshard",
        2,
        &[
            ("RELAY_LOCATION_MIN_INTERVAL_MS", "0"),
            ("RELAY_CLIENT_EVENTS_PER_S", "0"),
        ],
    )
    .await;
    let mut customer = connect(&cluster.url(1), &token("c1", Role::Customer)).await;
    let mut driver = connect(&cluster.url(0), &token("d1", Role::Driver)).await;
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
        cluster.xadd(kind, data).await;
    }
    expect_event(&mut driver, "order:status_update").await;
    expect_event(&mut customer, "order:status_update").await;

    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acks: Vec<Value> = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let update = json!({"lat": 12.0 + f64::from(n) * 1e-4, "lng": 77.0});
                let ack = driver
                    .emit_with_ack("driver:location_update", update, WAIT)
                    .await
                    .expect("ack")
                    .into_iter()
                    .next()
                    .expect("ack payload");
                acks.push(ack);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acks
        })
    };
    let mut received = 0usize;
    let next_location = async |customer: &mut Client| {
        let event = customer
            .wait_for("order:driver_location", WAIT)
            .await
            .expect("location");
        assert_eq!(event.data()["order_id"], "o1");
    };
    for _ in 0..10 {
        next_location(&mut customer).await;
        received += 1;
    }
    let hash = cluster.key("driver:d1");
    let (from, to) = cluster.redis.cluster().reshard_slot_of(&hash).await;
    assert_ne!(from, to);
    assert_eq!(cluster.redis.cluster().shard_of(&hash).await.primary, to);
    for _ in 0..10 {
        next_location(&mut customer).await;
        received += 1;
    }
    // The order room's channel, which carries the locations between nodes.
    let channel = cluster.key("room:order_o1");
    cluster.redis.cluster().reshard_slot_of(&channel).await;
    // Updates flow again once the channel is subscribed on its new shard.
    for _ in 0..10 {
        next_location(&mut customer).await;
        received += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let acks = sender.await.expect("sender");
    let refused: Vec<&Value> = acks.iter().filter(|a| a["ok"] != true).collect();
    assert!(refused.is_empty(), "refused updates: {refused:?}");
    for node in 0..2 {
        assert_eq!(
            metric(
                &cluster.url(node),
                "relay_store_errors_total{op=\"location_write\"}"
            )
            .await,
            0.0,
            "node {node}: a location cache write failed"
        );
    }
    // The cache, read from the slot's new owner, holds the latest update.
    let mut conn = cluster.redis.connection().await;
    let ts: Option<u64> = redis::cmd("HGET")
        .arg(&hash)
        .arg("ts")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    assert!(ts.is_some(), "cached location on the new shard");
    println!(
        "resharding under location load: {} updates acknowledged ok, {received} seen by the customer",
        acks.len()
    );
}
