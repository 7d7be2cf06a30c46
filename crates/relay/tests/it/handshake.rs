//! CONTRACT §2: tokens by query or auth, and every connect_error message.

use relay::auth::Role;
use relay_client::{Client, ClientError, ConnectOptions, Transport};
use serde_json::json;

use crate::support::{InProcessNode, NodeProcess, SECRET, WAIT, token};

fn opts(node: &str, transport: Transport) -> ConnectOptions {
    ConnectOptions::new(node).transport(transport).timeout(WAIT)
}

async fn rejection(options: ConnectOptions) -> String {
    match Client::connect(options).await {
        Err(ClientError::Rejected { message, .. }) => message,
        Ok(_) => panic!("connected, expected a connect_error"),
        Err(e) => panic!("expected a connect_error, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_connect_via_query_and_auth_on_both_transports() {
    let node = InProcessNode::start_ready(&[]).await;
    let jwt = token("42", Role::Customer);
    for transport in [Transport::WebSocket, Transport::Polling] {
        let by_query = Client::connect(opts(&node.url(), transport).query("token", &jwt))
            .await
            .expect("token in query");
        let by_auth = Client::connect(opts(&node.url(), transport).auth(json!({ "token": jwt })))
            .await
            .expect("token in auth");
        assert!(!by_query.sid().is_empty() && !by_auth.sid().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_gets_its_contract_message() {
    let node = InProcessNode::start_ready(&[]).await;
    let url = node.url();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign")
    };
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "1", "role": "customer", "exp": now + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"someone-else"),
    )
    .expect("sign");
    // RFC 7515 §4.1.11: a token that needs an extension we do not know.
    let crit_header = jsonwebtoken::Header {
        crit: Some(vec!["exp".into()]),
        ..Default::default()
    };
    let crit = jsonwebtoken::encode(
        &crit_header,
        &json!({"sub": "1", "role": "admin", "exp": now + 60}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    // header {"alg":"none"}: unsigned tokens must never pass.
    let alg_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxIiwicm9sZSI6ImFkbWluIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "missing token"),
        ("garbage", Some("not-a-jwt".into()), "invalid token"),
        ("wrong key", Some(other_key), "invalid token"),
        ("alg none", Some(alg_none.into()), "invalid token"),
        ("crit header", Some(crit), "invalid token"),
        (
            "expired",
            Some(sign(
                json!({"sub": "1", "role": "customer", "exp": now - 3600}),
            )),
            "token expired",
        ),
        (
            "negative exp",
            Some(sign(json!({"sub": "1", "role": "customer", "exp": -1}))),
            "token expired",
        ),
        (
            "zero exp",
            Some(sign(json!({"sub": "1", "role": "customer", "exp": 0}))),
            "token expired",
        ),
        (
            "exp not a number",
            Some(sign(
                json!({"sub": "1", "role": "customer", "exp": "tomorrow"}),
            )),
            "invalid claims",
        ),
        (
            "unknown role",
            Some(sign(json!({"sub": "1", "role": "chef", "exp": now + 60}))),
            "role not allowed",
        ),
        (
            "merchant without stores",
            Some(sign(
                json!({"sub": "1", "role": "merchant", "exp": now + 60}),
            )),
            "invalid claims",
        ),
        (
            "no sub",
            Some(sign(json!({"role": "customer", "exp": now + 60}))),
            "invalid claims",
        ),
    ];
    for transport in [Transport::WebSocket, Transport::Polling] {
        for (case, jwt, expected) in &cases {
            let mut options = opts(&url, transport);
            if let Some(jwt) = jwt {
                options = options.auth(json!({ "token": jwt }));
            }
            assert_eq!(
                rejection(options).await,
                *expected,
                "{case} over {transport:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_counted_by_reason() {
    let node = NodeProcess::spawn_ready(&[]).await;
    rejection(opts(&node.url(), Transport::WebSocket)).await;
    rejection(opts(&node.url(), Transport::WebSocket).query("token", "x")).await;
    rejection(opts(&node.url(), Transport::WebSocket).query("token", "y")).await;
    let metrics = crate::support::http()
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains("relay_handshake_rejections_total{reason=\"missing_token\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("relay_handshake_rejections_total{reason=\"invalid_token\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_tokens_verify_and_hmac_confusion_fails() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let public = format!("{fixtures}/rsa_public.pem");
    let node =
        NodeProcess::spawn_ready(&[("RELAY_JWT_SECRET", ""), ("RELAY_JWT_PUBLIC_KEY", &public)])
            .await;
    let claims = json!({"sub": "d1", "role": "driver", "exp": 4_000_000_000u64});
    let private = std::fs::read(format!("{fixtures}/rsa_private.pem")).expect("fixture");
    let rs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&private).expect("rsa key"),
    )
    .expect("sign");
    Client::connect(opts(&node.url(), Transport::WebSocket).auth(json!({ "token": rs256 })))
        .await
        .expect("RS256 token accepted");
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&std::fs::read(&public).expect("fixture")),
    )
    .expect("sign");
    let message =
        rejection(opts(&node.url(), Transport::WebSocket).auth(json!({ "token": confused }))).await;
    assert_eq!(message, "invalid token");
}
