//! Secrets and tokens stay out of the logs, even at debug level and when a
//! handshake or the publish API is refused.

use relay::{
    auth::{Role, mint_hs256},
    config::Secret,
};
use relay_client::{Client, ConnectOptions};
use serde_json::json;

use crate::support::{NodeProcess, SECRET, WAIT, http, token};

const API_KEY: &str = "api-key-that-must-not-leak";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_and_keys_never_reach_the_logs() {
    let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("security-node.log");
    let mut node =
        NodeProcess::spawn_logging_to(&[("RELAY_LOG", "debug"), ("RELAY_API_KEY", API_KEY)], &log)
            .await;
    let url = node.url();
    let forged = mint_hs256(
        &Secret::new("not-the-secret"),
        "c1",
        Role::Customer,
        &[],
        std::time::Duration::from_secs(60),
        None,
        None,
    )
    .expect("mint");
    let garbage = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.sig-that-must-not-leak";
    for bad in [forged.as_str(), garbage] {
        let refused = Client::connect(
            ConnectOptions::new(&url)
                .auth(json!({ "token": bad }))
                .timeout(WAIT),
        )
        .await;
        assert!(refused.is_err());
    }
    // A good token in the query string: the request line must not be logged either.
    let good = token("c2", Role::Customer);
    let client = Client::connect(
        ConnectOptions::new(&url)
            .query("token", &good)
            .timeout(WAIT),
    )
    .await
    .expect("connect");
    client.disconnect().await;
    let wrong_key = http()
        .post(format!("{url}/api/events"))
        .bearer_auth("wrong-key-that-must-not-leak")
        .body("{}")
        .send()
        .await
        .expect("publish");
    assert_eq!(wrong_key.status(), 401);

    node.terminate();
    assert!(node.exit_code().await.is_some());
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(
        logs.contains("handshake refused"),
        "debug logs were captured: {logs}"
    );
    for secret in [
        forged.as_str(),
        garbage,
        "sig-that-must-not-leak",
        good.as_str(),
        SECRET,
        API_KEY,
        "wrong-key-that-must-not-leak",
    ] {
        assert!(!logs.contains(secret), "{secret} found in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_configured_origins_only() {
    let allowed = "https://app.example.com";
    let node = crate::support::InProcessNode::start_ready(&[("RELAY_CORS_ORIGINS", allowed)]).await;
    let url = node.url();
    let preflight = http()
        .request(
            reqwest::Method::OPTIONS,
            format!("{url}/socket.io/?EIO=4&transport=polling"),
        )
        .header("origin", allowed)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], allowed);
    assert_eq!(
        preflight.headers()["access-control-allow-credentials"],
        "true"
    );
    // A polling handshake from the page gets the header too.
    let handshake = http()
        .get(format!("{url}/socket.io/?EIO=4&transport=polling"))
        .header("origin", allowed)
        .send()
        .await
        .expect("handshake");
    assert_eq!(handshake.status(), 200);
    assert_eq!(handshake.headers()["access-control-allow-origin"], allowed);
    // Another origin gets no permission.
    let other = http()
        .get(format!("{url}/orders/active"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("other origin");
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // Without the setting, no CORS headers at all.
    let plain = crate::support::InProcessNode::start_ready(&[]).await;
    let response = http()
        .get(format!(
            "{}/socket.io/?EIO=4&transport=polling",
            plain.url()
        ))
        .header("origin", allowed)
        .send()
        .await
        .expect("handshake");
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
