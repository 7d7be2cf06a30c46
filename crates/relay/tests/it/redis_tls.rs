//! CONTRACT §6: a Redis over TLS (`rediss://`, a CA file, mutual TLS) and
//! ACL users. A certificate that does not verify or a refused password keeps
//! the node up and unready, with one log line naming the cause and a counter.

use std::{path::PathBuf, time::Duration};

use relay::auth::Role;
use serde_json::json;

use crate::engine::eventually;
use crate::support::{
    API_KEY, Backend, Cluster, NodeProcess, RedisCluster, TestCerts, TlsRedisServer, WAIT, connect,
    expect_event, http, metric, token,
};

/// The ACL user of docs/deploy.md: the relay's keys and channels, and only
/// the commands it sends (its scripts' included).
const ACL_USER: &str = "relay on >relay-password resetkeys ~relay:* resetchannels &relay:* \
     -@all +hello +ping +select +subscribe +unsubscribe +publish +pubsub|numsub \
     +evalsha +script|load +time +exists +del +get +set +mget +hget +hset +hdel +hgetall +hmget \
     +hincrby +sadd +srem +smembers +scard +persist +zscore +rpush +lpop +lindex +llen +lpos +lrem +zadd +zrem \
     +zrevrange +zrangebyscore +zremrangebyscore +geoadd +geosearch +pexpire +xadd +xack \
     +xclaim +xgroup|create +xinfo|groups +xinfo|stream +xpending +xrange +xrevrange +xread \
     +xreadgroup +xtrim";

/// What the same user needs on top on every node of a Redis Cluster
/// (docs/deploy.md): the slot map the cluster client and the per-node
/// pipelines read, the health check's CLUSTER INFO, ASKING (an ASK
/// redirection while a slot migrates), and sharded pub/sub. Without any
/// one of CLUSTER SLOTS, CLUSTER INFO, SPUBLISH or SSUBSCRIBE a node never
/// gets ready or an event never arrives; ASKING, SUNSUBSCRIBE and PUBSUB
/// SHARDNUMSUB are sent on paths this test does not take.
const ACL_CLUSTER_EXTRAS: &str = "+cluster|slots +cluster|info +asking +spublish +ssubscribe \
     +sunsubscribe +pubsub|shardnumsub";

fn log_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("redis-tls-{name}.log"))
}

/// A node's log once it holds `needle`, within [`WAIT`].
async fn wait_log(log: &PathBuf, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in the log within {WAIT:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the counter of `cause` moved, then checks the node is unready.
async fn assert_unready_because(url: &str, cause: &str) {
    wait_failures(url, cause, 1.0).await;
    let ready = http()
        .get(format!("{url}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 503, "ready despite {cause}");
}

/// Waits until `cause` was counted `n` times (health probes, one a second).
async fn wait_failures(url: &str, cause: &str, n: f64) {
    let series = format!("relay_redis_connect_errors_total{{cause=\"{cause}\"}}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(url, &series).await < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} did not move within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The log's lines at WARN or ERROR (the node logs JSON).
fn loud_lines(log: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(r#""level":"ERROR""#) || l.contains(r#""level":"WARN""#))
        .map(str::to_owned)
        .collect()
}

/// One order event, published through the node (the node appends it over
/// TLS), reaches a customer's Socket.IO client.
async fn relays_an_order_event(url: &str) {
    relays_an_order_event_between(url, url).await;
}

/// One order event, published through the node at `api_url`, reaches a
/// customer's Socket.IO client on the node at `client_url`.
async fn relays_an_order_event_between(client_url: &str, api_url: &str) {
    let url = api_url;
    let mut customer = connect(client_url, &token("c1", Role::Customer)).await;
    for event in [
        json!({"type": "order.created", "data": {"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}}),
        json!({"type": "order.status", "data": {"order_id": "o1", "status": "preparing"}}),
    ] {
        let res = http()
            .post(format!("{url}/api/events"))
            .bearer_auth(API_KEY)
            .json(&event)
            .send()
            .await
            .expect("publish");
        assert_eq!(res.status().as_u16(), 202);
    }
    let update = expect_event(&mut customer, "order:status_update").await;
    assert_eq!(update.data()["order_id"], "o1");
    assert_eq!(update.data()["status"], "preparing");
}

/// A driver that connects is online for `GET /api/presence`: the presence
/// scripts ran (with every command they need).
async fn presence_comes_online(url: &str) {
    let _driver = connect(url, &token("d1", Role::Driver)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body: serde_json::Value = http()
            .get(format!("{url}/api/presence?driver_id=d1"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("presence")
            .json()
            .await
            .expect("presence body");
        if body["drivers"]["d1"]["online"] == true {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "d1 not online within {WAIT:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_with_a_ca_file_relays_end_to_end() {
    let certs = TestCerts::generate("ca");
    let redis = TlsRedisServer::start(&certs, false, &[]).await;
    let node = NodeProcess::spawn_ready(&[
        ("REDIS_URL", &redis.url(None)),
        ("RELAY_REDIS_CA_FILE", &certs.path("ca.crt")),
        ("RELAY_API_KEY", API_KEY),
    ])
    .await;
    relays_an_order_event(&node.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_mutual_needs_the_client_certificate() {
    let certs = TestCerts::generate("mutual");
    let redis = TlsRedisServer::start(&certs, true, &[]).await;
    let url = redis.url(None);
    let ca = certs.path("ca.crt");
    let (cert, key) = (certs.path("client.crt"), certs.path("client.key"));
    let with_cert = NodeProcess::spawn_ready(&[
        ("REDIS_URL", &url),
        ("RELAY_REDIS_CA_FILE", &ca),
        ("RELAY_REDIS_CLIENT_CERT", &cert),
        ("RELAY_REDIS_CLIENT_KEY", &key),
        ("RELAY_API_KEY", API_KEY),
    ])
    .await;
    relays_an_order_event(&with_cert.url()).await;

    let log = log_path("mutual");
    let without = NodeProcess::spawn_up_logging_to(
        &[("REDIS_URL", &url), ("RELAY_REDIS_CA_FILE", &ca)],
        &log,
    )
    .await;
    assert_unready_because(&without.url(), "tls").await;
    wait_log(&log, "redis TLS handshake failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_with_a_foreign_ca_stays_unready_and_says_why() {
    let certs = TestCerts::generate("foreign");
    let redis = TlsRedisServer::start(&certs, false, &[]).await;
    let log = log_path("foreign");
    let node = NodeProcess::spawn_up_logging_to(
        &[
            ("REDIS_URL", &redis.url(None)),
            ("RELAY_REDIS_CA_FILE", &certs.path("other-ca.crt")),
            ("RELAY_LOG_FORMAT", "json"),
        ],
        &log,
    )
    .await;
    assert_unready_because(&node.url(), "tls").await;
    wait_log(&log, "redis TLS handshake failed").await;
    // A few probes later, still the one line: no task repeats it.
    wait_failures(&node.url(), "tls", 4.0).await;
    let loud = loud_lines(&log);
    assert_eq!(loud.len(), 1, "one line for a lasting cause: {loud:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_acl_user_works_a_missing_permission_and_a_wrong_password_are_told() {
    let certs = TestCerts::generate("acl");
    // redis-server takes each rule as an argument of its own.
    let mut args = vec!["--user", "default", "off", "--user"];
    args.extend(ACL_USER.split_whitespace());
    // The same without the consumer group's creation.
    args.extend([
        "--user",
        "nogroup",
        "on",
        ">nogroup-password",
        "~relay:*",
        "&relay:*",
        "+@all",
    ]);
    args.extend(["-xgroup"]);
    let redis = TlsRedisServer::start(&certs, false, &args).await;
    let ca = certs.path("ca.crt");
    let log = log_path("acl-user");
    let node = NodeProcess::spawn_up_logging_to(
        &[
            ("REDIS_URL", &redis.url(Some(("relay", "relay-password")))),
            ("RELAY_REDIS_CA_FILE", &ca),
            ("RELAY_API_KEY", API_KEY),
        ],
        &log,
    )
    .await;
    node.wait_ready().await;
    relays_an_order_event(&node.url()).await;
    presence_comes_online(&node.url()).await;
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !text.contains("NOPERM"),
        "a command the ACL user lacks:\n{text}"
    );

    let log = log_path("acl-nogroup");
    let lacking = NodeProcess::spawn_up_logging_to(
        &[
            (
                "REDIS_URL",
                &redis.url(Some(("nogroup", "nogroup-password"))),
            ),
            ("RELAY_REDIS_CA_FILE", &ca),
        ],
        &log,
    )
    .await;
    assert_unready_because(&lacking.url(), "permission").await;
    wait_log(&log, "lacks a permission relay needs").await;

    let password = "wrong-password-that-must-not-leak";
    let log = log_path("acl");
    let refused = NodeProcess::spawn_up_logging_to(
        &[
            ("REDIS_URL", &redis.url(Some(("relay", password)))),
            ("RELAY_REDIS_CA_FILE", &ca),
            ("RELAY_LOG", "debug"),
            ("RELAY_LOG_FORMAT", "json"),
        ],
        &log,
    )
    .await;
    assert_unready_because(&refused.url(), "auth").await;
    wait_log(&log, "redis refused the user name or password").await;
    wait_failures(&refused.url(), "auth", 4.0).await;
    let loud = loud_lines(&log);
    assert_eq!(loud.len(), 1, "one line for a lasting cause: {loud:#?}");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!text.contains(password), "the password leaked:\n{text}");
    let scrape = crate::support::scrape(&refused.url()).await;
    assert!(!scrape.contains(password));
}

/// The ACL user of docs/deploy.md plus its cluster extras, made on every
/// node of a Redis Cluster (ACLs are per node, replicas included): two
/// nodes logged in as it get ready and relay an event from one node's API
/// to a client on the other, without a refused command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_acl_user_on_every_node_relays_across_two_nodes() {
    let redis = RedisCluster::start().await;
    // The harness keeps the default user for its own checks; the relay
    // nodes log in as `relay`, restricted to the test's own prefix.
    let mut cluster = Cluster::start_with(Backend::Cluster(redis), "acl_cluster", 0, &[]).await;
    let rules = format!("{ACL_USER} {ACL_CLUSTER_EXTRAS}")
        .replace("~relay:*", &format!("~{}*", cluster.prefix))
        .replace("&relay:*", &format!("&{}*", cluster.prefix));
    let seeds = cluster.redis.cluster().seed_urls();
    for seed in &seeds {
        let mut conn = redis::Client::open(seed.as_str())
            .expect("seed url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a cluster node");
        // `rules` starts with the user name, as `ACL SETUSER` takes it.
        let _: redis::Value = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(rules.split_whitespace().collect::<Vec<_>>())
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("ACL SETUSER on {seed}: {e}"));
    }
    let credentialed: Vec<String> = seeds
        .iter()
        .map(|s| s.replacen("redis://", "redis://relay:relay-password@", 1))
        .collect();

    let mut env = cluster.env();
    env.push(("REDIS_CLUSTER_URLS".to_owned(), credentialed.join(",")));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let logs = [log_path("acl-cluster-0"), log_path("acl-cluster-1")];
    for log in &logs {
        let node = NodeProcess::spawn_up_logging_to(&env, log).await;
        node.wait_ready().await;
        cluster.nodes.push(node);
    }
    relays_an_order_event_between(&cluster.url(0), &cluster.url(1)).await;
    for log in &logs {
        let text = std::fs::read_to_string(log).expect("log");
        assert!(
            !text.contains("NOPERM"),
            "a command the ACL user lacks on a cluster:\n{text}"
        );
    }
    // The per-node pipelines log in as the same user: a refused login
    // would leave a pipeline to the cluster connection.
    each_node_sends_a_pipeline_per_primary(&cluster).await;
}

/// A Redis Cluster that speaks TLS only, bus and replication included, and
/// requires a client certificate (a managed cluster with in-transit
/// encryption): two nodes given `rediss://` seeds, the CA file and the
/// client certificate get ready, relay an order event from one node's API to
/// a client on the other (sharded pub/sub over TLS), and each sends its
/// pipelines over TLS connections of its own to every primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_over_mutual_tls_relays_across_two_nodes() {
    let certs = TestCerts::generate("cluster");
    let redis = RedisCluster::start_tls(&certs, true).await;
    assert!(redis.seeds().starts_with("rediss://"));
    let (ca, cert, key) = (
        certs.path("ca.crt"),
        certs.path("client.crt"),
        certs.path("client.key"),
    );
    let files = [
        ("RELAY_REDIS_CA_FILE", ca.as_str()),
        ("RELAY_REDIS_CLIENT_CERT", cert.as_str()),
        ("RELAY_REDIS_CLIENT_KEY", key.as_str()),
    ];
    let cluster = Cluster::start_with(Backend::Cluster(redis), "tls_cluster", 2, &files).await;
    relays_an_order_event_between(&cluster.url(0), &cluster.url(1)).await;
    each_node_sends_a_pipeline_per_primary(&cluster).await;
}

/// Each node of `cluster` (on a Redis Cluster) sends a pipeline of its own,
/// a driver's location flush, and so reads the slot map; none of its
/// pipelines fell back to the cluster connection for want of a connection
/// to a primary (a refused login or TLS handshake would). Which node
/// handles an order's entries is the consumer group's choice, hence the
/// location update on each.
async fn each_node_sends_a_pipeline_per_primary(cluster: &Cluster) {
    for i in 0..2 {
        let url = cluster.url(i);
        let driver = connect(&url, &token(&format!("d{i}"), Role::Driver)).await;
        driver
            .emit_with_ack(
                "driver:location_update",
                json!({"lat": 12.97, "lng": 77.59}),
                WAIT,
            )
            .await
            .expect("location ack");
        eventually(&format!("node {i} sent a pipeline per primary"), || {
            let url = url.clone();
            async move {
                (metric(&url, "relay_redis_cluster_slot_map_refreshes_total").await >= 1.0)
                    .then_some(())
            }
        })
        .await;
        assert_eq!(
            metric(
                &url,
                "relay_redis_cluster_resent_total{reason=\"unrouted\"}"
            )
            .await,
            0.0,
            "node {i} dialed every primary"
        );
    }
}
