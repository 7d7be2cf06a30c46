//! CONTRACT §2: the rooms each role joins at connect.

use relay::auth::Role;
use relay_client::{Client, ConnectOptions, Transport};
use serde_json::json;

use crate::support::{InProcessNode, WAIT, merchant_token, token};

async fn connect(node: &InProcessNode, jwt: &str) -> Client {
    Client::connect(
        ConnectOptions::new(node.url())
            .transport(Transport::WebSocket)
            .auth(json!({ "token": jwt }))
            .timeout(WAIT),
    )
    .await
    .expect("connect")
}

/// The next event a client gets is `name`.
async fn next_is(client: &mut Client, name: &str) -> serde_json::Value {
    let event = client.next_event(WAIT).await.expect("an event");
    assert_eq!(event.name, name, "unexpected event {event:?}");
    event.data().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_joins_exactly_its_rooms() {
    let node = InProcessNode::start_ready(&[]).await;
    let mut customer = connect(&node, &token("42", Role::Customer)).await;
    let mut merchant = connect(&node, &merchant_token("m1", &["s1", "s2"])).await;
    let mut driver = connect(&node, &token("d7", Role::Driver)).await;
    let mut admin = connect(&node, &token("a1", Role::Admin)).await;
    let mut support = connect(&node, &token("sup", Role::Support)).await;

    let all_rooms = [
        "customer_42",
        "merchant_s1",
        "merchant_s2",
        "driver_d7",
        "admin_updates",
        "customer_other",
        "driver_42",
    ];
    for room in all_rooms {
        node.broadcast(&[room], "probe", json!({ "room": room }))
            .await;
    }
    // A marker through a room each client is in (support: none) ends the
    // sequence, so "nothing else arrived" is checked without waiting.
    node.broadcast(
        &["customer_42", "merchant_s1", "driver_d7", "admin_updates"],
        "marker",
        json!({}),
    )
    .await;

    assert_eq!(next_is(&mut customer, "probe").await["room"], "customer_42");
    next_is(&mut customer, "marker").await;
    assert_eq!(next_is(&mut merchant, "probe").await["room"], "merchant_s1");
    assert_eq!(next_is(&mut merchant, "probe").await["room"], "merchant_s2");
    next_is(&mut merchant, "marker").await;
    assert_eq!(next_is(&mut driver, "probe").await["room"], "driver_d7");
    next_is(&mut driver, "marker").await;
    assert_eq!(next_is(&mut admin, "probe").await["room"], "admin_updates");
    next_is(&mut admin, "marker").await;
    assert!(
        support.next_event(crate::support::QUIET).await.is_err(),
        "support joins no room at connect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_in_several_target_rooms_gets_the_event_once() {
    let node = InProcessNode::start_ready(&[]).await;
    let mut merchant = connect(&node, &merchant_token("m1", &["s1", "s2"])).await;
    node.broadcast(&["merchant_s1", "merchant_s2"], "once", json!({}))
        .await;
    node.broadcast(&["merchant_s1"], "marker", json!({})).await;
    next_is(&mut merchant, "once").await;
    next_is(&mut merchant, "marker").await;
}

async fn publish(node: &InProcessNode, kind: &str, data: serde_json::Value) {
    let response = crate::support::http()
        .post(format!("{}/api/events", node.url()))
        .bearer_auth(crate::support::API_KEY)
        .json(&json!({ "type": kind, "data": data }))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status().as_u16(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_subscribe_joins_allowed_order_rooms_only() {
    let node = InProcessNode::start_ready(&[("RELAY_API_KEY", crate::support::API_KEY)]).await;
    let mut owner = connect(&node, &token("c1", Role::Customer)).await;
    let mut support = connect(&node, &token("sup", Role::Support)).await;
    let stranger = connect(&node, &token("c2", Role::Customer)).await;
    let merchant = connect(&node, &merchant_token("m1", &["s1"])).await;
    publish(
        &node,
        "order.created",
        json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}),
    )
    .await;
    publish(
        &node,
        "order.status",
        json!({"order_id": "o1", "status": "accepted"}),
    )
    .await;
    next_is(&mut owner, "order:status_update").await;

    let ack = |r: Vec<serde_json::Value>| r.into_iter().next().expect("ack payload");
    let sub = |o: &str| json!({ "order_id": o });
    let ok = json!({"ok": true});
    assert_eq!(
        ack(support
            .emit_with_ack("order:subscribe", sub("o1"), WAIT)
            .await
            .expect("ack")),
        ok
    );
    assert_eq!(
        ack(merchant
            .emit_with_ack("order:subscribe", sub("o1"), WAIT)
            .await
            .expect("ack")),
        ok
    );
    let refused = ack(stranger
        .emit_with_ack("order:subscribe", sub("o1"), WAIT)
        .await
        .expect("ack"));
    assert_eq!(refused, json!({"ok": false, "error": "not allowed"}));
    let unknown = ack(stranger
        .emit_with_ack("order:subscribe", sub("nope"), WAIT)
        .await
        .expect("ack"));
    assert_eq!(unknown["ok"], false);
    let invalid = ack(stranger
        .emit_with_ack("order:subscribe", json!({"id": 1}), WAIT)
        .await
        .expect("ack"));
    assert_eq!(invalid["ok"], false);

    publish(
        &node,
        "order.status",
        json!({"order_id": "o1", "status": "preparing"}),
    )
    .await;
    assert_eq!(
        next_is(&mut support, "order:status_update").await["status"],
        "preparing"
    );

    let left = ack(support
        .emit_with_ack("order:unsubscribe", sub("o1"), WAIT)
        .await
        .expect("ack"));
    assert_eq!(left, ok);
    publish(
        &node,
        "order.status",
        json!({"order_id": "o1", "status": "ready"}),
    )
    .await;
    // The owner hears it; support, no longer in the room, hears the next
    // thing sent to it instead: an order it subscribes to afresh.
    assert_eq!(
        next_is(&mut owner, "order:status_update").await["status"],
        "preparing"
    );
    assert_eq!(
        next_is(&mut owner, "order:status_update").await["status"],
        "ready"
    );
    support
        .emit_with_ack("order:subscribe", sub("o2"), WAIT)
        .await
        .expect("ack");
    publish(
        &node,
        "order.status",
        json!({"order_id": "o2", "status": "other"}),
    )
    .await;
    assert_eq!(
        next_is(&mut support, "order:status_update").await["order_id"],
        "o2"
    );
}

/// Every role against an order it does or does not belong to, forged
/// payloads, and client events named like server events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_role_gets_into_a_room_outside_its_rules() {
    let node = InProcessNode::start_ready(&[("RELAY_API_KEY", crate::support::API_KEY)]).await;
    publish(
        &node,
        "order.created",
        json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": [], "accept_timeout_s": 1}),
    )
    .await;
    publish(
        &node,
        "order.assigned",
        json!({"order_id": "o1", "driver_id": "d1"}),
    )
    .await;

    let cases: [(&str, String, bool); 8] = [
        ("owner customer", token("c1", Role::Customer), true),
        ("other customer", token("c2", Role::Customer), false),
        ("the store's merchant", merchant_token("m1", &["s1"]), true),
        (
            "another store's merchant",
            merchant_token("m2", &["s2"]),
            false,
        ),
        ("assigned driver", token("d1", Role::Driver), true),
        ("another driver", token("d2", Role::Driver), false),
        ("admin", token("a1", Role::Admin), true),
        ("support", token("sup", Role::Support), true),
    ];
    let mut outsiders = Vec::new();
    for (who, jwt, allowed) in cases {
        let client = connect(&node, &jwt).await;
        let ack = client
            .emit_with_ack("order:subscribe", json!({"order_id": "o1"}), WAIT)
            .await
            .expect("ack");
        let expected = if allowed {
            json!({"ok": true})
        } else {
            json!({"ok": false, "error": "not allowed"})
        };
        assert_eq!(ack[0], expected, "{who}");
        // Forged extras in the payload change nothing.
        let forged = client
            .emit_with_ack(
                "order:subscribe",
                json!({"order_id": "o1", "role": "admin", "sub": "c1", "store_ids": ["s1"]}),
                WAIT,
            )
            .await
            .expect("ack");
        assert_eq!(forged[0], expected, "{who}, forged payload");
        for bad in [
            json!({"order_id": ["o1"]}),
            json!({"order_id": "x".repeat(200)}),
            json!("o1"),
            json!(null),
        ] {
            let ack = client
                .emit_with_ack("order:subscribe", bad.clone(), WAIT)
                .await
                .expect("ack");
            assert_eq!(ack[0]["ok"], false, "{who}: {bad}");
        }
        if !allowed {
            outsiders.push((who, client));
        }
    }

    // Client events named like server events, or like room operations, are
    // unknown: refused, and nobody receives anything from them.
    let (_, mut mallory) = outsiders.pop().expect("an outsider");
    for name in [
        "join",
        "leave",
        "order:status_update",
        "merchant:new_order",
        "delivery:new_request",
        "admin:alert",
        "order:driver_location",
        "sync:done",
    ] {
        let ack = mallory
            .emit_with_ack(
                name,
                json!({"order_id": "o1", "room": "admin_updates"}),
                WAIT,
            )
            .await
            .expect("ack");
        assert_eq!(
            ack[0],
            json!({"ok": false, "error": "unknown event"}),
            "{name}"
        );
    }
    publish(
        &node,
        "order.status",
        json!({"order_id": "o1", "status": "preparing"}),
    )
    .await;
    for (who, client) in outsiders.iter_mut() {
        assert!(
            client.next_event(crate::support::QUIET).await.is_err(),
            "{who} heard an order it does not belong to"
        );
    }
    assert!(mallory.next_event(crate::support::QUIET).await.is_err());
}
