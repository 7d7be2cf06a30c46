//! Plain pipelines on a real Redis Cluster (three primaries with a replica
//! each), through the engine's own link: one pipeline per primary, replies
//! in pipeline order, and every command run exactly once and in order per
//! key while a slot migrates (ASK, then MOVED), after the scripts were
//! flushed (NOSCRIPT), and after the health watch's redial.

use std::collections::{HashMap, HashSet};

use redis::{RedisResult, Value, aio::ConnectionLike};
use relay::engine::{
    DriverLocation, Engine, LocationCache,
    redis::{Link, RedisEngine, RedisSettings},
};
use tokio::sync::watch;

use crate::support::{
    Backend, Kind, RedisCluster, WAIT, redis_cluster::node_connection, unique_prefix,
};

async fn on_cluster(test: &str) -> (Backend, RedisEngine, String) {
    let redis = Backend::start(Kind::Cluster).await;
    let prefix = unique_prefix(test);
    let engine = RedisEngine::new(RedisSettings {
        target: &redis.target(),
        tls: &Default::default(),
        key_prefix: &prefix,
        node_id: "n1",
        claim_idle: std::time::Duration::from_secs(60),
        max_deliveries: 5,
        max_event_bytes: 64 * 1024,
        location_ttl: std::time::Duration::from_secs(120),
        history_size: 100,
        history_ttl: std::time::Duration::from_secs(600),
    })
    .expect("redis engine");
    (redis, engine, prefix)
}

/// `n` keys `{base}{i}` whose slots lie on all three primaries.
async fn keys_on_every_primary(cluster: &RedisCluster, base: &str, n: usize) -> Vec<String> {
    let keys: Vec<String> = (0..n).map(|i| format!("{base}{i}")).collect();
    let mut primaries = HashSet::new();
    for key in &keys {
        primaries.insert(cluster.shard_of(key).await.primary);
    }
    assert_eq!(primaries.len(), 3, "{n} keys on every primary");
    keys
}

async fn query<T: redis::FromRedisValue>(pipe: &redis::Pipeline, link: &Link) -> RedisResult<T> {
    tokio::time::timeout(WAIT, pipe.query_async(&mut link.clone()))
        .await
        .expect("pipeline within its bound")
}

/// INCR of every key, one pipeline.
fn incr(keys: &[String]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("INCR").arg(key);
    }
    pipe
}

fn int(value: &Value) -> i64 {
    match value {
        Value::Int(n) => *n,
        other => panic!("an integer reply, got {other:?}"),
    }
}

#[tokio::test]
async fn cluster_pipeline_across_every_primary_replies_in_pipeline_order() {
    let (redis, engine, prefix) = on_cluster("pipe_order").await;
    let link = engine.command_link();
    let keys = keys_on_every_primary(redis.cluster(), &format!("{prefix}k"), 24).await;
    let mut pipe = redis::pipe();
    for (i, key) in keys.iter().enumerate() {
        pipe.cmd("SET").arg(key).arg(i);
    }
    for key in &keys {
        pipe.cmd("INCR").arg(key);
    }
    // A server error is the reply of its command only.
    pipe.cmd("HSET").arg(&keys[0]).arg("field").arg(1);
    for key in &keys {
        pipe.cmd("GET").arg(key);
    }
    let replies: Vec<RedisResult<Value>> = query(pipe.clone().ignore_errors(), &link)
        .await
        .expect("pipeline");
    let n = keys.len();
    assert_eq!(replies.len(), 3 * n + 1);
    for i in 0..n {
        assert_eq!(replies[i], Ok(Value::Okay), "SET {i}");
        assert_eq!(
            replies[n + i].as_ref().map(int).ok(),
            Some(i as i64 + 1),
            "INCR {i}"
        );
        assert_eq!(
            replies[2 * n + 1 + i],
            Ok(Value::BulkString((i + 1).to_string().into_bytes())),
            "GET {i}"
        );
    }
    let wrongtype = replies[2 * n].as_ref().expect_err("HSET on a string");
    assert_eq!(wrongtype.code(), Some("WRONGTYPE"), "{wrongtype}");
    // Without ignore_errors the pipeline fails as on one server, and still
    // ran once: every INCR adds one.
    let failed: RedisResult<Vec<Value>> = query(&pipe, &link).await;
    assert!(failed.is_err(), "{failed:?}");
    let mut get = redis::pipe();
    for key in &keys {
        get.cmd("GET").arg(key);
    }
    let values: Vec<i64> = query(&get, &link).await.expect("GET");
    assert_eq!(values, (0..n as i64).map(|i| i + 1).collect::<Vec<_>>());
}

/// Per pipeline and counter: INCR, INCR, and two RPUSHes of the pipeline's
/// number to the counter's log, all keys in one slot (a hash tag) that
/// migrates while the pipelines run, plus counters elsewhere.
fn round(counters: &[String], logs: &[String], others: &[String], seq: u64) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for (counter, log) in counters.iter().zip(logs) {
        pipe.cmd("INCR").arg(counter).ignore();
        pipe.cmd("RPUSH").arg(log).arg(seq * 2).ignore();
        pipe.cmd("INCR").arg(counter).ignore();
        pipe.cmd("RPUSH").arg(log).arg(seq * 2 + 1).ignore();
    }
    for other in others {
        pipe.cmd("INCR").arg(other).ignore();
    }
    pipe
}

#[tokio::test]
async fn cluster_pipeline_during_a_slot_migration_runs_each_command_once_in_order_per_key() {
    let (redis, engine, prefix) = on_cluster("pipe_migration").await;
    let cluster = redis.cluster();
    let link = engine.command_link();
    let tag = format!("{{{prefix}moving}}");
    let counters: Vec<String> = (0..12).map(|i| format!("{tag}:n{i}")).collect();
    let logs: Vec<String> = (0..12).map(|i| format!("{tag}:log{i}")).collect();
    let others = keys_on_every_primary(cluster, &format!("{prefix}o"), 12).await;

    // Pipelines back to back until told to stop; each must succeed.
    let (done_tx, mut done) = watch::channel(0u64);
    let (stop_tx, stop) = watch::channel(false);
    let runner = {
        let (link, counters, logs, others) =
            (link.clone(), counters.clone(), logs.clone(), others.clone());
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !*stop.borrow() {
                let () = query(&round(&counters, &logs, &others, seq), &link)
                    .await
                    .unwrap_or_else(|e| panic!("pipeline {seq}: {e}"));
                seq += 1;
                done_tx.send_replace(seq);
            }
            seq
        })
    };
    // The link has read the slot map before the slot starts moving.
    after(&mut done, 2).await;
    let migration = cluster.begin_migration(&counters[0]).await;
    after(&mut done, 2).await;
    // Keys leave the source a few at a time: the source answers ASK for
    // them, and for those not created yet, while the link still sends
    // there.
    while migration.migrate_some(3).await > 0 {
        let mut src = node_connection(migration.from).await.expect("source");
        let absent: RedisResult<Value> = redis::cmd("GET")
            .arg(format!("{tag}:absent"))
            .query_async(&mut src)
            .await;
        assert_eq!(
            absent.expect_err("ASK from the source").code(),
            Some("ASK"),
            "the slot is migrating"
        );
        after(&mut done, 2).await;
    }
    // The slot belongs to the target now: the source answers MOVED.
    migration.finish().await;
    after(&mut done, 3).await;
    stop_tx.send_replace(true);
    let pipelines = runner.await.expect("runner");

    let mut check = cluster.connection().await;
    for (counter, log) in counters.iter().zip(&logs) {
        let count: i64 = redis::cmd("GET")
            .arg(counter)
            .query_async(&mut check)
            .await
            .expect("GET");
        assert_eq!(count as u64, 2 * pipelines, "{counter}: each INCR ran once");
        let entries: Vec<u64> = redis::cmd("LRANGE")
            .arg(log)
            .arg(0)
            .arg(-1)
            .query_async(&mut check)
            .await
            .expect("LRANGE");
        assert_eq!(
            entries,
            (0..2 * pipelines).collect::<Vec<_>>(),
            "{log}: each RPUSH once, in pipeline order"
        );
    }
    for other in &others {
        let count: i64 = redis::cmd("GET")
            .arg(other)
            .query_async(&mut check)
            .await
            .expect("GET");
        assert_eq!(count as u64, pipelines, "{other}");
    }
    let owner = cluster.shard_of(&counters[0]).await.primary;
    assert_eq!(owner, migration.to, "the slot moved");
}

/// Waits until `n` more pipelines have completed.
async fn after(done: &mut watch::Receiver<u64>, n: u64) {
    let target = *done.borrow() + n;
    tokio::time::timeout(WAIT, done.wait_for(|&d| d >= target))
        .await
        .expect("pipelines go on")
        .expect("runner alive");
}

fn location(i: usize, ts: u64) -> DriverLocation {
    DriverLocation {
        lat: 12.9 + i as f64 * 0.001,
        lng: 77.6,
        heading: i.is_multiple_of(2).then_some(90.0),
        speed: Some(i as f64),
        ts,
    }
}

#[tokio::test]
async fn cluster_location_writes_reach_every_driver_hash_after_a_script_flush() {
    let (redis, engine, prefix) = on_cluster("pipe_noscript").await;
    let cluster = redis.cluster();
    let drivers = keys_on_every_primary(cluster, &format!("{prefix}driver:d"), 40).await;
    let ids: Vec<String> = (0..drivers.len()).map(|i| format!("d{i}")).collect();
    let batch = |ts: u64| -> Vec<(String, DriverLocation)> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), location(i, ts)))
            .collect()
    };
    let locations = engine.locations();
    locations.write(&batch(1)).await.expect("first write");
    let mut flush = redis::cmd("SCRIPT");
    flush.arg("FLUSH");
    cluster.on_every_node(&flush).await;
    locations
        .write(&batch(2))
        .await
        .expect("write after SCRIPT FLUSH");
    for (i, id) in ids.iter().enumerate() {
        let latest = locations.latest(id).await.expect("latest");
        assert_eq!(latest, Some(location(i, 2)), "{id}");
    }
    let fresh: HashMap<String, DriverLocation> = locations
        .fresh_drivers(ids.len())
        .await
        .expect("fresh")
        .into_iter()
        .collect();
    assert_eq!(fresh.len(), ids.len());
}

#[tokio::test]
async fn cluster_pipeline_works_after_a_redial() {
    let (redis, engine, prefix) = on_cluster("pipe_redial").await;
    let link = engine.command_link();
    let keys = keys_on_every_primary(redis.cluster(), &format!("{prefix}r"), 12).await;
    let first: Vec<i64> = query(&incr(&keys), &link).await.expect("before");
    assert_eq!(first, vec![1; keys.len()]);
    link.redial().expect("redial");
    let second: Vec<i64> = query(&incr(&keys), &link).await.expect("after the redial");
    assert_eq!(second, vec![2; keys.len()]);
    let locations = engine.locations();
    locations
        .write(&[("d0".to_owned(), location(0, 5))])
        .await
        .expect("location write after the redial");
    assert_eq!(
        locations.latest("d0").await.expect("latest"),
        Some(location(0, 5))
    );
    // Not a ConnectionLike quirk: the link still answers single commands.
    let pong = link
        .clone()
        .req_packed_command(&redis::cmd("PING"))
        .await
        .expect("PING");
    assert!(
        matches!(pong, Value::SimpleString(_) | Value::Okay),
        "{pong:?}"
    );
}

/// A primary that stops answering in the middle of a pipeline (CLIENT
/// PAUSE, longer than the link's 2 s response timeout): the pipeline fails
/// as it would on one server, and nothing of it is sent again, because
/// which of its commands ran is unknown to the link. Here the other
/// primaries ran theirs at once, and the paused one dropped its queued
/// commands with the connection the link gave up; a re-send would show as
/// one INCR too many. The next pipeline, on a connection dialed again,
/// works.
#[tokio::test]
async fn cluster_pipeline_to_a_primary_that_stops_answering_fails_and_is_not_resent() {
    let (redis, engine, prefix) = on_cluster("pipe_timeout").await;
    let cluster = redis.cluster();
    let link = engine.command_link();
    let keys = keys_on_every_primary(cluster, &format!("{prefix}t"), 12).await;
    let paused = cluster.shard_of(&keys[0]).await.primary;
    let mut on_paused = Vec::new();
    for key in &keys {
        on_paused.push(cluster.shard_of(key).await.primary == paused);
    }
    // Connections to every primary are open before the pause.
    let first: Vec<i64> = query(&incr(&keys), &link).await.expect("before");
    assert_eq!(first, vec![1; keys.len()]);

    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        // Well past the response timeout: the link has given the
        // connection up before the pause ends.
        .arg(5000)
        .arg("ALL")
        .query_async(&mut node_connection(paused).await.expect("paused primary"))
        .await
        .expect("CLIENT PAUSE");
    let failed: RedisResult<Vec<i64>> = query(&incr(&keys), &link).await;
    let error = failed.expect_err("a pipeline with a silent primary fails");
    assert!(error.is_timeout() || error.is_io_error(), "{error}");

    // Reads of the paused primary's keys wait for the pause to end.
    let mut check = cluster.connection().await;
    for (key, paused) in keys.iter().zip(&on_paused) {
        let count: i64 = redis::cmd("GET")
            .arg(key)
            .query_async(&mut check)
            .await
            .expect("GET");
        let want = if *paused { 1 } else { 2 };
        assert_eq!(count, want, "{key} (on the paused primary: {paused})");
    }
    let after: Vec<i64> = query(&incr(&keys), &link).await.expect("after the pause");
    let want: Vec<i64> = on_paused.iter().map(|p| if *p { 2 } else { 3 }).collect();
    assert_eq!(after, want);
}
