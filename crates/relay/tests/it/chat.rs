//! CONTRACT §7, chat in order rooms: `chat:send`, `chat:message`,
//! `chat:history`, `chat:typing` and `{prefix}chat`, on two nodes over one
//! real Redis, and embedded; the cross-node behaviours (order, recovery,
//! history, typing, `{prefix}chat` once) also on a Redis Cluster.

use relay::auth::Role;
use relay_client::{Client, Event};
use serde_json::{Value, json};

use crate::support::{
    API_KEY, Cluster, Kind, NodeProcess, WAIT, ask, connect, expect_event, merchant_token, metric,
    post_event, refusal, resume, token, until_status, until_sync_done,
};

async fn send(client: &Client, order: &str, text: &str) -> Value {
    ask(
        client,
        "chat:send",
        json!({"order_id": order, "text": text}),
    )
    .await
}

async fn history(client: &Client, query: Value) -> Value {
    ask(client, "chat:history", query).await
}

/// `o1` for customer `c1` at store `s1`, assigned to `d1`, status
/// `preparing` seen by `customer` (so every entry before it is applied).
async fn order_with_driver(cluster: &Cluster, customer: &mut Client) {
    cluster
        .xadd(
            "order.created",
            json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": [],
                   "accept_timeout_s": 1}),
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
            json!({"order_id": "o1", "status": "preparing"}),
        )
        .await;
    until_status(customer, "preparing").await;
}

/// The chat messages and status updates among `events`, as `event_id`s.
fn order_events(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.name == "chat:message" || e.name == "order:status_update")
        .map(|e| e.data()["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_own_and_foreign_orders_before_and_after_the_terminal_status() {
    every_role_against_own_and_foreign_orders_before_and_after_the_terminal_status_on(Kind::Server)
        .await;
}

async fn every_role_against_own_and_foreign_orders_before_and_after_the_terminal_status_on(
    kind: Kind,
) {
    let cluster = Cluster::start_on(kind, "chat-permissions", 2, &[]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let c1 = connect(&a, &token("c1", Role::Customer)).await;
    // The same customer on another device, watching what the order room gets.
    let mut watcher = connect(&b, &token("c1", Role::Customer)).await;
    let c2 = connect(&b, &token("c2", Role::Customer)).await;
    let d1 = connect(&b, &token("d1", Role::Driver)).await;
    let d2 = connect(&a, &token("d2", Role::Driver)).await;
    let merchant = connect(&a, &merchant_token("m1", &["s1"])).await;
    let support = connect(&b, &token("s1", Role::Support)).await;
    let admin = connect(&a, &token("a1", Role::Admin)).await;
    order_with_driver(&cluster, &mut watcher).await;

    let who: [(&str, &Client, bool); 7] = [
        ("own customer", &c1, true),
        ("foreign customer", &c2, false),
        ("own driver", &d1, true),
        ("foreign driver", &d2, false),
        ("merchant of the store", &merchant, false),
        ("support", &support, true),
        ("admin", &admin, true),
    ];
    let mut sent = Vec::new();
    for (name, client, party) in &who {
        let ack = send(client, "o1", &format!("from {name}")).await;
        let read = history(client, json!({"order_id": "o1"})).await;
        if *party {
            assert_eq!(ack["ok"], true, "{name}: {ack}");
            let id = ack["event_id"].as_str().expect("event_id").to_owned();
            let ms: u64 = id
                .split('-')
                .next()
                .and_then(|m| m.parse().ok())
                .expect("ms");
            assert_eq!(ack["ts"], ms, "{name}: ts is the entry's time");
            sent.push(id);
            assert_eq!(read["ok"], true, "{name}: {read}");
        } else {
            assert_eq!(refusal(&ack), "not allowed", "{name} sends");
            assert_eq!(refusal(&read), "not allowed", "{name} reads");
        }
    }
    // A foreign order (and one that does not exist) for the customer and driver.
    assert_eq!(refusal(&send(&c1, "o-none", "hi").await), "not allowed");
    assert_eq!(refusal(&send(&d1, "o-none", "hi").await), "not allowed");

    let last = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "delivered"}),
        )
        .await;
    let seen = until_status(&mut watcher, "delivered").await;
    let got = order_events(&seen);
    assert_eq!(
        got[..got.len() - 1],
        sent[..],
        "every message before the end"
    );
    assert_eq!(got.last(), Some(&last));

    for (name, client, party) in &who {
        let ack = send(client, "o1", "after the end").await;
        let read = history(client, json!({"order_id": "o1"})).await;
        if *party {
            assert_eq!(
                refusal(&ack),
                "order not active",
                "{name} sends after the end"
            );
            let ids: Vec<&str> = read["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| m["event_id"].as_str().expect("event_id"))
                .collect();
            assert_eq!(ids, sent, "{name} still reads the chat");
        } else {
            assert_eq!(refusal(&ack), "not allowed", "{name} sends after the end");
            assert_eq!(refusal(&read), "not allowed", "{name} reads after the end");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_status_events_of_one_order_arrive_in_one_order_for_everyone_across_nodes() {
    chat_and_status_events_of_one_order_arrive_in_one_order_for_everyone_across_nodes_on(
        Kind::Server,
    )
    .await;
}

async fn chat_and_status_events_of_one_order_arrive_in_one_order_for_everyone_across_nodes_on(
    kind: Kind,
) {
    let cluster = Cluster::start_on(kind, "chat-order", 2, &[]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let mut customer = connect(&a, &token("c1", Role::Customer)).await;
    let mut driver = connect(&b, &token("d1", Role::Driver)).await;
    let mut support = connect(&a, &token("s1", Role::Support)).await;
    order_with_driver(&cluster, &mut customer).await;
    until_status(&mut driver, "preparing").await;
    let ok = ask(&support, "order:subscribe", json!({"order_id": "o1"})).await;
    assert_eq!(ok["ok"], true);

    let mut appended = Vec::new();
    for i in 0..8 {
        let ack = send(&customer, "o1", &format!("c{i}")).await;
        appended.push(ack["event_id"].as_str().expect("id").to_owned());
        appended.push(
            cluster
                .xadd(
                    "order.status",
                    json!({"order_id": "o1", "status": format!("s{i}")}),
                )
                .await,
        );
        let ack = send(&driver, "o1", &format!("d{i}")).await;
        appended.push(ack["event_id"].as_str().expect("id").to_owned());
    }
    cluster
        .xadd("order.status", json!({"order_id": "o1", "status": "last"}))
        .await;
    let mut expected = appended.clone();
    // Acks and XADDs answered in stream order: ids grow.
    expected.sort_by_key(|id| {
        let (ms, seq) = id.split_once('-').expect("ms-seq");
        (
            ms.parse::<u64>().expect("ms"),
            seq.parse::<u64>().expect("seq"),
        )
    });
    assert_eq!(expected, appended);
    for (name, client) in [
        ("customer", &mut customer),
        ("driver", &mut driver),
        ("support", &mut support),
    ] {
        let events = until_status(client, "last").await;
        let got = order_events(&events);
        assert_eq!(got[..got.len() - 1], appended[..], "{name} sees one order");
        let texts: Vec<&str> = events
            .iter()
            .filter(|e| e.name == "chat:message")
            .map(|e| e.data()["text"].as_str().expect("text"))
            .collect();
        let want: Vec<String> = (0..8)
            .flat_map(|i| [format!("c{i}"), format!("d{i}")])
            .collect();
        assert_eq!(texts, want, "{name}");
    }
    let message = {
        let read = history(&customer, json!({"order_id": "o1", "limit": 1})).await;
        read["messages"][0].clone()
    };
    assert_eq!(
        message,
        json!({"event_id": appended[appended.len() - 1], "order_id": "o1",
               "from": {"id": "d1", "role": "driver"}, "text": "d7",
               "ts": message["ts"].clone()}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_with_last_event_id_gets_the_messages_sent_while_it_was_away() {
    a_client_back_with_last_event_id_gets_the_messages_sent_while_it_was_away_on(Kind::Server)
        .await;
}

async fn a_client_back_with_last_event_id_gets_the_messages_sent_while_it_was_away_on(kind: Kind) {
    let cluster = Cluster::start_on(kind, "chat-recovery", 2, &[]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let jwt = token("c1", Role::Customer);
    let mut customer = connect(&a, &jwt).await;
    let mut driver = connect(&b, &token("d1", Role::Driver)).await;
    order_with_driver(&cluster, &mut customer).await;
    let before = send(&customer, "o1", "see you").await;
    let mine = expect_event(&mut customer, "chat:message").await;
    assert_eq!(
        mine.data()["event_id"],
        before["event_id"],
        "the sender's own too"
    );
    customer.disconnect().await;

    let mut missed = Vec::new();
    for text in ["on my way", "at the door"] {
        missed.push(send(&driver, "o1", text).await["event_id"].clone());
    }
    missed.push(json!(
        cluster
            .xadd(
                "order.status",
                json!({"order_id": "o1", "status": "arrived"})
            )
            .await
    ));
    let typing = ask(&driver, "chat:typing", json!({"order_id": "o1"})).await;
    assert_eq!(typing["ok"], true);
    missed.push(send(&driver, "o1", "knock knock").await["event_id"].clone());
    // Delivered everywhere before the client comes back.
    loop {
        let event = driver.next_event(WAIT).await.expect("the last message");
        if event.name == "chat:message" && event.data()["event_id"] == missed[3] {
            break;
        }
    }

    let before = before["event_id"].as_str().expect("event_id");
    let mut back = resume(&b, &jwt, before).await;
    let (events, done) = until_sync_done(&mut back).await;
    assert!(
        events.iter().all(|e| e.name != "chat:typing"),
        "typing is never replayed: {events:?}"
    );
    let replayed: Vec<Value> = events
        .iter()
        .map(|e| e.data()["event_id"].clone())
        .collect();
    assert_eq!(done, json!({"recovered": true}));
    assert_eq!(
        replayed, missed,
        "each missed message and update, in order, once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_too_short_for_the_messages_missed_is_not_recovered() {
    a_history_too_short_for_the_messages_missed_is_not_recovered_on(Kind::Server).await;
}

async fn a_history_too_short_for_the_messages_missed_is_not_recovered_on(kind: Kind) {
    let cluster = Cluster::start_on(
        kind,
        "chat-recovery-short",
        2,
        &[("RELAY_HISTORY_SIZE", "2")],
    )
    .await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let jwt = token("c1", Role::Customer);
    let mut customer = connect(&a, &jwt).await;
    let mut driver = connect(&b, &token("d1", Role::Driver)).await;
    order_with_driver(&cluster, &mut customer).await;
    let seen = send(&customer, "o1", "hello").await["event_id"].clone();
    customer.disconnect().await;
    for i in 0..4 {
        send(&driver, "o1", &format!("m{i}")).await;
    }
    let last = cluster
        .xadd(
            "order.status",
            json!({"order_id": "o1", "status": "arrived"}),
        )
        .await;
    until_status(&mut driver, "arrived").await;

    let mut back = resume(&b, &jwt, seen.as_str().expect("event_id")).await;
    let first = back.next_event(WAIT).await.expect("sync:done");
    assert_eq!(first.name, "sync:done", "no partial replay: {first:?}");
    assert_eq!(first.data(), &json!({"recovered": false}));
    // Still in its rooms: the next event comes live.
    let next = cluster
        .xadd("order.status", json!({"order_id": "o1", "status": "next"}))
        .await;
    let live = expect_event(&mut back, "order:status_update").await;
    assert_eq!(live.data()["event_id"], next);
    assert_ne!(last, next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_back_with_before_and_limit_oldest_first_and_keeps_the_last_n() {
    history_pages_back_with_before_and_limit_oldest_first_and_keeps_the_last_n_on(Kind::Server)
        .await;
}

async fn history_pages_back_with_before_and_limit_oldest_first_and_keeps_the_last_n_on(kind: Kind) {
    let cluster = Cluster::start_on(kind, "chat-history", 2, &[("RELAY_CHAT_HISTORY", "5")]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let mut customer = connect(&a, &token("c1", Role::Customer)).await;
    let driver = connect(&b, &token("d1", Role::Driver)).await;
    order_with_driver(&cluster, &mut customer).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let client = if i % 2 == 0 { &customer } else { &driver };
        ids.push(send(client, "o1", &format!("m{i}")).await["event_id"].clone());
    }
    // The backend's message: from `system`, with the id it names.
    ids.push(json!(
        cluster
            .xadd(
                "chat.message",
                json!({"order_id": "o1", "text": "m5", "from_id": "ops"})
            )
            .await
    ));
    let system = loop {
        let event = expect_event(&mut customer, "chat:message").await;
        if event.data()["event_id"] == ids[5] {
            break event;
        }
    };
    assert_eq!(
        system.data()["from"],
        json!({"id": "ops", "role": "system"})
    );

    let texts = |read: &Value| -> Vec<String> {
        assert_eq!(read["ok"], true, "{read}");
        read["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["text"].as_str().expect("text").to_owned())
            .collect()
    };
    // Five kept of six: the oldest is gone.
    let all = history(&driver, json!({"order_id": "o1"})).await;
    assert_eq!(texts(&all), ["m1", "m2", "m3", "m4", "m5"]);
    let newest = history(&driver, json!({"order_id": "o1", "limit": 2})).await;
    assert_eq!(texts(&newest), ["m4", "m5"]);
    let page = history(
        &customer,
        json!({"order_id": "o1", "before": ids[4], "limit": 2}),
    )
    .await;
    assert_eq!(texts(&page), ["m2", "m3"]);
    let last_page = history(&customer, json!({"order_id": "o1", "before": ids[2]})).await;
    assert_eq!(texts(&last_page), ["m1"]);
    let past_the_start = history(&customer, json!({"order_id": "o1", "before": ids[1]})).await;
    assert_eq!(texts(&past_the_start), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_others_in_the_room_only_and_merchants_get_no_chat() {
    typing_reaches_the_others_in_the_room_only_and_merchants_get_no_chat_on(Kind::Server).await;
}

async fn typing_reaches_the_others_in_the_room_only_and_merchants_get_no_chat_on(kind: Kind) {
    let cluster = Cluster::start_on(kind, "chat-typing", 2, &[]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let mut customer = connect(&a, &token("c1", Role::Customer)).await;
    let mut driver = connect(&b, &token("d1", Role::Driver)).await;
    let mut merchant = connect(&b, &merchant_token("m1", &["s1"])).await;
    let stranger = connect(&a, &token("c2", Role::Customer)).await;
    order_with_driver(&cluster, &mut customer).await;
    until_status(&mut driver, "preparing").await;
    until_status(&mut merchant, "preparing").await;
    let ok = ask(&merchant, "order:subscribe", json!({"order_id": "o1"})).await;
    assert_eq!(ok["ok"], true, "the merchant is in the order room: {ok}");

    let ack = ask(&customer, "chat:typing", json!({"order_id": "o1"})).await;
    assert_eq!(ack, json!({"ok": true}));
    let typing = driver.next_event(WAIT).await.expect("typing");
    assert_eq!(typing.name, "chat:typing");
    assert_eq!(
        typing.data(),
        &json!({"order_id": "o1", "from": {"id": "c1", "role": "customer"}})
    );
    let message = send(&driver, "o1", "ok").await["event_id"].clone();
    let status = cluster
        .xadd("order.status", json!({"order_id": "o1", "status": "ready"}))
        .await;
    // The sender of the typing notice and the merchant see what comes
    // next first: the notice never reached them.
    let next = customer.next_event(WAIT).await.expect("next");
    assert_eq!(
        (next.name.as_str(), &next.data()["event_id"]),
        ("chat:message", &message)
    );
    let next = merchant.next_event(WAIT).await.expect("next");
    assert_eq!(
        (next.name.as_str(), &next.data()["event_id"]),
        ("order:status_update", &json!(status)),
        "no chat:typing nor chat:message for a merchant"
    );
    assert_eq!(
        refusal(&ask(&merchant, "chat:typing", json!({"order_id": "o1"})).await),
        "not allowed"
    );
    assert_eq!(
        refusal(&ask(&stranger, "chat:typing", json!({"order_id": "o1"})).await),
        "not allowed"
    );
    // A merchant coming back with its last event id is not replayed chat either.
    let baseline = typing_baseline(&cluster).await;
    let mut back = resume(&a, &merchant_token("m1", &["s1"]), &baseline).await;
    let (events, done) = until_sync_done(&mut back).await;
    assert!(
        events.iter().all(|e| !e.name.starts_with("chat:")),
        "no chat replayed to a merchant: {events:?}"
    );
    assert_eq!(done["recovered"], true);
}

/// The event id of `preparing`, the last status before the test's chat.
async fn typing_baseline(cluster: &Cluster) -> String {
    cluster
        .entries("events")
        .await
        .into_iter()
        .find(|(_, fields)| fields.get("data").is_some_and(|d| d.contains("preparing")))
        .map(|(id, _)| id)
        .expect("the preparing entry")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_is_appended_to_the_chat_stream_once_also_when_handled_twice() {
    each_message_is_appended_to_the_chat_stream_once_also_when_handled_twice_on(Kind::Server).await;
}

async fn each_message_is_appended_to_the_chat_stream_once_also_when_handled_twice_on(kind: Kind) {
    let cluster = Cluster::start_on(kind, "chat-once", 2, &[]).await;
    let (a, b) = (cluster.url(0), cluster.url(1));
    let mut customer = connect(&a, &token("c1", Role::Customer)).await;
    let driver = connect(&b, &token("d1", Role::Driver)).await;
    order_with_driver(&cluster, &mut customer).await;
    let mut ids = Vec::new();
    for (client, text) in [(&customer, "one"), (&driver, "two"), (&customer, "three")] {
        ids.push(
            send(client, "o1", text).await["event_id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    let backend = cluster
        .xadd("chat.message", json!({"order_id": "o1", "text": "four"}))
        .await;
    ids.push(backend.clone());
    let entries = cluster.wait_entries("chat", 4).await;
    let fields: Vec<(String, String, String, String)> = entries
        .iter()
        .map(|(_, f)| {
            (
                f["event_id"].clone(),
                f["order_id"].clone(),
                format!("{}/{}", f["from_id"], f["from_role"]),
                f["text"].clone(),
            )
        })
        .collect();
    assert_eq!(
        fields,
        [
            (
                ids[0].clone(),
                "o1".into(),
                "c1/customer".into(),
                "one".into()
            ),
            (
                ids[1].clone(),
                "o1".into(),
                "d1/driver".into(),
                "two".into()
            ),
            (
                ids[2].clone(),
                "o1".into(),
                "c1/customer".into(),
                "three".into()
            ),
            (ids[3].clone(), "o1".into(), "/system".into(), "four".into()),
        ]
    );
    for (_, f) in &entries {
        let ms = f["event_id"].split('-').next().expect("ms");
        assert_eq!(f["ts"], ms, "ts is the entry's time");
    }

    // Every entry handled again, as after a takeover.
    let until = cluster
        .xadd("order.status", json!({"order_id": "o1", "status": "mark"}))
        .await;
    until_status(&mut customer, "mark").await;
    let mut conn = cluster.redis.connection().await;
    let () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(cluster.key("events"))
        .arg(cluster.key("relay"))
        .arg("0")
        .query_async(&mut conn)
        .await
        .expect("XGROUP SETID");
    let after = cluster
        .xadd("order.status", json!({"order_id": "o1", "status": "after"}))
        .await;
    let events = until_status(&mut customer, "after").await;
    assert_ne!(until, after);
    // The second round emits no older message again; the newest may go
    // again (its emit might not have gone out), with its own event_id.
    let again: Vec<&str> = events
        .iter()
        .filter(|e| e.name == "chat:message")
        .map(|e| e.data()["event_id"].as_str().expect("id"))
        .collect();
    assert!(
        again.iter().all(|id| *id == ids[3]),
        "older messages re-emitted: {again:?}"
    );
    assert_eq!(
        cluster.entries("chat").await.len(),
        4,
        "no message appended twice"
    );
    let read = history(&customer, json!({"order_id": "o1"})).await;
    let logged: Vec<&str> = read["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["event_id"].as_str().expect("id"))
        .collect();
    assert_eq!(logged, ids, "each message logged once");
    assert!(
        metric(&a, r#"relay_stream_superseded_total{type="chat.message"}"#).await
            + metric(&b, r#"relay_stream_superseded_total{type="chat.message"}"#).await
            >= 3.0,
        "the older messages were recognised as repeats"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_payloads_of_every_chat_event_get_their_error_ack_and_a_counter() {
    let cluster = Cluster::start("chat-invalid", 1, &[("RELAY_CHAT_MAX_CHARS", "5")]).await;
    let url = cluster.url(0);
    let mut customer = connect(&url, &token("c1", Role::Customer)).await;
    order_with_driver(&cluster, &mut customer).await;
    let bad_sends = [
        json!("just text"),
        json!({"order_id": 1, "text": "hi"}),
        json!({"order_id": "o1"}),
        json!({"order_id": "o1", "text": "   \n"}),
        json!({"order_id": "o1", "text": ""}),
        json!({"order_id": "o1", "text": "toolong"}),
        json!({"order_id": "", "text": "hi"}),
        json!({"order_id": "o1", "text": "hi", "client_msg_id": 7}),
    ];
    for payload in &bad_sends {
        let ack = ask(&customer, "chat:send", payload.clone()).await;
        assert_eq!(refusal(&ack), "invalid message", "{payload}");
    }
    // Five characters, not bytes: accepted.
    let ok = ask(
        &customer,
        "chat:send",
        json!({"order_id": "o1", "text": "héllo", "client_msg_id": "k1"}),
    )
    .await;
    assert_eq!(ok["ok"], true, "{ok}");
    let echoed = expect_event(&mut customer, "chat:message").await;
    assert_eq!(echoed.data()["client_msg_id"], "k1");
    for payload in [
        json!([1, 2]),
        json!({"order_id": "o1", "limit": 0}),
        json!({"order_id": "o1", "limit": 201}),
        json!({"order_id": "o1", "before": "yesterday"}),
    ] {
        let ack = ask(&customer, "chat:history", payload.clone()).await;
        assert_eq!(refusal(&ack), "invalid message", "{payload}");
    }
    for payload in [json!({}), json!(null), json!({"order_id": ["o1"]})] {
        let ack = ask(&customer, "chat:typing", payload.clone()).await;
        assert_eq!(refusal(&ack), "invalid message", "{payload}");
    }
    assert_eq!(
        metric(&url, r#"relay_chat_messages_total{outcome="invalid"}"#).await,
        bad_sends.len() as f64
    );
    assert_eq!(
        metric(&url, r#"relay_chat_messages_total{outcome="sent"}"#).await,
        1.0
    );
    assert_eq!(
        metric(
            &url,
            r#"relay_client_events_total{event="chat:history",outcome="rejected"}"#
        )
        .await,
        4.0
    );
    assert_eq!(
        metric(
            &url,
            r#"relay_client_events_total{event="chat:typing",outcome="rejected"}"#
        )
        .await,
        3.0
    );
    // The node is fine: the next message goes through.
    assert_eq!(send(&customer, "o1", "still").await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_chats_the_same_way() {
    let node = NodeProcess::spawn_ready(&[
        ("RELAY_API_KEY", API_KEY),
        ("RELAY_CLIENT_EVENTS_PER_S", "1000"),
    ])
    .await;
    let url = node.url();
    let mut customer = connect(&url, &token("c1", Role::Customer)).await;
    let mut driver = connect(&url, &token("d1", Role::Driver)).await;
    let mut merchant = connect(&url, &merchant_token("m1", &["s1"])).await;
    for body in [
        json!({"type": "order.created", "data": {"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": [], "accept_timeout_s": 1}}),
        json!({"type": "order.assigned", "data": {"order_id": "o1", "driver_id": "d1"}}),
        json!({"type": "order.status", "data": {"order_id": "o1", "status": "preparing"}}),
    ] {
        assert_eq!(post_event(&url, &body).await.status(), 202);
    }
    until_status(&mut customer, "preparing").await;
    until_status(&mut driver, "preparing").await;
    until_status(&mut merchant, "preparing").await;
    assert_eq!(
        ask(&merchant, "order:subscribe", json!({"order_id": "o1"})).await["ok"],
        true
    );

    let ack = send(&customer, "o1", "hello").await;
    assert_eq!(ack["ok"], true, "{ack}");
    let got = expect_event(&mut driver, "chat:message").await;
    let typing = ask(&driver, "chat:typing", json!({"order_id": "o1"})).await;
    assert_eq!(typing["ok"], true);
    assert_eq!(got.data()["event_id"], ack["event_id"]);
    assert_eq!(got.data()["from"], json!({"id": "c1", "role": "customer"}));
    let seen = customer.next_event(WAIT).await.expect("own message");
    assert_eq!(seen.name, "chat:message");
    let typing = customer.next_event(WAIT).await.expect("typing");
    assert_eq!(typing.name, "chat:typing");

    // The backend posts as `system`, and may not speak for a participant.
    let forged = post_event(
        &url,
        &json!({"type": "chat.message", "data":
        {"order_id": "o1", "text": "x", "from_id": "c1", "from_role": "customer"}}),
    )
    .await;
    assert_eq!(forged.status(), 400);
    let system = post_event(
        &url,
        &json!({"type": "chat.message", "data": {"order_id": "o1", "text": "from ops"}}),
    )
    .await;
    assert_eq!(system.status(), 202);
    let posted = expect_event(&mut customer, "chat:message").await;
    assert_eq!(posted.data()["from"]["role"], "system");
    assert_eq!(
        post_event(
            &url,
            &json!({"type": "order.status", "data": {"order_id": "o1", "status": "delivered"}})
        )
        .await
        .status(),
        202
    );
    let events = until_status(&mut merchant, "delivered").await;
    assert!(
        events.iter().all(|e| !e.name.starts_with("chat:")),
        "a merchant gets no chat: {events:?}"
    );
    until_status(&mut customer, "delivered").await;
    assert_eq!(
        refusal(&send(&customer, "o1", "late").await),
        "order not active"
    );
    let read = history(&driver, json!({"order_id": "o1"})).await;
    let texts: Vec<&str> = read["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().expect("text"))
        .collect();
    assert_eq!(texts, ["hello", "from ops"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_taken_over_from_a_node_killed_before_its_ack_is_in_the_chat_stream_once() {
    a_message_taken_over_from_a_node_killed_before_its_ack_is_in_the_chat_stream_once_on(
        Kind::Server,
    )
    .await;
}

async fn a_message_taken_over_from_a_node_killed_before_its_ack_is_in_the_chat_stream_once_on(
    kind: Kind,
) {
    let mut cluster =
        Cluster::start_on(kind, "chat-takeover", 0, &[("RELAY_CLAIM_IDLE_MS", "1000")]).await;
    let first = cluster
        .add_node_with(&[("RELAY_TEST_CRASH_BEFORE_ACK", "chat.message")])
        .await;
    let mut customer = connect(&cluster.url(first), &token("c1", Role::Customer)).await;
    order_with_driver(&cluster, &mut customer).await;
    let preparing = typing_baseline(&cluster).await;
    let ack = send(&customer, "o1", "hello").await;
    let id = ack["event_id"].as_str().expect("event_id").to_owned();
    assert_ne!(
        cluster.nodes[first].exit_code().await,
        Some(0),
        "the node died after the message's effect, before its ack"
    );

    let survivor = cluster.add_node(None).await;
    let mut driver = resume(
        &cluster.url(survivor),
        &token("d1", Role::Driver),
        &preparing,
    )
    .await;
    // Replayed from the first handling or emitted by the second: once seen, either way.
    loop {
        let event = driver.next_event(WAIT).await.expect("the message");
        if event.name == "chat:message" {
            assert_eq!(event.data()["event_id"], id.as_str());
            assert_eq!(event.data()["text"], "hello");
            break;
        }
    }
    cluster.wait_all_handled(&id).await;
    let feed = cluster.entries("chat").await;
    assert_eq!(feed.len(), 1, "appended once: {feed:?}");
    assert_eq!(feed[0].1["event_id"], id);
    let read = history(&driver, json!({"order_id": "o1"})).await;
    assert_eq!(read["messages"].as_array().map(Vec::len), Some(1), "{read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_beyond_its_event_budget_is_rate_limited_and_counted() {
    let cluster = Cluster::start("chat-budget", 1, &[("RELAY_CLIENT_EVENTS_PER_S", "1")]).await;
    let url = cluster.url(0);
    let mut customer = connect(&url, &token("c1", Role::Customer)).await;
    order_with_driver(&cluster, &mut customer).await;
    // A burst of one: the first is sent, the ones right after it are not.
    let acks = [
        send(&customer, "o1", "one").await,
        send(&customer, "o1", "two").await,
        history(&customer, json!({"order_id": "o1"})).await,
        ask(&customer, "chat:typing", json!({"order_id": "o1"})).await,
    ];
    assert_eq!(acks[0]["ok"], true, "{:?}", acks[0]);
    for ack in &acks[1..] {
        assert_eq!(refusal(ack), "rate limited");
    }
    assert_eq!(
        metric(&url, r#"relay_chat_messages_total{outcome="rate_limited"}"#).await,
        1.0
    );
}

/// The same behaviours with the nodes on a Redis Cluster (three primaries
/// with a replica each) instead of one server.
mod on_a_redis_cluster {
    use crate::support::Kind;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chat_and_status_events_of_one_order_arrive_in_one_order_for_everyone_across_nodes() {
        super::chat_and_status_events_of_one_order_arrive_in_one_order_for_everyone_across_nodes_on(Kind::Cluster).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_back_with_last_event_id_gets_the_messages_sent_while_it_was_away() {
        super::a_client_back_with_last_event_id_gets_the_messages_sent_while_it_was_away_on(
            Kind::Cluster,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn history_pages_back_with_before_and_limit_oldest_first_and_keeps_the_last_n() {
        super::history_pages_back_with_before_and_limit_oldest_first_and_keeps_the_last_n_on(
            Kind::Cluster,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn typing_reaches_the_others_in_the_room_only_and_merchants_get_no_chat() {
        super::typing_reaches_the_others_in_the_room_only_and_merchants_get_no_chat_on(
            Kind::Cluster,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_message_is_appended_to_the_chat_stream_once_also_when_handled_twice() {
        super::each_message_is_appended_to_the_chat_stream_once_also_when_handled_twice_on(
            Kind::Cluster,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_role_against_own_and_foreign_orders_before_and_after_the_terminal_status() {
        super::every_role_against_own_and_foreign_orders_before_and_after_the_terminal_status_on(
            Kind::Cluster,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_history_too_short_for_the_messages_missed_is_not_recovered() {
        super::a_history_too_short_for_the_messages_missed_is_not_recovered_on(Kind::Cluster).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_taken_over_from_a_node_killed_before_its_ack_is_in_the_chat_stream_once() {
        super::a_message_taken_over_from_a_node_killed_before_its_ack_is_in_the_chat_stream_once_on(
            Kind::Cluster,
        )
        .await;
    }
}
