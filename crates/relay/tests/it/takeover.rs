//! issue #17 (3): every handler of a stream entry is safe to run twice. A
//! node that dies after an entry's effect and before its XACK leaves the
//! entry to another node, which handles it again; clients must see no
//! regression (a status going back, a driver back in a room, an order back
//! from the dead, an offer made twice).

use std::collections::HashSet;

use relay::auth::Role;
use relay_client::{Client, Event};
use serde_json::{Value, json};

use crate::support::{
    Cluster, WAIT, connect, expect_event, http, merchant_token, resume, token, until_status,
    until_statuses,
};

async fn active(url: &str, jwt: &str) -> Value {
    http()
        .get(format!("{url}/orders/active"))
        .bearer_auth(jwt)
        .send()
        .await
        .expect("orders/active")
        .json()
        .await
        .expect("json")
}

/// Every entry of every type, handled to its end, is then delivered to the
/// group a second time (`XGROUP SETID ... 0`: the same as every node dying
/// after each effect and before each XACK). The second round writes no
/// state, brings back no status or driver, re-creates no ended order, makes
/// no offer again and writes no second outcome; what it may emit again is
/// only an order's newest event, with the same `event_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_handled_twice_shows_clients_no_regression() {
    let cluster = Cluster::start("takeover-twice", 2, &[]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let customer_jwt = token("c1", Role::Customer);
    let mut customer = connect(&b, &customer_jwt).await;
    let mut merchant = connect(&a, &merchant_token("m1", &["s1"])).await;
    let mut d1 = connect(&b, &token("d1", Role::Driver)).await;
    let mut d2 = connect(&a, &token("d2", Role::Driver)).await;
    let mut admin = connect(&b, &token("a1", Role::Admin)).await;
    cluster.cache_location("d1", 12.9716, 77.5946).await;
    cluster.cache_location("d2", 12.9720, 77.5950).await;

    // The first round, each effect seen through.
    cluster.create_order("o1", "c1", "s1").await;
    let offer = expect_event(&mut merchant, "merchant:new_order").await;
    merchant
        .ack(&offer, json!({"accepted": true}))
        .await
        .expect("ack");
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "preparing"}),
        )
        .await;
    until_status(&mut customer, "preparing").await;
    cluster
        .xadd(
            "order.assigned",
            json!({"order_id": "o1", "driver_id": "d1"}),
        )
        .await;
    let request = cluster
        .xadd(
            "delivery.request",
            json!({"order_id": "o1", "pickup": {"lat": 12.9716, "lng": 77.5946},
                   "drop": {"lat": 12.98, "lng": 77.6}, "fare": 50, "radius_m": 3000}),
        )
        .await;
    for driver in [&mut d1, &mut d2] {
        let offer = expect_event(driver, "delivery:new_request").await;
        assert_eq!(offer.data()["event_id"], request.as_str());
        driver
            .ack(&offer, json!({"accepted": true}))
            .await
            .expect("ack");
    }
    cluster
        .xadd(
            "order.assigned",
            json!({"order_id": "o1", "driver_id": "d2"}),
        )
        .await;
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "picked_up"}),
        )
        .await;
    cluster
        .xadd("admin.alert", json!({"level": "info", "message": "once"}))
        .await;
    expect_event(&mut admin, "admin:alert").await;
    // An order that is over by the end of the round.
    cluster.create_order("o2", "c1", "s1").await;
    let offer = merchant
        .wait_for("merchant:new_order", WAIT)
        .await
        .expect("o2's offer");
    merchant
        .ack(&offer, json!({"accepted": false, "reason": "closed"}))
        .await
        .expect("ack");
    let last = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o2", "status": "rejected"}),
        )
        .await;
    let first_round = until_statuses(&mut customer, &["picked_up", "rejected"]).await;
    cluster.wait_all_handled(&last).await;
    let outcomes = cluster.entries("outcomes").await;
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    let before = active(&b, &customer_jwt).await;
    assert_eq!(
        before["orders"].as_array().map(Vec::len),
        Some(1),
        "{before}"
    );
    assert_eq!(
        (
            &before["orders"][0]["order_id"],
            &before["orders"][0]["status"],
            &before["orders"][0]["driver_id"]
        ),
        (&json!("o1"), &json!("picked_up"), &json!("d2")),
        "{before}"
    );
    let mut seen_ids: HashSet<String> = first_round
        .iter()
        .filter_map(|e| e.data()["event_id"].as_str().map(str::to_owned))
        .collect();

    // The second round: every entry again.
    let mut conn = cluster.redis.connection().await;
    let () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(cluster.key("events"))
        .arg(cluster.key("relay"))
        .arg("0")
        .query_async(&mut conn)
        .await
        .expect("XGROUP SETID");
    cluster.wait_all_handled(&last).await;

    // Then one more update of o1, and an offer to d1 for it: whatever the
    // second round sent comes before them (one order, one sequence).
    let arrived = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "arrived"}),
        )
        .await;
    let to_d1 = cluster
        .xadd(
            "delivery.request",
            json!({"order_id": "o1", "pickup": {"lat": 12.9716, "lng": 77.5946},
                   "drop": {"lat": 12.98, "lng": 77.6}, "fare": 60, "driver_id": "d1",
                   "timer_s": 30}),
        )
        .await;

    let second_round = until_status(&mut customer, "arrived").await;
    for event in &second_round[..second_round.len() - 1] {
        let id = event.data()["event_id"].as_str().map(str::to_owned);
        match event.name.as_str() {
            // The order's newest update, again, with its own id: dropped by the client.
            "order:status_update" => {
                assert_eq!(event.data()["status"], "picked_up", "{event:?}");
                assert!(id.is_some_and(|id| seen_ids.contains(&id)), "{event:?}");
            }
            other => panic!("the second round sent the customer {other}: {event:?}"),
        }
    }
    let arrived_update = second_round.last().expect("arrived");
    assert_eq!(arrived_update.data()["event_id"], arrived.as_str());
    assert_eq!(
        arrived_update.data()["seq"],
        3,
        "no update was counted twice"
    );
    seen_ids.insert(arrived.clone());

    // d1 left o1 when d2 took it: its next event is the new offer, not the
    // update (it would have had it first, back in the room).
    let next = d1.next_event(WAIT).await.expect("d1's next event");
    assert_eq!(
        (next.name.as_str(), &next.data()["event_id"]),
        ("delivery:new_request", &json!(to_d1)),
        "{next:?}"
    );
    // d2 (assigned) gets the update and no second offer before it.
    until_status(&mut d2, "picked_up").await;
    let d2_round = until_status(&mut d2, "arrived").await;
    assert!(
        d2_round
            .iter()
            .all(|e| e.name == "order:status_update" || e.name == "order:driver_location"),
        "{d2_round:?}"
    );
    // The merchant gets no offer again, only the updates.
    until_statuses(&mut merchant, &["preparing", "picked_up", "rejected"]).await;
    let m_round = until_status(&mut merchant, "arrived").await;
    assert!(
        m_round.iter().all(|e| e.name == "order:status_update"),
        "{m_round:?}"
    );
    let after = active(&b, &customer_jwt).await;
    assert_eq!(
        after["orders"].as_array().map(Vec::len),
        Some(1),
        "o2 stays over: {after}"
    );
    assert_eq!(
        (
            &after["orders"][0]["status"],
            &after["orders"][0]["driver_id"]
        ),
        (&json!("arrived"), &json!("d2")),
        "{after}"
    );
    assert_eq!(
        cluster.entries("outcomes").await.len(),
        4,
        "no offer got a second outcome"
    );
}

/// issue #17 (3), the gap of #7, through a real kill: a node handles an
/// `order.created` (the order is recorded, its merchant offer waits), the
/// order is cancelled meanwhile, and the node is SIGKILLed before the
/// offer's outcome and the XACK. The node that takes the entry over must
/// not bring the order back, put the customer back in its room or offer
/// the cancelled order to the merchant; the offer still gets its one outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_created_taken_over_after_the_order_ended_stays_ended() {
    let mut cluster = Cluster::start("takeover-kill", 1, &[("RELAY_CLAIM_IDLE_MS", "1000")]).await;
    let customer_jwt = token("c1", Role::Customer);
    let mut on_first = connect(&cluster.url(0), &customer_jwt).await;
    let created = cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": [],
                   "accept_timeout_s": 6}),
        )
        .await;
    let cancelled = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "cancelled"}),
        )
        .await;
    until_status(&mut on_first, "cancelled").await;
    // The creation is still pending: its offer waits for a merchant.
    assert!(cluster.entries("outcomes").await.is_empty());
    cluster.nodes[0].kill().await;

    let survivor = cluster.add_node(None).await;
    let url = cluster.url(survivor);
    let mut customer = connect(&url, &customer_jwt).await;
    let mut merchant = connect(&url, &merchant_token("m1", &["s1"])).await;

    // The offer ends at its timer, unanswered and never sent again.
    let outcomes = cluster.wait_entries("outcomes", 1).await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let outcome = &outcomes[0].1;
    assert_eq!(
        (outcome["event_id"].as_str(), outcome["outcome"].as_str()),
        (created.as_str(), "no_recipient"),
        "{outcome:?}"
    );
    let noise = cluster
        .xadd("order.status", json!({"order_id": "o1", "status": "late"}))
        .await;
    cluster.wait_all_handled(&noise).await;
    assert_eq!(
        crate::support::metric(
            &url,
            r#"relay_stream_superseded_total{type="order.created"}"#
        )
        .await,
        1.0
    );
    assert_eq!(active(&url, &customer_jwt).await["orders"], json!([]));

    // A new order of the same customer and store, after all that: it is
    // the first thing either of them gets (the customer was not back in
    // o1's room for the late update, the merchant had no o1 offer). The
    // one exception: o1's final status again, with its own event_id, when
    // the node died before its XACK (at least once; the node may even have
    // died before it noted the order's end).
    cluster.create_order("o2", "c1", "s1").await;
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o2", "status": "accepted"}),
        )
        .await;
    let first = next_but_the_final_status_again(&mut merchant, &cancelled).await;
    assert_eq!(
        (first.name.as_str(), &first.data()["order_id"]),
        ("merchant:new_order", &json!("o2")),
        "{first:?}"
    );
    let first = next_but_the_final_status_again(&mut customer, &cancelled).await;
    assert_eq!(
        (first.name.as_str(), &first.data()["order_id"]),
        ("order:status_update", &json!("o2")),
        "{first:?}"
    );
}

/// The next event that is not the status update `repeated` again.
async fn next_but_the_final_status_again(client: &mut Client, repeated: &str) -> Event {
    loop {
        let event = client.next_event(WAIT).await.expect("event");
        if event.name != "order:status_update" || event.data()["event_id"] != repeated {
            return event;
        }
    }
}

/// issue #17 (3), through a node that dies at the worst moment: it emitted
/// an `order.status` and let the order's next entry go, then died before
/// the XACK (the test hook aborts it there). The survivor handles the next
/// status, then claims the dead node's entry: it must not send the order
/// back to the earlier status, for the customer nor for `/orders/active`,
/// nor count it twice in `seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_taken_over_from_a_node_killed_before_its_ack_does_not_go_back() {
    // The claim waits long enough for the survivor to handle the later
    // status first (checked below through the counter).
    let mut cluster =
        Cluster::start("takeover-status", 0, &[("RELAY_CLAIM_IDLE_MS", "4000")]).await;
    let first = cluster
        .add_node_with(&[("RELAY_TEST_CRASH_BEFORE_ACK", "order.status")])
        .await;
    let customer_jwt = token("c1", Role::Customer);
    let mut customer = connect(&cluster.url(first), &customer_jwt).await;
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": [],
                   "accept_timeout_s": 1}),
        )
        .await;
    cluster.wait_entries("outcomes", 1).await;
    let preparing = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "preparing"}),
        )
        .await;
    // The node records the update, then aborts; its own delivery of it may
    // or may not reach the socket first. Either way the customer resumes as
    // one that saw it: the point is what comes after.
    loop {
        match customer.next_event(WAIT).await {
            Ok(event) if event.name == "order:status_update" => {
                assert_eq!(event.data()["event_id"], preparing.as_str());
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_ne!(
        cluster.nodes[first].exit_code().await,
        Some(0),
        "the node died before its ack"
    );

    let ready = cluster
        .xadd("order.status", json!({"order_id": "o1", "status": "ready"}))
        .await;
    let survivor = cluster.add_node(None).await;
    let url = cluster.url(survivor);
    let mut customer = resume(&url, &customer_jwt, &preparing).await;
    let got = until_status(&mut customer, "ready").await;
    assert_eq!(
        got.last().map(|e| e.data()["event_id"].clone()),
        Some(json!(ready))
    );
    cluster.wait_all_handled(&ready).await;
    assert_eq!(
        crate::support::metric(
            &url,
            r#"relay_stream_superseded_total{type="order.status"}"#
        )
        .await,
        1.0,
        "the dead node's entry was claimed after the later one, and superseded"
    );
    let orders = active(&url, &customer_jwt).await;
    assert_eq!(orders["orders"][0]["status"], "ready", "{orders}");

    let picked_up = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "picked_up"}),
        )
        .await;
    let next = customer
        .wait_for("order:status_update", WAIT)
        .await
        .expect("next update");
    assert_eq!(
        (
            &next.data()["event_id"],
            &next.data()["status"],
            &next.data()["seq"]
        ),
        (&json!(picked_up), &json!("picked_up"), &json!(3)),
        "no 'preparing' again, and counted once: {next:?}"
    );
}
