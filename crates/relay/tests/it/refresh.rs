//! CONTRACT §7: `auth:refresh` on the live connection and the
//! `auth:expiring` notice, on embedded nodes and on Redis clusters.

use relay_client::{Client, CloseReason};
use serde_json::{Value, json};

use crate::support::{
    Cluster, InProcessNode, QUIET, SECRET, WAIT, ask, connect, expect_event, metric,
};

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn sign_with(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

fn sign(claims: Value) -> String {
    sign_with(claims, SECRET.as_bytes())
}

/// A token of `sub` in `role` whose `exp` is `ttl_s` from now, and that exp.
fn expiring(sub: &str, role: &str, ttl_s: u64) -> (String, u64) {
    let exp = unix_now() + ttl_s;
    (sign(json!({ "sub": sub, "role": role, "exp": exp })), exp)
}

async fn refresh(client: &Client, data: Value) -> Value {
    ask(client, "auth:refresh", data).await
}

/// The connection still answers: an ack round trip.
async fn assert_alive(client: &Client, what: &str) {
    let ack = client
        .emit_with_ack("sync", json!({ "last_event_id": "0-0" }), WAIT)
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer on the connection: {e}"));
    assert_eq!(ack[0]["ok"], true, "{what}: {ack:?}");
    assert!(client.close_reason().is_none(), "{what}: closed");
}

/// A socket with a 2 s token refreshes to a long one; a twin that keeps
/// its 2 s token is disconnected at the old `exp`, the refreshed one lives.
async fn a_refreshed_socket_outlives_the_old_exp(url: &str) {
    let (short, _) = expiring("c1", "customer", 2);
    let refreshed = connect(url, &short).await;
    let mut twin = connect(url, &short).await;
    let (long, long_exp) = expiring("c1", "customer", 600);
    assert_eq!(
        refresh(&refreshed, json!({ "token": long })).await,
        json!({ "ok": true, "exp": long_exp })
    );
    // The twin's end is the old exp's end: awaited, not slept through.
    let reason = twin.closed(WAIT).await.expect("twin closed at the old exp");
    assert_eq!(reason, CloseReason::ServerDisconnect);
    assert_alive(&refreshed, "after the old exp").await;
    assert!(metric(url, "relay_token_refreshes_total{outcome=\"ok\"}").await >= 1.0);
    assert!(metric(url, "relay_token_expiry_disconnects_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_socket_outlives_its_old_exp_embedded() {
    let node = InProcessNode::start_ready(&[("RELAY_JWT_LEEWAY_S", "0")]).await;
    a_refreshed_socket_outlives_the_old_exp(&node.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_socket_outlives_its_old_exp_with_redis() {
    let cluster = Cluster::start("refresh-outlives", 1, &[("RELAY_JWT_LEEWAY_S", "0")]).await;
    a_refreshed_socket_outlives_the_old_exp(&cluster.url(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_answers_the_handshake_message_and_keeps_the_old_token() {
    let node = InProcessNode::start_ready(&[
        ("RELAY_JWT_LEEWAY_S", "0"),
        ("RELAY_CLIENT_EVENTS_PER_S", "0"),
    ])
    .await;
    let url = node.url();
    let short =
        sign(json!({"sub": "m1", "role": "merchant", "store_ids": ["s1"], "exp": unix_now() + 3}));
    let mut client = connect(&url, &short).await;
    let now = unix_now();
    let merchant = |extra: Value| {
        let mut claims =
            json!({"sub": "m1", "role": "merchant", "store_ids": ["s1"], "exp": now + 600});
        for (k, v) in extra.as_object().expect("object") {
            claims[k] = v.clone();
        }
        claims
    };
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "bad signature",
            json!({ "token": sign_with(merchant(json!({})), b"someone-else") }),
            "invalid token",
            "invalid_token",
        ),
        (
            "malformed",
            json!({ "token": "not-a-jwt" }),
            "invalid token",
            "invalid_token",
        ),
        (
            "expired",
            json!({ "token": sign(merchant(json!({"exp": now - 60}))) }),
            "token expired",
            "token_expired",
        ),
        (
            "another user",
            json!({ "token": sign(merchant(json!({"sub": "m2"}))) }),
            "invalid claims",
            "other_user",
        ),
        (
            "another role",
            json!({ "token": sign(merchant(json!({"role": "admin"}))) }),
            "role not allowed",
            "other_user",
        ),
        (
            "a role outside the five",
            json!({ "token": sign(merchant(json!({"role": "chef"}))) }),
            "role not allowed",
            "role_not_allowed",
        ),
        (
            "a merchant without stores",
            json!({ "token": sign(merchant(json!({"store_ids": []}))) }),
            "invalid claims",
            "invalid_claims",
        ),
        ("no token", json!({}), "missing token", "missing_token"),
        (
            "a token that is not a string",
            json!({ "token": 42 }),
            "missing token",
            "missing_token",
        ),
        (
            "not an object",
            json!("a.b.c"),
            "missing token",
            "missing_token",
        ),
        (
            "oversize",
            json!({ "token": "a".repeat(20_000) }),
            "invalid token",
            "invalid_token",
        ),
    ];
    for (what, data, message, _) in &cases {
        assert_eq!(
            refresh(&client, data.clone()).await,
            json!({ "ok": false, "error": message }),
            "{what}"
        );
    }
    for outcome in [
        "invalid_token",
        "token_expired",
        "other_user",
        "role_not_allowed",
        "invalid_claims",
        "missing_token",
    ] {
        let expected = cases.iter().filter(|c| c.3 == outcome).count() as f64;
        let series = format!("relay_token_refreshes_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric(&url, &series).await, expected, "{series}");
    }
    assert_eq!(
        metric(
            &url,
            "relay_client_events_total{event=\"auth:refresh\",outcome=\"rejected\"}"
        )
        .await,
        cases.len() as f64
    );
    assert_alive(&client, "after every refusal").await;
    // Still under the old token: it ends at the old exp.
    let reason = client.closed(WAIT).await.expect("closed at the old exp");
    assert_eq!(reason, CloseReason::ServerDisconnect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_beyond_the_event_budget_is_rate_limited() {
    let node = InProcessNode::start_ready(&[("RELAY_CLIENT_EVENTS_PER_S", "1")]).await;
    let url = node.url();
    let (jwt, _) = expiring("c1", "customer", 600);
    let client = connect(&url, &jwt).await;
    let (next, exp) = expiring("c1", "customer", 900);
    assert_eq!(
        refresh(&client, json!({ "token": next })).await,
        json!({ "ok": true, "exp": exp })
    );
    assert_eq!(
        refresh(&client, json!({ "token": next })).await,
        json!({ "ok": false, "error": "rate limited" })
    );
    assert_eq!(
        metric(
            &url,
            "relay_token_refreshes_total{outcome=\"rate_limited\"}"
        )
        .await,
        1.0
    );
}

/// The first event `client` gets must be the offer of `order`.
async fn expect_offer(client: &mut Client, order: &str) {
    let offer = expect_event(client, "merchant:new_order").await;
    assert_eq!(offer.data()["order_id"], order, "{offer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_refresh_moves_its_store_rooms_across_the_cluster() {
    let cluster = Cluster::start("refresh-stores", 2, &[]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let exp = unix_now() + 600;
    let stores =
        |ids: &[&str]| sign(json!({"sub": "m1", "role": "merchant", "store_ids": ids, "exp": exp}));
    let mut merchant = connect(&a, &stores(&["s1", "s2"])).await;
    // Another owner of s1 on the same node: once it hears s1, so would m1.
    let mut witness = connect(
        &a,
        &sign(json!({"sub": "m9", "role": "merchant", "store_ids": ["s1"], "exp": exp})),
    )
    .await;
    // m1 watches an order of s1, which it is about to lose.
    cluster.create_order("o1", "c1", "s1").await;
    let offer = expect_event(&mut merchant, "merchant:new_order").await;
    merchant
        .ack(&offer, json!({ "accepted": true }))
        .await
        .expect("ack the offer");
    expect_offer(&mut witness, "o1").await;
    let ack = ask(&merchant, "order:subscribe", json!({ "order_id": "o1" })).await;
    assert_eq!(ack["ok"], true, "{ack}");

    assert_eq!(
        refresh(&merchant, json!({ "token": stores(&["s2", "s3"]) })).await,
        json!({ "ok": true, "exp": exp })
    );

    // s1 no longer reaches m1, neither as a store nor through the order room.
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "preparing"}),
        )
        .await;
    let status = expect_event(&mut witness, "order:status_update").await;
    assert_eq!(status.data()["order_id"], "o1");
    // s3, added by the refresh, reaches it (on the other node's consumer too).
    cluster.create_order("o3", "c1", "s3").await;
    expect_offer(&mut merchant, "o3").await;
    // s2, kept, still reaches it; a socket on the other node sees the same.
    let mut other_device = connect(&b, &stores(&["s2"])).await;
    cluster.create_order("o2", "c1", "s2").await;
    expect_offer(&mut other_device, "o2").await;
    expect_offer(&mut merchant, "o2").await;
    assert!(
        merchant.next_event(QUIET).await.is_err(),
        "m1 heard more than its stores"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_expiring_comes_the_notice_before_exp_once_per_token() {
    let cluster = Cluster::start(
        "refresh-notice",
        1,
        &[
            ("RELAY_TOKEN_REFRESH_NOTICE_S", "2"),
            ("RELAY_JWT_LEEWAY_S", "0"),
        ],
    )
    .await;
    let url = cluster.url(0);
    let (jwt, exp) = expiring("d1", "driver", 4);
    let mut client = connect(&url, &jwt).await;
    let notice = client
        .wait_for("auth:expiring", WAIT)
        .await
        .expect("auth:expiring");
    let at_ms = relay::events::now_ms();
    assert_eq!(notice.data(), &json!({ "exp": exp }));
    // Never before the notice period, and before the token ended.
    assert!(at_ms >= (exp - 2) * 1000, "{at_ms} vs exp {exp}");
    assert!(at_ms < exp * 1000, "{at_ms} vs exp {exp}");

    let (next, next_exp) = expiring("d1", "driver", 5);
    assert_eq!(
        refresh(&client, json!({ "token": next })).await,
        json!({ "ok": true, "exp": next_exp })
    );
    // The next notice is the new token's: the old one was noticed once.
    let again = client
        .wait_for("auth:expiring", WAIT)
        .await
        .expect("auth:expiring for the new token");
    assert_eq!(again.data(), &json!({ "exp": next_exp }));
    assert!(relay::events::now_ms() >= (next_exp - 2) * 1000);
    assert_eq!(metric(&url, "relay_token_expiry_notices_total").await, 2.0);
    assert_eq!(
        metric(&url, "relay_emits_total{event=\"auth:expiring\"}").await,
        2.0
    );
    let reason = client.closed(WAIT).await.expect("closed at the new exp");
    assert_eq!(reason, CloseReason::ServerDisconnect);
    assert!(relay::events::now_ms() >= next_exp * 1000);
}
