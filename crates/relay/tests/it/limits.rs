//! Connection limits and token expiry: breaches get a clear refusal and a
//! counter, never a crash.

use std::time::Duration;

use relay::{
    auth::{Role, mint_hs256},
    config::Secret,
};
use relay_client::{Client, CloseReason, ConnectOptions, Transport};
use serde_json::json;

use crate::support::{
    Cluster, InProcessNode, Kind, NodeProcess, SECRET, WAIT, http, metric, token, wait_for_status,
};

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
    the_per_user_limit_counts_sockets_on_every_node_on(Kind::Server).await;
}

async fn the_per_user_limit_counts_sockets_on_every_node_on(kind: Kind) {
    let mut cluster = Cluster::start_on(
        kind,
        "user-limit",
        2,
        &[("RELAY_MAX_CONNECTIONS_PER_USER", "2")],
    )
    .await;
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

/// Reads from `stream` until the node closes it (EOF or reset), within `bound`.
async fn closed_by_node(stream: &mut tokio::net::TcpStream, bound: Duration) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, read_to_end)
        .await
        .map_err(|_| format!("still open after {bound:?}"))
}

/// The value of one series through `client`'s kept-alive connection (a new
/// one may be refused while pending connections are full).
/// One HTTP/1.1 connection kept open by hand: a pooled client may open a
/// second connection whenever it likes, and that one would meet the bound.
struct KeptAlive(tokio::net::TcpStream);

impl KeptAlive {
    async fn open(addr: &str) -> Self {
        Self(tokio::net::TcpStream::connect(addr).await.expect("connect"))
    }

    /// GET `path` on this connection: the status and the body.
    async fn get(&mut self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n");
        self.0
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let read = async {
            loop {
                let n = self.0.read(&mut chunk).await.expect("read response");
                assert!(n > 0, "connection closed by the node");
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("content-length");
                if buf.len() >= end + 4 + length {
                    let status = head[9..12].parse().expect("status");
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]);
                    return (status, body.into_owned());
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("response in time")
    }

    async fn metric(&mut self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_half_sent_and_idle_connections_are_closed_at_their_timeouts() {
    use tokio::{io::AsyncWriteExt, net::TcpStream};
    let node = NodeProcess::spawn_ready(&[
        ("RELAY_HTTP_HEADER_TIMEOUT_MS", "500"),
        ("RELAY_HTTP_IDLE_TIMEOUT_MS", "1500"),
    ])
    .await;
    let addr = node.url().trim_start_matches("http://").to_owned();
    let started = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(&addr).await.expect("connect");
    let mut half = TcpStream::connect(&addr).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
        .await
        .expect("write");
    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .expect("write");
    let mut answered = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut idle, &mut answered)
        .await
        .expect("answer");
    assert_eq!(&answered, b"HTTP/1.1 200");
    let answered_at = tokio::time::Instant::now();

    closed_by_node(&mut silent, WAIT)
        .await
        .expect("silent connection");
    closed_by_node(&mut half, WAIT)
        .await
        .expect("half-sent headers");
    let headers_closed = started.elapsed();
    // The header timeout, not sooner (and not at once: 500 ms is the setting).
    assert!(
        headers_closed >= Duration::from_millis(450),
        "{headers_closed:?}"
    );
    closed_by_node(&mut idle, WAIT)
        .await
        .expect("idle keep-alive connection");
    let idle_closed = answered_at.elapsed();
    assert!(
        idle_closed >= Duration::from_millis(1400),
        "{idle_closed:?}"
    );

    let url = node.url();
    let closed =
        |reason: &str| format!("relay_http_connections_closed_total{{reason=\"{reason}\"}}");
    assert!(metric(&url, &closed("header_timeout")).await >= 2.0);
    assert!(metric(&url, &closed("idle_timeout")).await >= 1.0);
    assert_eq!(metric(&url, &closed("pending_full")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_and_websockets_outlast_the_http_timeouts() {
    // A long poll waits for the next ping (1 s), twice the idle timeout and
    // four times the header timeout; a WebSocket is quiet as long.
    let node = NodeProcess::spawn_ready(&[
        ("RELAY_HTTP_HEADER_TIMEOUT_MS", "250"),
        ("RELAY_HTTP_IDLE_TIMEOUT_MS", "500"),
        ("RELAY_PING_INTERVAL_MS", "1000"),
    ])
    .await;
    let url = node.url();
    let mut clients = Vec::new();
    for (i, transport) in [Transport::Polling, Transport::WebSocket]
        .into_iter()
        .enumerate()
    {
        let client = Client::connect(
            ConnectOptions::new(&url)
                .transport(transport)
                .auth(json!({ "token": token(&format!("p{i}"), Role::Customer) }))
                .timeout(WAIT),
        )
        .await
        .expect("connect");
        clients.push(client);
    }
    tokio::time::sleep(Duration::from_millis(3000)).await;
    for client in &mut clients {
        let ack = client
            .emit_with_ack("order:subscribe", json!({"order_id": "nope"}), WAIT)
            .await
            .expect("still connected after several pings");
        assert_eq!(ack[0]["ok"], false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_beyond_the_bound_is_closed_and_the_node_keeps_serving() {
    const BOUND: usize = 20;
    const FLOOD: usize = 60;
    let bound = BOUND.to_string();
    let node = NodeProcess::spawn_ready(&[("RELAY_MAX_PENDING_CONNECTIONS", &bound)]).await;
    let url = node.url();
    let addr = url.trim_start_matches("http://").to_owned();
    // Connected before the flood: a client with a kept-alive HTTP
    // connection (itself pending: it is no session), and a socket.
    let mut keep = KeptAlive::open(&addr).await;
    assert_eq!(keep.get("/healthz").await.0, 200);
    let socket = try_connect(&url, &token("f1", Role::Customer))
        .await
        .expect("socket");

    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        flood.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    // The ones beyond the bound are closed at once; the others are held.
    let reads = futures_util::future::join_all(
        flood
            .iter_mut()
            .map(|s| closed_by_node(s, Duration::from_secs(1))),
    )
    .await;
    let closed = reads.iter().filter(|r| r.is_ok()).count();
    assert!(
        (FLOOD - BOUND..FLOOD).contains(&closed),
        "{closed} of {FLOOD} closed with {BOUND} pending allowed"
    );
    let full = "relay_http_connections_closed_total{reason=\"pending_full\"}";
    assert_eq!(keep.metric(full).await, closed as f64);

    // During the flood: the kept-alive connection and the socket are served.
    assert_eq!(keep.get("/healthz").await.0, 200);
    let ack = socket
        .emit_with_ack("order:subscribe", json!({"order_id": "nope"}), WAIT)
        .await
        .expect("socket served during the flood");
    assert_eq!(ack[0]["ok"], false);
    // A new connection is not.
    assert!(
        http().get(format!("{url}/healthz")).send().await.is_err(),
        "a new connection was served beyond the bound"
    );

    // Released: new connections, probes and clients are served again.
    drop(flood);
    wait_for_status(&format!("{url}/healthz"), 200).await;
    try_connect(&url, &token("f2", Role::Customer))
        .await
        .expect("a new client after the flood");
}

/// The same behaviours with the nodes on a Redis Cluster (three primaries
/// with a replica each) instead of one server.
mod on_a_redis_cluster {
    use crate::support::Kind;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_per_user_limit_counts_sockets_on_every_node() {
        super::the_per_user_limit_counts_sockets_on_every_node_on(Kind::Cluster).await;
    }
}
