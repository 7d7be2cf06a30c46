//! CONTRACT §3 and §4 end to end: the backend XADDs, clients on every node
//! receive, offers are acked and their outcomes written back.

use relay::auth::Role;
use serde_json::json;

use crate::support::{Cluster, WAIT, connect, expect_event, merchant_token, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_reaches_its_participants_on_every_node() {
    let cluster = Cluster::start("every", 2, &[]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let mut customer = connect(&a, &token("c1", Role::Customer)).await;
    let mut merchant = connect(&b, &merchant_token("m1", &["s1"])).await;
    let mut driver = connect(&a, &token("d1", Role::Driver)).await;
    let mut admin = connect(&b, &token("a1", Role::Admin)).await;

    // order.created: the merchant gets the offer and acks it.
    let created = cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": [{"sku": "dosa", "qty": 2}]}),
        )
        .await;
    let offer = expect_event(&mut merchant, "merchant:new_order").await;
    assert_eq!(offer.data()["event_id"], created);
    assert_eq!(offer.data()["order_id"], "o1");
    assert_eq!(offer.data()["items"][0]["sku"], "dosa");
    assert_eq!(offer.data()["timer"], 60);
    assert!(offer.needs_ack());
    merchant
        .ack(&offer, json!({"accepted": true}))
        .await
        .expect("ack");
    let outcomes = cluster.wait_entries("outcomes", 1).await;
    let outcome = &outcomes[0].1;
    assert_eq!(outcome["event_id"], created);
    assert_eq!(outcome["event"], "merchant:new_order");
    assert_eq!(outcome["order_id"], "o1");
    assert_eq!(outcome["target"], "merchant_s1");
    assert_eq!(outcome["outcome"], "acked");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&outcome["response"]).expect("json"),
        json!({"accepted": true})
    );
    assert!(outcome["latency_ms"].parse::<u64>().is_ok());
    assert!(!outcome["node"].is_empty());

    // order.status: customer (order + customer room) and merchant, once each.
    let preparing = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "preparing"}),
        )
        .await;
    for client in [&mut customer, &mut merchant] {
        let update = expect_event(client, "order:status_update").await;
        assert_eq!(update.data()["event_id"], preparing);
        assert_eq!(update.data()["status"], "preparing");
        assert!(relay::events::is_rfc3339(
            update.data()["timestamp"].as_str().expect("timestamp")
        ));
    }

    // order.assigned: the driver joins the order room and hears its statuses.
    cluster
        .xadd(
            "order.assigned",
            json!({"order_id": "o1", "driver_id": "d1"}),
        )
        .await;
    let picked = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "picked_up", "timestamp": "2026-11-26T12:00:00Z"}),
        )
        .await;
    for client in [&mut customer, &mut merchant, &mut driver] {
        let update = expect_event(client, "order:status_update").await;
        assert_eq!(update.data()["event_id"], picked);
        assert_eq!(update.data()["timestamp"], "2026-11-26T12:00:00Z");
    }

    // delivery.request to a named driver, acked.
    let request = cluster
        .xadd(
            "delivery.request",
            json!({"order_id": "o1", "pickup": {"lat": 12.97, "lng": 77.59}, "drop": {"lat": 12.93, "lng": 77.62}, "fare": 50, "driver_id": "d1"}),
        )
        .await;
    let offer = expect_event(&mut driver, "delivery:new_request").await;
    assert_eq!(offer.data()["event_id"], request);
    assert_eq!(offer.data()["fare"], 50);
    assert_eq!(offer.data()["timer"], 30);
    assert_eq!(offer.data()["pickup"]["lat"], 12.97);
    driver
        .ack(&offer, json!({"accepted": true}))
        .await
        .expect("ack");
    let outcomes = cluster.wait_entries("outcomes", 2).await;
    assert_eq!(outcomes[1].1["target"], "driver_d1");
    assert_eq!(outcomes[1].1["outcome"], "acked");

    // admin.alert, with its extra fields.
    let alert = cluster
        .xadd(
            "admin.alert",
            json!({"level": "warn", "message": "rain in north zone", "zone": "north"}),
        )
        .await;
    let event = expect_event(&mut admin, "admin:alert").await;
    assert_eq!(event.data()["event_id"], alert);
    assert_eq!(event.data()["zone"], "north");

    // A terminal status reaches everyone, then the order is over.
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "delivered"}),
        )
        .await;
    for client in [&mut customer, &mut merchant, &mut driver] {
        assert_eq!(
            expect_event(client, "order:status_update").await.data()["status"],
            "delivered"
        );
    }
    // The order room is empty now: a late status for o1 reaches nobody, so
    // the next thing the customer hears is its next order's status.
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "late_echo"}),
        )
        .await;
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o2", "customer_id": "c1", "store_id": "s9", "items": []}),
        )
        .await;
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o2", "status": "placed_again"}),
        )
        .await;
    assert_eq!(
        expect_event(&mut customer, "order:status_update")
            .await
            .data()["status"],
        "placed_again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_nobody_was_there_for_is_no_recipient_when_its_timer_ends() {
    let cluster = Cluster::start("norecipient", 1, &[]).await;
    let id = cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "closed", "items": [], "accept_timeout_s": 2}),
        )
        .await;
    let outcomes = cluster.wait_entries("outcomes", 1).await;
    let appended_ms: u64 = id.split('-').next().unwrap().parse().unwrap();
    let written_ms: u64 = outcomes[0].0.split('-').next().unwrap().parse().unwrap();
    assert!(
        written_ms >= appended_ms + 2000,
        "no_recipient only once the timer is over: {written_ms} vs {appended_ms}"
    );
    assert_eq!(outcomes[0].1["event_id"], id);
    assert_eq!(outcomes[0].1["outcome"], "no_recipient");
    assert_eq!(outcomes[0].1["target"], "merchant_closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_offer_times_out_and_two_devices_yield_one_outcome() {
    let cluster = Cluster::start("timeout", 2, &[]).await;
    let mut silent = connect(&cluster.url(0), &merchant_token("m1", &["s1"])).await;
    cluster
        .xadd("order.created", json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": [], "accept_timeout_s": 1}))
        .await;
    expect_event(&mut silent, "merchant:new_order").await;
    let outcomes = cluster.wait_entries("outcomes", 1).await;
    assert_eq!(outcomes[0].1["outcome"], "timeout");

    // One merchant on two devices (two nodes): both ack, one outcome.
    let mut phone = connect(&cluster.url(0), &merchant_token("m2", &["s2"])).await;
    let mut tablet = connect(&cluster.url(1), &merchant_token("m2", &["s2"])).await;
    let id = cluster
        .xadd("order.created", json!({"order_id": "o2", "customer_id": "c1", "store_id": "s2", "items": [], "accept_timeout_s": 2}))
        .await;
    let on_phone = expect_event(&mut phone, "merchant:new_order").await;
    let on_tablet = expect_event(&mut tablet, "merchant:new_order").await;
    phone
        .ack(&on_phone, json!({"accepted": true}))
        .await
        .expect("ack");
    tablet
        .ack(&on_tablet, json!({"accepted": false, "reason": "busy"}))
        .await
        .expect("ack");
    // A later order's outcome (no_recipient after its 1 s timer) proves
    // the first one is complete.
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o3", "customer_id": "c1", "store_id": "closed", "items": [], "accept_timeout_s": 1}),
        )
        .await;
    let outcomes = cluster.wait_entries("outcomes", 3).await;
    let for_o2: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| o["event_id"] == id)
        .collect();
    assert_eq!(for_o2.len(), 1, "{outcomes:?}");
    assert_eq!(for_o2[0].1["outcome"], "acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_geo_request_offers_each_nearby_fresh_driver() {
    let cluster = Cluster::start("geo", 2, &[]).await;
    // MG Road, Bengaluru; "near" drivers within 1 km, "far" 10 km away.
    let (lat, lng) = (12.9756, 77.6050);
    cluster.cache_location("near1", 12.9760, 77.6055).await;
    cluster.cache_location("near2", 12.9790, 77.6080).await;
    cluster.cache_location("far", 13.0650, 77.6050).await;
    let mut near1 = connect(&cluster.url(0), &token("near1", Role::Driver)).await;
    let mut near2 = connect(&cluster.url(1), &token("near2", Role::Driver)).await;
    let mut far = connect(&cluster.url(0), &token("far", Role::Driver)).await;

    let id = cluster
        .xadd(
            "delivery.request",
            json!({"order_id": "o1", "pickup": {"lat": lat, "lng": lng}, "drop": {"lat": 12.9, "lng": 77.6}, "fare": 80, "radius_m": 2000, "timer_s": 5}),
        )
        .await;
    let offer1 = expect_event(&mut near1, "delivery:new_request").await;
    let offer2 = expect_event(&mut near2, "delivery:new_request").await;
    assert_eq!(offer1.data()["event_id"], id);
    assert_eq!(offer2.data()["event_id"], id);
    near1
        .ack(&offer1, json!({"accepted": true}))
        .await
        .expect("ack");
    // The acceptance is written at once, not when near2's timer ends: a
    // backend assigns the order as soon as the first driver accepts.
    let first = cluster.wait_entries("outcomes", 1).await;
    assert_eq!(first.len(), 1, "near2 still has its timer: {first:?}");
    assert_eq!(first[0].1["target"], "driver_near1");
    assert_eq!(first[0].1["outcome"], "acked");
    let outcomes = cluster.wait_entries("outcomes", 2).await;
    let by_target = |t: &str| {
        outcomes
            .iter()
            .find(|(_, o)| o["target"] == t)
            .map(|(_, o)| o["outcome"].clone())
    };
    assert_eq!(by_target("driver_near1").as_deref(), Some("acked"));
    assert_eq!(by_target("driver_near2").as_deref(), Some("timeout"));
    assert_eq!(outcomes.len(), 2, "one outcome per offer: {outcomes:?}");

    // Nobody within range: one no_recipient with target `geo`, at once.
    let lonely = cluster
        .xadd(
            "delivery.request",
            json!({"order_id": "o2", "pickup": {"lat": 40.0, "lng": -3.7}, "drop": {}, "fare": 10, "radius_m": 500}),
        )
        .await;
    let outcomes = cluster.wait_entries("outcomes", 3).await;
    assert_eq!(outcomes[2].1["event_id"], lonely);
    assert_eq!(outcomes[2].1["target"], "geo");
    assert_eq!(outcomes[2].1["outcome"], "no_recipient");
    // The far driver was never offered anything: its next event is an alert-free silence
    // proven by a direct request that it does receive first.
    cluster
        .xadd(
            "delivery.request",
            json!({"order_id": "o3", "pickup": {"lat": lat, "lng": lng}, "drop": {}, "fare": 5, "driver_id": "far", "timer_s": 1}),
        )
        .await;
    assert_eq!(
        expect_event(&mut far, "delivery:new_request").await.data()["order_id"],
        "o3"
    );
    let _ = WAIT;
}

/// A second `order.created` for an active order that names another
/// customer or store is refused into the dead letters (`order_exists`):
/// the order keeps its parties, who get every update to the end, and the
/// parties it named get nothing and join no room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_order_created_for_other_parties_is_refused_and_reaches_nobody() {
    let cluster = Cluster::start("recreated", 2, &[]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let mut customer_a = connect(&a, &token("cA", Role::Customer)).await;
    let mut merchant_1 = connect(&b, &merchant_token("m1", &["S1"])).await;
    let mut customer_b = connect(&b, &token("cB", Role::Customer)).await;
    let mut merchant_2 = connect(&a, &merchant_token("m2", &["S2"])).await;

    let created = cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "cA", "store_id": "S1", "items": []}),
        )
        .await;
    let offer = expect_event(&mut merchant_1, "merchant:new_order").await;
    assert_eq!(offer.data()["event_id"], created);
    merchant_1
        .ack(&offer, json!({"accepted": true}))
        .await
        .expect("ack");
    let accepted = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "accepted"}),
        )
        .await;
    for client in [&mut customer_a, &mut merchant_1] {
        let update = expect_event(client, "order:status_update").await;
        assert_eq!(update.data()["event_id"], accepted);
    }

    // The same order id, other parties: refused, the order left as it is.
    let again = cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "cB", "store_id": "S2", "items": []}),
        )
        .await;
    let dead = cluster.wait_entries("events:dead", 1).await;
    assert_eq!(dead[0].1["id"], again);
    assert!(
        dead[0].1["reason"].starts_with("order_exists"),
        "{:?}",
        dead[0].1
    );
    assert_eq!(dead[0].1["type"], "order.created");

    for status in ["preparing", "delivered"] {
        let id = cluster
            .xadd("order.status", json!({"order_id": "o1", "status": status}))
            .await;
        for client in [&mut customer_a, &mut merchant_1] {
            let update = expect_event(client, "order:status_update").await;
            assert_eq!(update.data()["event_id"], id);
            assert_eq!(update.data()["status"], status);
            assert_eq!(
                update.data()["seq"],
                if status == "preparing" { 2 } else { 3 }
            );
        }
    }
    // Over: a late status of o1 reaches nobody; each client's next event
    // is about an order of its own, appended after it.
    cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "late_echo"}),
        )
        .await;
    for (customer, store, order) in [("cA", "S1", "o2"), ("cB", "S2", "o3")] {
        cluster
            .xadd(
                "order.created",
                json!({"order_id": order, "customer_id": customer, "store_id": store, "items": []}),
            )
            .await;
        cluster
            .xadd(
                "order.status",
                json!({"order_id": order, "status": "accepted"}),
            )
            .await;
    }
    let first = |event: relay_client::Event| event.data()["order_id"].clone();
    assert_eq!(
        first(expect_event(&mut customer_a, "order:status_update").await),
        "o2"
    );
    assert_eq!(
        first(expect_event(&mut merchant_1, "merchant:new_order").await),
        "o2"
    );
    assert_eq!(
        first(expect_event(&mut customer_b, "order:status_update").await),
        "o3"
    );
    assert_eq!(
        first(expect_event(&mut merchant_2, "merchant:new_order").await),
        "o3"
    );
    let _ = WAIT;
}
