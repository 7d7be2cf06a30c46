//! CONTRACT §5: `GET /orders/active` and `POST /api/events`.

use relay::auth::Role;
use serde_json::{Value, json};

use crate::support::{
    API_KEY, Cluster, InProcessNode, WAIT, connect, expect_event, http, merchant_token, token,
};

async fn publish(url: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut request = http()
        .post(format!("{url}/api/events"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("publish");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn active(url: &str, jwt: Option<&str>) -> (u16, Value) {
    let mut request = http().get(format!("{url}/orders/active"));
    if let Some(jwt) = jwt {
        request = request.bearer_auth(jwt);
    }
    let response = request.send().await.expect("orders/active");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_api_checks_key_and_body_and_appends_to_the_stream() {
    let cluster = Cluster::start("publish", 1, &[]).await;
    let url = cluster.url(0);
    let alert = r#"{"type":"admin.alert","data":{"level":"info","message":"hi"}}"#;
    assert_eq!(publish(&url, None, alert).await.0, 401);
    assert_eq!(publish(&url, Some("wrong"), alert).await.0, 401);
    for bad in [
        "not json",
        r#"{"data":{}}"#,
        r#"{"type":"order.teleported","data":{}}"#,
        r#"{"type":"order.status","data":{"order_id":"o1"}}"#,
        r#"{"type":"order.status","data":"o1"}"#,
    ] {
        let (status, body) = publish(&url, Some(API_KEY), bad).await;
        assert_eq!(status, 400, "{bad}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{bad}: {body}"
        );
    }
    let mut admin = connect(&url, &token("a1", Role::Admin)).await;
    let (status, body) = publish(&url, Some(API_KEY), alert).await;
    assert_eq!(status, 202);
    let event_id = body["event_id"].as_str().expect("event_id").to_owned();
    let entries = cluster.entries("events").await;
    assert_eq!(
        entries.last().map(|(id, _)| id.clone()),
        Some(event_id.clone())
    );
    assert_eq!(entries.last().expect("entry").1["type"], "admin.alert");
    assert_eq!(
        expect_event(&mut admin, "admin:alert").await.data()["event_id"],
        event_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_api_is_404_without_a_key_and_503_without_redis() {
    let node = InProcessNode::start_ready(&[]).await;
    let alert = r#"{"type":"admin.alert","data":{"level":"info","message":"hi"}}"#;
    assert_eq!(publish(&node.url(), Some("x"), alert).await.0, 404);

    let mut cluster = Cluster::start("publish503", 1, &[]).await;
    cluster.redis.kill().await;
    let (status, body) = publish(&cluster.url(0), Some(API_KEY), alert).await;
    assert_eq!(status, 503, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_active_answers_per_role_and_forgets_ended_orders() {
    let cluster = Cluster::start("active", 2, &[]).await;
    let url = cluster.url(1);
    let customer = token("c1", Role::Customer);
    let merchant = merchant_token("m1", &["s1"]);
    let driver = token("d1", Role::Driver);
    assert_eq!(active(&url, None).await.0, 401);
    let (status, body) = active(&url, Some("garbage")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid token"))
    );

    // A client of node 0 observes when each event has been handled.
    let mut watcher = connect(&cluster.url(0), &customer).await;
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}),
        )
        .await;
    cluster
        .xadd(
            "order.assigned",
            json!({"order_id": "o1", "driver_id": "d1"}),
        )
        .await;
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "on_the_way"}),
        )
        .await;
    expect_event(&mut watcher, "order:status_update").await;
    cluster.cache_location("d1", 12.97, 77.59).await;

    for jwt in [&customer, &merchant, &driver] {
        let (status, body) = active(&url, Some(jwt)).await;
        assert_eq!(status, 200);
        let orders = body["orders"].as_array().expect("orders");
        assert_eq!(orders.len(), 1, "{body}");
        let o = &orders[0];
        assert_eq!(o["order_id"], "o1");
        assert_eq!(o["status"], "on_the_way");
        assert_eq!(o["customer_id"], "c1");
        assert_eq!(o["store_id"], "s1");
        assert_eq!(o["driver_id"], "d1");
        assert_eq!(o["driver_location"]["lat"], 12.97);
        assert!(o["driver_location"]["ts"].as_u64().is_some());
        assert!(relay::events::is_rfc3339(
            o["updated_at"].as_str().expect("updated_at")
        ));
    }
    for jwt in [
        token("a1", Role::Admin),
        token("s1", Role::Support),
        token("c2", Role::Customer),
    ] {
        assert_eq!(active(&url, Some(&jwt)).await.1["orders"], json!([]));
    }

    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "delivered"}),
        )
        .await;
    expect_event(&mut watcher, "order:status_update").await;
    for jwt in [&customer, &merchant, &driver] {
        assert_eq!(active(&url, Some(jwt)).await.1["orders"], json!([]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_runs_the_same_events_through_the_publish_api() {
    let node = InProcessNode::start_ready(&[("RELAY_API_KEY", API_KEY)]).await;
    let url = node.url();
    let mut merchant = connect(&url, &merchant_token("m1", &["s1"])).await;
    let mut customer = connect(&url, &token("c1", Role::Customer)).await;
    let created = r#"{"type":"order.created","data":{"order_id":"o1","customer_id":"c1","store_id":"s1","items":[]}}"#;
    let (status, body) = publish(&url, Some(API_KEY), created).await;
    assert_eq!(status, 202);
    let offer = expect_event(&mut merchant, "merchant:new_order").await;
    assert_eq!(offer.data()["event_id"], body["event_id"]);
    merchant
        .ack(&offer, json!({"accepted": true}))
        .await
        .expect("ack");
    let status_update = r#"{"type":"order.status","data":{"order_id":"o1","status":"preparing"}}"#;
    publish(&url, Some(API_KEY), status_update).await;
    assert_eq!(
        expect_event(&mut customer, "order:status_update")
            .await
            .data()["status"],
        "preparing"
    );
    // The outcome, readable through the API in embedded mode too. It is
    // written once the ack is in, independently of the status update.
    let deadline = tokio::time::Instant::now() + WAIT;
    let outcomes = loop {
        let outcomes: Value = http()
            .get(format!("{url}/api/outcomes"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("outcomes")
            .json()
            .await
            .expect("json");
        if outcomes["outcomes"][0].is_object() || tokio::time::Instant::now() >= deadline {
            break outcomes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(outcomes["outcomes"][0]["outcome"], "acked", "{outcomes}");
    assert_eq!(
        active(&url, Some(&token("c1", Role::Customer))).await.1["orders"][0]["status"],
        "preparing"
    );
}

/// issue #15 (7d): the publish API refuses an event whose entry would be
/// beyond `RELAY_MAX_EVENT_BYTES` with 413, whether its body is read or not,
/// and appends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_api_refuses_events_beyond_the_size_limit() {
    let cluster = Cluster::start("publish413", 1, &[("RELAY_MAX_EVENT_BYTES", "65536")]).await;
    let url = cluster.url(0);
    let alert = |n: usize| {
        json!({"type": "admin.alert", "data": {"level": "info", "message": "x".repeat(n)}})
            .to_string()
    };
    for n in [70 * 1024, 1024 * 1024] {
        let (status, body) = publish(&url, Some(API_KEY), &alert(n)).await;
        assert_eq!(status, 413, "{n} bytes: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("RELAY_MAX_EVENT_BYTES")),
            "{body}"
        );
    }
    assert!(
        cluster.entries("events").await.is_empty(),
        "nothing appended"
    );
    let (status, _) = publish(&url, Some(API_KEY), &alert(60 * 1024)).await;
    assert_eq!(status, 202, "within the limit");
    let refused =
        crate::support::metric(&url, "relay_publish_rejected_total{reason=\"too_large\"}").await;
    assert_eq!(refused, 2.0);
}
