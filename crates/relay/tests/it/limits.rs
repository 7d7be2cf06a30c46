//! Connection limits and token expiry: breaches get a clear refusal and a
//! counter, never a crash.

use std::time::Duration;

use relay::{
    auth::{Role, mint_hs256},
    config::Secret,
};
use relay_client::{Client, CloseReason, ConnectOptions, Transport};
use serde_json::json;

use crate::support::{Cluster, InProcessNode, SECRET, WAIT, http, metric, token};

async fn try_connect(url: &str, jwt: &str) -> Result<Client, String> {
    Client::connect(
        ConnectOptions::new(url)
            .auth(json!({ "token": jwt }))
            .timeout(WAIT),
    )
    .await
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_beyond_its_connection_limit_is_refused_until_one_leaves() {
    let node = InProcessNode::start_ready(&[("RELAY_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let url = node.url();
    let jwt = token("c1", Role::Customer);
    let first = try_connect(&url, &jwt).await.expect("first");
    let _second = try_connect(&url, &jwt).await.expect("second");
    let refused = try_connect(&url, &jwt).await.expect_err("third refused");
    assert!(refused.contains("too many connections"), "{refused}");
    assert!(
        metric(
            &url,
            "relay_handshake_rejections_total{reason=\"too_many_connections\"}"
        )
        .await
            >= 1.0
    );
    // Another user is not affected.
    try_connect(&url, &token("c2", Role::Customer))
        .await
        .expect("other user");
    // Once one leaves, the user may connect again (the node notices the
    // disconnect asynchronously: retry within the bound).
    first.disconnect().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while try_connect(&url, &jwt).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects until it works, within `bound` (a freed slot is noticed
/// asynchronously).
async fn connect_within(url: &str, jwt: &str, bound: Duration) -> Client {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match try_connect(url, jwt).await {
            Ok(client) => return client,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "no slot within {bound:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_counts_sockets_on_every_node() {
    let mut cluster =
        Cluster::start("user-limit", 2, &[("RELAY_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let jwt = token("c1", Role::Customer);
    let on_a = try_connect(&a, &jwt).await.expect("first, on node A");
    let _on_b = try_connect(&b, &jwt).await.expect("second, on node B");
    for url in [&a, &b] {
        let refused = try_connect(url, &jwt).await.expect_err("third refused");
        assert!(refused.contains("too many connections"), "{refused}");
    }
    // A socket that leaves node A frees a slot for node B.
    on_a.disconnect().await;
    let _again = connect_within(&b, &jwt, WAIT).await;
    // The sockets of a node that dies stop counting once it stops saying
    // it is alive (10 s): B's two sockets died with it.
    cluster.nodes[1].kill().await;
    let _ = connect_within(&a, &jwt, 2 * WAIT).await;
    let _ = connect_within(&a, &jwt, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_sheds_new_sessions_with_503_and_keeps_its_clients() {
    let node = InProcessNode::start_ready(&[("RELAY_MAX_CONNECTIONS", "2")]).await;
    let url = node.url();
    let mut a = try_connect(&url, &token("c1", Role::Customer))
        .await
        .expect("a");
    let _b = try_connect(&url, &token("c2", Role::Customer))
        .await
        .expect("b");
    let refused = try_connect(&url, &token("c3", Role::Customer))
        .await
        .expect_err("node full");
    assert!(refused.contains("503"), "{refused}");
    let response = http()
        .get(format!("{url}/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .expect("handshake");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(metric(&url, "relay_connections_shed_total{reason=\"node_full\"}").await >= 2.0);
    // The connected clients are untouched.
    let ack = a
        .emit_with_ack("order:subscribe", json!({"order_id": "nope"}), WAIT)
        .await
        .expect("still served");
    assert_eq!(ack[0]["ok"], false);
    assert!(a.next_event(Duration::from_millis(100)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_beyond_the_rate_are_shed() {
    let node = InProcessNode::start_ready(&[("RELAY_MAX_NEW_CONNECTIONS_PER_S", "1")]).await;
    let url = node.url();
    let _first = try_connect(&url, &token("c1", Role::Customer))
        .await
        .expect("first");
    let refused = try_connect(&url, &token("c2", Role::Customer))
        .await
        .expect_err("second in the same second");
    assert!(refused.contains("503"), "{refused}");
    assert!(
        metric(
            &url,
            "relay_connections_shed_total{reason=\"connect_rate\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_while_connected_ends_the_connection() {
    let node = InProcessNode::start_ready(&[("RELAY_JWT_LEEWAY_S", "0")]).await;
    let url = node.url();
    let short = mint_hs256(
        &Secret::new(SECRET),
        "c1",
        Role::Customer,
        &[],
        Duration::from_secs(2),
        None,
        None,
    )
    .expect("mint");
    let mut client = try_connect(&url, &short).await.expect("connect");
    let long_lived = try_connect(&url, &token("c2", Role::Customer))
        .await
        .expect("connect");
    let reason = client.closed(WAIT).await.expect("closed by the server");
    assert_eq!(reason, CloseReason::ServerDisconnect);
    assert!(metric(&url, "relay_token_expiry_disconnects_total").await >= 1.0);
    assert!(long_lived.close_reason().is_none(), "only the expired one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_and_a_driver_sharing_a_sub_are_two_users() {
    let cluster = Cluster::start(
        "role-sub-limit",
        1,
        &[("RELAY_MAX_CONNECTIONS_PER_USER", "1")],
    )
    .await;
    let url = cluster.url(0);
    let _customer = try_connect(&url, &token("u1", Role::Customer))
        .await
        .expect("the customer");
    let _driver = try_connect(&url, &token("u1", Role::Driver))
        .await
        .expect("a driver with the customer's sub is another user");
    for role in [Role::Customer, Role::Driver] {
        let refused = try_connect(&url, &token("u1", role))
            .await
            .expect_err("a second socket of the same role and sub");
        assert!(
            refused.contains("too many connections"),
            "{role}: {refused}"
        );
    }
}

/// A polling client whose requests say they were forwarded for `client`
/// (the node trusts 127.0.0.1 as its proxy).
async fn try_connect_from(url: &str, client: &str, jwt: &str) -> Result<Client, String> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", client.parse().expect("header"));
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(WAIT)
        .build()
        .expect("http client");
    Client::connect(
        ConnectOptions::new(url)
            .transport(Transport::Polling)
            .http_client(http)
            .auth(json!({ "token": jwt }))
            .timeout(WAIT),
    )
    .await
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_flooding_handshakes_leaves_the_node_to_everyone_else() {
    let cluster = Cluster::start(
        "addr-flood",
        1,
        &[
            ("RELAY_MAX_NEW_CONNECTIONS_PER_S", "20"),
            ("RELAY_MAX_NEW_CONNECTIONS_PER_ADDR_PER_S", "5"),
            ("RELAY_TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await;
    let url = cluster.url(0);
    // Anonymous polling handshakes that never send CONNECT, as fast as one
    // client can make them.
    let flood = http();
    let mut opened = 0;
    for _ in 0..100 {
        let status = flood
            .get(format!("{url}/socket.io/?EIO=4&transport=polling"))
            .header("x-forwarded-for", "198.51.100.1")
            .send()
            .await
            .expect("handshake")
            .status();
        if status == 200 {
            opened += 1;
        } else {
            assert_eq!(status, 503);
        }
    }
    assert!(opened <= 10, "{opened} flood sessions opened");
    // Another address gets in at once, and so does a third.
    let _real = try_connect_from(&url, "198.51.100.2", &token("c1", Role::Customer))
        .await
        .expect("a client from another address is not held up by the flood");
    let _other = try_connect_from(&url, "203.0.113.7", &token("c2", Role::Customer))
        .await
        .expect("and another");
    // The flooding address itself is still refused.
    let refused = try_connect_from(&url, "198.51.100.1", &token("c3", Role::Customer))
        .await
        .expect_err("the flooding address");
    assert!(refused.contains("503"), "{refused}");
    assert!(metric(&url, "relay_connections_shed_total{reason=\"addr_rate\"}").await >= 90.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_sends_no_connect_is_closed_after_the_connect_timeout() {
    let cluster = Cluster::start(
        "connect-timeout",
        1,
        &[("RELAY_CONNECT_TIMEOUT_MS", "1000")],
    )
    .await;
    let url = cluster.url(0);
    let open = http()
        .get(format!("{url}/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .expect("handshake")
        .text()
        .await
        .expect("open packet");
    let opened = tokio::time::Instant::now();
    let open: serde_json::Value =
        serde_json::from_str(open.strip_prefix('0').expect("open packet")).expect("json");
    let sid = open["sid"].as_str().expect("sid").to_owned();
    // Long-polls (the server pings only every 25 s) until the session ends;
    // each poll is bounded well below the old 10 s.
    let poll = reqwest::Client::builder()
        .timeout(Duration::from_secs(4))
        .build()
        .expect("http client");
    loop {
        let response = poll
            .get(format!(
                "{url}/socket.io/?EIO=4&transport=polling&sid={sid}"
            ))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "session still open {:?} after opening: {e}",
                    opened.elapsed()
                )
            });
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status == 400 || body.split('\x1e').any(|p| p == "1") {
            break;
        }
        assert!(
            opened.elapsed() < Duration::from_secs(4),
            "still open: {status} {body:?}"
        );
    }
    let closed_after = opened.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
}
