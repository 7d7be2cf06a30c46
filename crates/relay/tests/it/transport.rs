//! Transport settings: websocket-only mode and message size limits.

use relay::auth::Role;
use relay_client::{Client, ClientError, ConnectOptions, Transport};
use serde_json::json;

use crate::support::{InProcessNode, WAIT, token};

fn opts(url: &str, transport: Transport) -> ConnectOptions {
    ConnectOptions::new(url)
        .transport(transport)
        .auth(json!({ "token": token("42", Role::Customer) }))
        .timeout(WAIT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_then_upgrade_reaches_websocket() {
    let node = InProcessNode::start_ready(&[]).await;
    let mut client = Client::connect(opts(&node.url(), Transport::PollingThenUpgrade))
        .await
        .expect("connect over polling, then upgrade");
    node.broadcast(&["customer_42"], "after_upgrade", json!({}))
        .await;
    client
        .wait_for("after_upgrade", WAIT)
        .await
        .expect("event after upgrade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_only_mode_refuses_polling() {
    let node = InProcessNode::start_ready(&[("RELAY_WEBSOCKET_ONLY", "true")]).await;
    Client::connect(opts(&node.url(), Transport::WebSocket))
        .await
        .expect("websocket works");
    let polling = Client::connect(opts(&node.url(), Transport::Polling)).await;
    assert!(
        polling.is_err(),
        "polling must be refused in websocket-only mode"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_websocket_message_closes_the_connection() {
    let node = InProcessNode::start_ready(&[
        ("RELAY_WS_MAX_MESSAGE_BYTES", "4096"),
        ("RELAY_WS_MAX_FRAME_BYTES", "4096"),
    ])
    .await;
    let mut client = Client::connect(opts(&node.url(), Transport::WebSocket))
        .await
        .expect("connect");
    let big = "x".repeat(8 * 1024);
    let _ = client
        .emit("driver:location_update", json!({ "pad": big }))
        .await;
    let closed = client.closed(WAIT).await;
    assert!(
        !matches!(closed, Err(ClientError::Timeout(_))),
        "connection must be closed, got {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_polling_payload_is_refused_and_ends_the_session() {
    let node = InProcessNode::start_ready(&[("RELAY_POLLING_MAX_PAYLOAD_BYTES", "4096")]).await;
    let http = crate::support::http();
    let base = format!("{}/socket.io/?EIO=4&transport=polling", node.url());
    let open = http
        .get(&base)
        .send()
        .await
        .expect("handshake")
        .text()
        .await
        .expect("body");
    let open: serde_json::Value = serde_json::from_str(&open[1..]).expect("open packet");
    let session = format!("{base}&sid={}", open["sid"].as_str().expect("sid"));
    let connect = format!("40{}", json!({ "token": token("42", Role::Customer) }));
    let ok = http
        .post(&session)
        .body(connect)
        .send()
        .await
        .expect("connect");
    assert_eq!(ok.status(), 200);

    let big = format!(
        "42[\"driver:location_update\",{{\"pad\":\"{}\"}}]",
        "x".repeat(8 * 1024)
    );
    let refused = http.post(&session).body(big).send().await.expect("post");
    assert_eq!(refused.status(), 413, "payload too large");
    let after = http.get(&session).send().await.expect("poll");
    assert_eq!(after.status(), 400, "the session is closed");
}
