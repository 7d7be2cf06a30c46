//! issue #17 (4): `POST /api/events` with an `Idempotency-Key`: a backend
//! that retries (after a 502, a timeout, a drained node) appends once.

use relay::auth::Role;
use serde_json::{Value, json};

use crate::support::{API_KEY, Cluster, InProcessNode, connect, expect_event, http, metric, token};

const ALERT: &str = r#"{"type":"admin.alert","data":{"level":"info","message":"hi"}}"#;
const OTHER_ALERT: &str = r#"{"type":"admin.alert","data":{"level":"warn","message":"other"}}"#;

/// Status, body and the `Idempotent-Replayed` header of one keyed publish.
async fn publish_keyed(url: &str, key: &[u8], body: &str) -> (u16, Value, Option<String>) {
    let response = http()
        .post(format!("{url}/api/events"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(key).expect("header value"),
        )
        .body(body.to_owned())
        .send()
        .await
        .expect("publish");
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        replayed,
    )
}

fn event_id(body: &Value) -> String {
    body["event_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no event_id in {body}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_appends_once_on_any_node_and_answers_the_first_event_id() {
    let cluster = Cluster::start("idem-repeat", 2, &[]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));

    let (status, first, replayed) = publish_keyed(&a, b"retry-1", ALERT).await;
    assert_eq!(
        (status, replayed.as_deref()),
        (202, Some("false")),
        "{first}"
    );
    let first = event_id(&first);
    // The same request again, on the same node and on the other one.
    for url in [&a, &b] {
        let (status, again, replayed) = publish_keyed(url, b"retry-1", ALERT).await;
        assert_eq!(
            (status, replayed.as_deref()),
            (202, Some("true")),
            "{again}"
        );
        assert_eq!(event_id(&again), first);
    }
    let entries = cluster.entries("events").await;
    assert_eq!(
        entries
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        [first.as_str()],
        "one entry for three requests"
    );
    // Keys are per request, not per body: another key appends the same event again.
    let (status, other, _) = publish_keyed(&b, b"retry-2", ALERT).await;
    assert_eq!(status, 202);
    assert_ne!(event_id(&other), first);
    assert_eq!(cluster.entries("events").await.len(), 2);

    assert_eq!(
        metric(&a, r#"relay_api_idempotent_total{outcome="replayed"}"#).await
            + metric(&b, r#"relay_api_idempotent_total{outcome="replayed"}"#).await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_event_is_409_and_appends_nothing() {
    let cluster = Cluster::start("idem-conflict", 2, &[]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let (status, first, _) = publish_keyed(&a, b"order-7", ALERT).await;
    assert_eq!(status, 202);
    let first = event_id(&first);
    // Another event, and the same event with another type: both conflict, on either node.
    let other_type = r#"{"type":"order.status","data":{"order_id":"o1","status":"x"}}"#;
    for (url, body) in [(&b, OTHER_ALERT), (&a, other_type)] {
        let (status, error, _) = publish_keyed(url, b"order-7", body).await;
        assert_eq!(status, 409, "{error}");
        let message = error["error"].as_str().expect("error message");
        assert!(
            message.contains("Idempotency-Key") && message.contains(&first),
            "{message}"
        );
    }
    assert_eq!(cluster.entries("events").await.len(), 1);
    assert_eq!(
        metric(&b, r#"relay_api_idempotent_total{outcome="conflict"}"#).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_keys_are_400_and_append_nothing() {
    let cluster = Cluster::start("idem-bad", 1, &[]).await;
    let url = cluster.url(0);
    let too_long = vec![b'k'; 256];
    for key in [
        &b""[..],
        &too_long,
        b"with space",
        b"tab\tinside",
        "caf\u{e9}".as_bytes(),
    ] {
        let (status, error, _) = publish_keyed(&url, key, ALERT).await;
        assert_eq!(status, 400, "{key:?}: {error}");
        assert!(
            error["error"]
                .as_str()
                .is_some_and(|e| e.contains("Idempotency-Key")),
            "{error}"
        );
    }
    assert!(cluster.entries("events").await.is_empty());
    assert_eq!(
        metric(
            &url,
            r#"relay_publish_rejected_total{reason="bad_idempotency_key"}"#
        )
        .await,
        5.0
    );
    let longest = vec![b'~'; 255];
    assert_eq!(publish_keyed(&url, &longest, ALERT).await.0, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_a_request_append_exactly_once() {
    let cluster = Cluster::start("idem-race", 2, &[]).await;
    let urls = [cluster.url(0), cluster.url(1)];
    for round in 0..5 {
        let key = format!("race-{round}");
        let answers = futures_util::future::join_all(
            (0..16).map(|n| publish_keyed(&urls[n % 2], key.as_bytes(), ALERT)),
        )
        .await;
        let ids: std::collections::BTreeSet<String> = answers
            .iter()
            .map(|(status, body, _)| {
                assert_eq!(*status, 202, "{body}");
                event_id(body)
            })
            .collect();
        assert_eq!(ids.len(), 1, "round {round}: {ids:?}");
        let appended = answers
            .iter()
            .filter(|(_, _, replayed)| replayed.as_deref() == Some("false"))
            .count();
        assert_eq!(appended, 1, "round {round}: one request appended");
    }
    assert_eq!(cluster.entries("events").await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_honours_idempotency_keys() {
    let node = InProcessNode::start_ready(&[("RELAY_API_KEY", API_KEY)]).await;
    let url = node.url();
    let mut admin = connect(&url, &token("a1", Role::Admin)).await;
    let answers =
        futures_util::future::join_all((0..8).map(|_| publish_keyed(&url, b"k1", ALERT))).await;
    let first = event_id(&answers[0].1);
    for (status, body, _) in &answers {
        assert_eq!((*status, event_id(body)), (202, first.clone()));
    }
    let (status, error, _) = publish_keyed(&url, b"k1", OTHER_ALERT).await;
    assert_eq!(status, 409, "{error}");
    // Exactly one alert went out for the key: the next one the admin gets
    // is the next key's.
    let (_, next, _) = publish_keyed(&url, b"k2", OTHER_ALERT).await;
    let seen = expect_event(&mut admin, "admin:alert").await;
    assert_eq!(seen.data()["event_id"], json!(first));
    let seen = expect_event(&mut admin, "admin:alert").await;
    assert_eq!(seen.data()["event_id"], next["event_id"]);
}
