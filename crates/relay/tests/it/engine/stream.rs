//! `EventStream`: appending and reading in order, the consumer group's
//! pending entries, per-order sequencing, dead letters, offers' outcomes.

use std::time::Duration;

use relay::{
    engine::{Engine, EventStream, OfferState, StreamEntry, cmp_offsets, redis::RedisEngine},
    events::ServerEvent,
    outcome::{Outcome, OutcomeKind},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Fixture, Settings, cluster, conformance, eventually, within};
use crate::support::QUIET;

conformance! {
    appended_entries_are_read_once_in_stream_order,
    wait_new_returns_when_an_entry_arrives_or_at_its_timeout,
    stats_count_lag_and_pending_until_acked,
    recent_events_come_newest_last_and_outlive_their_ack,
    an_orders_entries_take_turns_in_stream_order,
    an_entry_advanced_out_of_turn_leaves_the_queue,
    an_entry_not_in_any_queue_does_not_wait,
    a_cancelled_wait_for_the_turn_returns,
    dead_letters_keep_the_raw_entry_and_release_its_order,
    dead_letters_keep_fields_that_are_not_text_byte_for_byte,
    an_offer_has_exactly_one_outcome,
    offer_state_goes_fresh_offered_decided,
    a_geo_requests_targets_are_the_first_ones_found,
    entries_in_flight_are_never_claimed(Settings {
        claim_idle: Duration::from_millis(100),
        ..Settings::default()
    }),
}

cluster! {
    a_restarted_node_reads_its_own_pending_entries_first,
    a_peer_claims_the_entries_of_a_stopped_node(Settings {
        claim_idle: Duration::from_millis(200),
        ..Settings::default()
    }),
    handed_back_entries_are_claimable_at_once,
    an_orders_entries_take_turns_across_nodes,
    a_queue_head_no_longer_pending_stops_blocking_its_order,
    kept_alive_entries_are_not_claimed(Settings {
        claim_idle: Duration::from_millis(300),
        ..Settings::default()
    }),
    the_read_script_queues_an_entry_by_its_order_only_when_its_data_is_text,
    entries_delivered_too_often_go_to_the_dead_letters(Settings {
        claim_idle: Duration::from_millis(100),
        max_deliveries: 2,
        ..Settings::default()
    }),
}

fn status(order: &str, status: &str) -> String {
    json!({"order_id": order, "status": status}).to_string()
}

fn ids(entries: &[StreamEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.id.as_str()).collect()
}

async fn append<E: Engine>(engine: &E, kind: &str, data: &str) -> String {
    engine.stream().append(kind, data).await.expect("append")
}

async fn read_all<E: Engine>(engine: &E) -> Vec<StreamEntry> {
    engine.stream().read_new(100).await.expect("read_new")
}

async fn appended_entries_are_read_once_in_stream_order<E: Engine>(engine: &E) {
    let stream = engine.stream();
    assert!(read_all(engine).await.is_empty(), "a new stream is empty");
    let sent = [
        ("order.created", r#"{"order_id":"o1","customer_id":"c1"}"#),
        (
            "admin.alert",
            r#"{"level":"info","message":"ünïcode \"quoted\""}"#,
        ),
        ("order.status", "not json at all"),
    ];
    let mut appended = Vec::new();
    for (kind, data) in sent {
        appended.push(append(engine, kind, data).await);
    }
    for pair in appended.windows(2) {
        assert_eq!(
            cmp_offsets(&pair[0], &pair[1]),
            std::cmp::Ordering::Less,
            "ids grow: {appended:?}"
        );
    }
    let first = stream.read_new(2).await.expect("read_new");
    let rest = read_all(engine).await;
    assert_eq!(ids(&first), appended[..2], "read_new takes at most `count`");
    assert_eq!(ids(&rest), appended[2..]);
    for (entry, (kind, data)) in first.iter().chain(&rest).zip(sent) {
        assert_eq!(entry.kind_str(), Some(kind));
        assert_eq!(entry.data_str(), Some(data), "data read back as appended");
    }
    assert!(read_all(engine).await.is_empty(), "each entry is read once");
}

async fn wait_new_returns_when_an_entry_arrives_or_at_its_timeout<E: Engine>(engine: &E) {
    let stream = engine.stream();
    assert!(read_all(engine).await.is_empty());
    let started = tokio::time::Instant::now();
    within(
        "wait_new on an empty stream",
        stream.wait_new(Duration::from_millis(200)),
    )
    .await
    .expect("wait_new");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "returns at its timeout"
    );

    // Whichever comes first, the append or the wait: the wait ends early.
    let started = tokio::time::Instant::now();
    let (waited, id) = tokio::join!(
        within("wait_new", stream.wait_new(Duration::from_secs(8))),
        append(engine, "admin.alert", r#"{"n":1}"#),
    );
    waited.expect("wait_new");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "woken by the append, not the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(ids(&read_all(engine).await), [id.as_str()]);
}

async fn stats_count_lag_and_pending_until_acked<E: Engine>(engine: &E) {
    let stream = engine.stream();
    let stats = stream.stats().await.expect("stats");
    assert_eq!(stats.pending, 0);
    assert!(stats.oldest_pending.is_none());
    for n in 0..3 {
        append(engine, "admin.alert", &format!(r#"{{"n":{n}}}"#)).await;
    }
    // `lag` is None only where Redis cannot tell (6.2).
    let stats = stream.stats().await.expect("stats");
    assert!(stats.lag.is_none_or(|lag| lag == 3), "{stats:?}");
    assert_eq!(stats.pending, 0);

    let read = stream.read_new(2).await.expect("read_new");
    let stats = stream.stats().await.expect("stats");
    assert!(stats.lag.is_none_or(|lag| lag == 1), "{stats:?}");
    assert_eq!(stats.pending, 2, "read, not acked: pending");
    assert!(stats.oldest_pending.is_some());

    stream.ack(&read[0].id).await.expect("ack");
    assert_eq!(stream.stats().await.expect("stats").pending, 1);
    stream.ack(&read[1].id).await.expect("ack");
    // Acking twice is harmless.
    stream.ack(&read[1].id).await.expect("ack again");
    let stats = stream.stats().await.expect("stats");
    assert_eq!(stats.pending, 0);
    assert!(stats.oldest_pending.is_none());
}

async fn recent_events_come_newest_last_and_outlive_their_ack<E: Engine>(engine: &E) {
    let stream = engine.stream();
    let mut appended = Vec::new();
    for n in 0..3 {
        appended.push(append(engine, "admin.alert", &format!(r#"{{"n":{n}}}"#)).await);
    }
    for entry in read_all(engine).await {
        stream.ack(&entry.id).await.expect("ack");
    }
    let recent = stream.recent_events(2).await.expect("recent_events");
    assert_eq!(ids(&recent), appended[1..]);
    assert_eq!(recent[1].kind_str(), Some("admin.alert"));
    assert_eq!(recent[1].data_str(), Some(r#"{"n":2}"#));
    assert_eq!(stream.recent_events(100).await.expect("recent").len(), 3);
}

async fn an_orders_entries_take_turns_in_stream_order<E: Engine>(engine: &E) {
    let stream = engine.stream();
    let never = CancellationToken::new();
    let a1 = append(engine, "order.status", &status("o1", "accepted")).await;
    let b1 = append(engine, "order.status", &status("o2", "accepted")).await;
    let a2 = append(engine, "order.status", &status("o1", "preparing")).await;
    let a3 = append(engine, "order.status", &status("o1", "ready")).await;
    let alert = append(engine, "admin.alert", r#"{"level":"info"}"#).await;
    let read = read_all(engine).await;
    assert_eq!(ids(&read), [&a1, &b1, &a2, &a3, &alert]);
    let first: Vec<&str> = read
        .iter()
        .filter(|e| e.first_in_order)
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(
        first,
        [&a1, &b1],
        "the entries read into an empty queue are first in their order"
    );

    // The head of each order goes at once.
    within("head of o1", stream.wait_turn("o1", &a1, &never))
        .await
        .expect("turn");
    within("head of o2", stream.wait_turn("o2", &b1, &never))
        .await
        .expect("turn");
    // A later entry waits while the earlier one is not emitted.
    assert!(
        tokio::time::timeout(QUIET, stream.wait_turn("o1", &a2, &never))
            .await
            .is_err(),
        "o1's second entry must wait for its first"
    );
    // Emitting the head lets the next one go, however it learns of it.
    let (turn, advanced) = tokio::join!(
        within(
            "o1's second entry after the first",
            stream.wait_turn("o1", &a2, &never)
        ),
        stream.advance("o1", &a1),
    );
    advanced.expect("advance");
    turn.expect("turn");
    assert!(
        tokio::time::timeout(QUIET, stream.wait_turn("o1", &a3, &never))
            .await
            .is_err(),
        "o1's third entry waits for its second"
    );
    stream.advance("o1", &a2).await.expect("advance");
    within("o1's third entry", stream.wait_turn("o1", &a3, &never))
        .await
        .expect("turn");
    stream.advance("o1", &a3).await.expect("advance");
    stream.advance("o2", &b1).await.expect("advance");

    // With its queue empty, the order's next entry is first again.
    let a4 = append(engine, "order.status", &status("o1", "picked_up")).await;
    let read = read_all(engine).await;
    assert_eq!(ids(&read), [&a4]);
    assert!(read[0].first_in_order, "o1's queue was empty again");
}

async fn an_entry_advanced_out_of_turn_leaves_the_queue<E: Engine>(engine: &E) {
    let stream = engine.stream();
    let never = CancellationToken::new();
    let a1 = append(engine, "order.status", &status("o1", "accepted")).await;
    let a2 = append(engine, "order.status", &status("o1", "preparing")).await;
    let a3 = append(engine, "order.status", &status("o1", "ready")).await;
    read_all(engine).await;
    // The middle entry goes first (dead-lettered, say): the last one still
    // waits for the head, and only for the head.
    stream
        .advance("o1", &a2)
        .await
        .expect("advance out of turn");
    assert!(
        tokio::time::timeout(QUIET, stream.wait_turn("o1", &a3, &never))
            .await
            .is_err(),
        "the head is still there"
    );
    within("a2 left the queue", stream.wait_turn("o1", &a2, &never))
        .await
        .expect("turn");
    let (turn, advanced) = tokio::join!(
        within(
            "o1's last entry after the head",
            stream.wait_turn("o1", &a3, &never)
        ),
        stream.advance("o1", &a1),
    );
    advanced.expect("advance");
    turn.expect("turn");
}

async fn an_entry_not_in_any_queue_does_not_wait<E: Engine>(engine: &E) {
    let stream = engine.stream();
    let never = CancellationToken::new();
    let a1 = append(engine, "order.status", &status("o1", "accepted")).await;
    read_all(engine).await;
    // An entry emitted once already (redelivered after a claim) is no
    // longer queued: it must not wait behind anyone.
    within(
        "an unqueued entry of a busy order",
        stream.wait_turn("o1", "1-0", &never),
    )
    .await
    .expect("turn");
    within(
        "an entry of an order without a queue",
        stream.wait_turn("o-none", &a1, &never),
    )
    .await
    .expect("turn");
    // Advancing what is not queued changes nothing.
    stream.advance("o-none", &a1).await.expect("advance");
    stream.advance("o1", "1-0").await.expect("advance");
    within("o1's head", stream.wait_turn("o1", &a1, &never))
        .await
        .expect("turn");
}

async fn a_cancelled_wait_for_the_turn_returns<E: Engine>(engine: &E) {
    let stream = engine.stream();
    append(engine, "order.status", &status("o1", "accepted")).await;
    let a2 = append(engine, "order.status", &status("o1", "preparing")).await;
    read_all(engine).await;
    let cancel = CancellationToken::new();
    let (waited, ()) = tokio::join!(
        within("a cancelled wait", stream.wait_turn("o1", &a2, &cancel)),
        async { cancel.cancel() },
    );
    assert!(waited.is_err(), "a cancelled wait is not a turn");
}

async fn dead_letters_keep_the_raw_entry_and_release_its_order<E: Engine>(engine: &E) {
    let stream = engine.stream();
    let never = CancellationToken::new();
    let raw = r#"{"order_id":"o1","status":42,"note":"ünïcode \"q\"" }"#;
    let bad = append(engine, "order.status", raw).await;
    let next = append(engine, "order.status", &status("o1", "ready")).await;
    let garbage = append(engine, "no.such.type", "\u{1}not json").await;
    let read = read_all(engine).await;
    assert_eq!(ids(&read), [&bad, &next, &garbage]);

    stream
        .dead_letter(&read[0], "invalid field: status")
        .await
        .expect("dead_letter");
    stream
        .dead_letter(&read[2], "unknown type")
        .await
        .expect("dead_letter");
    // An entry whose fields are gone (trimmed before a claim) is kept as such.
    let gone = StreamEntry {
        id: "1-1".to_owned(),
        kind: None,
        data: None,
        first_in_order: false,
    };
    stream
        .dead_letter(&gone, "gone")
        .await
        .expect("dead_letter");

    let dead = stream.recent_dead_letters(10).await.expect("dead letters");
    let got: Vec<_> = dead
        .iter()
        .map(|d| {
            (
                d.id.as_str(),
                text(&d.kind),
                text(&d.data),
                d.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                bad.as_str(),
                Some("order.status"),
                Some(raw),
                "invalid field: status"
            ),
            (
                garbage.as_str(),
                Some("no.such.type"),
                Some("\u{1}not json"),
                "unknown type"
            ),
            ("1-1", None, None, "gone"),
        ],
        "dead letters keep the raw fields, newest last"
    );
    assert!(dead.iter().all(|d| d.node == "n1"), "{dead:?}");
    assert_eq!(
        ids_of(&stream.recent_dead_letters(1).await.expect("dead letters")),
        ["1-1"]
    );
    // Dead-lettering acks the entry and lets the order's next one go.
    assert_eq!(stream.stats().await.expect("stats").pending, 1);
    within(
        "the entry after a dead letter",
        stream.wait_turn("o1", &next, &never),
    )
    .await
    .expect("turn");
}

fn text(field: &Option<Vec<u8>>) -> Option<&str> {
    field.as_deref().and_then(|b| std::str::from_utf8(b).ok())
}

/// CONTRACT §3, issue #15 (4): `type` and `data` are kept as they were,
/// also when they are not UTF-8 text.
async fn dead_letters_keep_fields_that_are_not_text_byte_for_byte<E: Engine>(engine: &E) {
    let stream = engine.stream();
    let kind = b"order.st\xc3\x28tus".to_vec();
    let data = b"{\"order_id\":\"o1\",\"status\":\"\xff\xfe\"}".to_vec();
    let entry = StreamEntry {
        id: "1-2".to_owned(),
        kind: Some(kind.clone()),
        data: Some(data.clone()),
        first_in_order: false,
    };
    stream
        .dead_letter(&entry, "invalid_utf8: `type` is not UTF-8 text")
        .await
        .expect("dead_letter");
    let dead = stream.recent_dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].kind.as_deref(), Some(kind.as_slice()));
    assert_eq!(dead[0].data.as_deref(), Some(data.as_slice()));
    assert!(dead[0].reason.starts_with("invalid_utf8"));
    // As JSON (the operations API) the bytes that are not text show as U+FFFD.
    let json = serde_json::to_value(&dead[0]).expect("json");
    assert_eq!(json["type"], "order.st\u{fffd}(tus");
}

fn ids_of(dead: &[relay::engine::DeadLetter]) -> Vec<&str> {
    dead.iter().map(|d| d.id.as_str()).collect()
}

fn outcome(event_id: &str, target: &str, kind: OutcomeKind, node: &str) -> Outcome {
    Outcome {
        event_id: event_id.to_owned(),
        event: ServerEvent::MerchantNewOrder,
        order_id: "o1".to_owned(),
        target: target.to_owned(),
        outcome: kind,
        response: (kind == OutcomeKind::Acked).then(|| json!({"accepted": true, "eta": 12.5})),
        latency_ms: 42,
        node: node.to_owned(),
    }
}

async fn an_offer_has_exactly_one_outcome<E: Engine>(engine: &E) {
    let stream = engine.stream();
    let first = outcome("1-0", "store_s1", OutcomeKind::Acked, "n1");
    assert!(stream.append_outcome(&first).await.expect("outcome"));
    // A second writer (a node that took the offer over) writes nothing.
    let late = outcome("1-0", "store_s1", OutcomeKind::Timeout, "n2");
    assert!(!stream.append_outcome(&late).await.expect("outcome"));
    assert!(!stream.append_outcome(&first).await.expect("outcome"));
    // Another room's offer of the same event has its own outcome.
    let other = outcome("1-0", "geo", OutcomeKind::NoRecipient, "n1");
    assert!(stream.append_outcome(&other).await.expect("outcome"));

    let recent = stream.recent_outcomes(10).await.expect("outcomes");
    assert_eq!(recent.len(), 2, "{recent:?}");
    let field = |n: usize, k: &str| recent[n].get(k).cloned();
    assert_eq!(field(0, "event_id"), Some(json!("1-0")));
    assert_eq!(field(0, "event"), Some(json!("merchant:new_order")));
    assert_eq!(field(0, "order_id"), Some(json!("o1")));
    assert_eq!(field(0, "target"), Some(json!("store_s1")));
    assert_eq!(field(0, "outcome"), Some(json!("acked")));
    assert_eq!(
        field(0, "response"),
        Some(json!({"accepted": true, "eta": 12.5}))
    );
    assert_eq!(field(0, "latency_ms"), Some(json!(42)));
    assert_eq!(field(0, "node"), Some(json!("n1")));
    assert_eq!(field(1, "target"), Some(json!("geo")));
    assert_eq!(field(1, "outcome"), Some(json!("no_recipient")));
    assert_eq!(field(1, "response"), None, "no ack: no response field");
    assert_eq!(
        stream.recent_outcomes(1).await.expect("outcomes")[0].get("target"),
        Some(&json!("geo")),
        "newest last"
    );
}

async fn offer_state_goes_fresh_offered_decided<E: Engine>(engine: &E) {
    let stream = engine.stream();
    let state = |event: &'static str, target: &'static str| stream.offer_state(event, target);
    assert_eq!(
        state("1-0", "store_s1").await.expect("state"),
        OfferState::Fresh
    );
    stream.mark_offered("1-0", "store_s1").await.expect("mark");
    assert_eq!(
        state("1-0", "store_s1").await.expect("state"),
        OfferState::Offered
    );
    stream
        .mark_offered("1-0", "store_s1")
        .await
        .expect("mark twice");
    assert_eq!(
        state("1-0", "store_s1").await.expect("state"),
        OfferState::Offered
    );
    assert_eq!(
        state("1-0", "driver_d1").await.expect("state"),
        OfferState::Fresh,
        "per target room"
    );
    assert_eq!(
        state("2-0", "store_s1").await.expect("state"),
        OfferState::Fresh
    );

    let timeout = outcome("1-0", "store_s1", OutcomeKind::Timeout, "n1");
    assert!(stream.append_outcome(&timeout).await.expect("outcome"));
    assert_eq!(
        state("1-0", "store_s1").await.expect("state"),
        OfferState::Decided
    );
    // Decided without ever being offered (nobody was there).
    let nobody = outcome("1-0", "driver_d1", OutcomeKind::NoRecipient, "n1");
    assert!(stream.append_outcome(&nobody).await.expect("outcome"));
    assert_eq!(
        state("1-0", "driver_d1").await.expect("state"),
        OfferState::Decided
    );
    // A late mark does not reopen a decided offer.
    stream.mark_offered("1-0", "driver_d1").await.expect("mark");
    assert_eq!(
        state("1-0", "driver_d1").await.expect("state"),
        OfferState::Decided
    );
}

async fn entries_in_flight_are_never_claimed<E: Engine>(engine: &E) {
    let stream = engine.stream();
    append(engine, "admin.alert", r#"{"n":1}"#).await;
    let held: Vec<String> = read_all(engine).await.into_iter().map(|e| e.id).collect();
    // Idle longer than the claim time (100 ms), but this node holds it.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let claimed = stream.claim_stale(&held).await.expect("claim_stale");
    assert!(claimed.entries.is_empty(), "{claimed:?}");
    assert_eq!(claimed.dead_lettered, 0);
    stream.keep_alive(&held).await.expect("keep_alive");
    assert_eq!(stream.stats().await.expect("stats").pending, 1);
}

// Several nodes on one store: Redis only.

async fn a_restarted_node_reads_its_own_pending_entries_first(f: &Fixture<RedisEngine>) {
    let a1 = append(&f.engine, "admin.alert", r#"{"n":1}"#).await;
    let a2 = append(&f.engine, "admin.alert", r#"{"n":2}"#).await;
    let read = read_all(&f.engine).await;
    assert_eq!(ids(&read), [&a1, &a2]);
    f.engine.stream().ack(&a1).await.expect("ack");
    let a3 = append(&f.engine, "admin.alert", r#"{"n":3}"#).await;

    let restarted = f.node("n1");
    restarted.stream().prepare().await.expect("prepare again");
    let own = restarted
        .stream()
        .own_pending(10)
        .await
        .expect("own_pending");
    assert_eq!(ids(&own), [&a2], "only its own unacked entries");
    assert_eq!(own[0].data_str(), Some(r#"{"n":2}"#));
    assert!(
        f.peer()
            .stream()
            .own_pending(10)
            .await
            .expect("own_pending")
            .is_empty(),
        "a peer has none of them"
    );
    assert_eq!(ids(&read_all(&restarted).await), [&a3]);
}

async fn a_peer_claims_the_entries_of_a_stopped_node(f: &Fixture<RedisEngine>) {
    let a1 = append(&f.engine, "order.status", &status("o1", "accepted")).await;
    let a2 = append(&f.engine, "admin.alert", r#"{"n":2}"#).await;
    read_all(&f.engine).await;
    // Node 1 stops without a word; after the claim time its entries go to node 2.
    let claimed = eventually("the claim", || async {
        let claimed = f.peer().stream().claim_stale(&[]).await.expect("claim");
        (!claimed.entries.is_empty()).then_some(claimed)
    })
    .await;
    assert_eq!(ids(&claimed.entries), [&a1, &a2]);
    assert_eq!(
        claimed.entries[0].data_str(),
        Some(status("o1", "accepted").as_str())
    );
    assert_eq!(claimed.dead_lettered, 0);
    // They are node 2's now: its restart finds them, node 1's does not.
    let own = f
        .peer()
        .stream()
        .own_pending(10)
        .await
        .expect("own_pending");
    assert_eq!(ids(&own), [&a1, &a2]);
    assert!(
        f.node("n1")
            .stream()
            .own_pending(10)
            .await
            .expect("own")
            .is_empty()
    );
}

async fn handed_back_entries_are_claimable_at_once(f: &Fixture<RedisEngine>) {
    let a1 = append(&f.engine, "admin.alert", r#"{"n":1}"#).await;
    let a2 = append(&f.engine, "admin.alert", r#"{"n":2}"#).await;
    read_all(&f.engine).await;
    // Claim time is a minute: nothing is stale yet.
    let claimed = f.peer().stream().claim_stale(&[]).await.expect("claim");
    assert!(claimed.entries.is_empty());
    f.engine
        .stream()
        .hand_back(std::slice::from_ref(&a1))
        .await
        .expect("hand_back");
    let claimed = f.peer().stream().claim_stale(&[]).await.expect("claim");
    assert_eq!(
        ids(&claimed.entries),
        [&a1],
        "handed back: claimed at the next tick"
    );
    // An entry another node has claimed since is not handed back by the first.
    f.engine
        .stream()
        .hand_back(&[a1.clone(), a2.clone()])
        .await
        .expect("hand_back");
    let claimed = f.engine.stream().claim_stale(&[]).await.expect("claim");
    assert_eq!(ids(&claimed.entries), [&a2]);
}

async fn kept_alive_entries_are_not_claimed(f: &Fixture<RedisEngine>) {
    let a1 = append(&f.engine, "admin.alert", r#"{"n":1}"#).await;
    read_all(&f.engine).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    f.engine
        .stream()
        .keep_alive(std::slice::from_ref(&a1))
        .await
        .expect("keep_alive");
    let claimed = f.peer().stream().claim_stale(&[]).await.expect("claim");
    assert!(claimed.entries.is_empty(), "kept alive: {claimed:?}");
    // Without keep-alive, it goes after the claim time.
    let claimed = eventually("the claim", || async {
        let claimed = f.peer().stream().claim_stale(&[]).await.expect("claim");
        (!claimed.entries.is_empty()).then_some(claimed)
    })
    .await;
    assert_eq!(ids(&claimed.entries), [&a1]);
}

async fn entries_delivered_too_often_go_to_the_dead_letters(f: &Fixture<RedisEngine>) {
    let never = CancellationToken::new();
    let raw = status("o1", "accepted");
    let a1 = append(&f.engine, "order.status", &raw).await;
    let a2 = append(&f.engine, "order.status", &status("o1", "ready")).await;
    read_all(&f.engine).await; // delivery 1
    f.engine.stream().ack(&a2).await.expect("ack");
    let claimed = eventually("the claim", || async {
        let claimed = f.peer().stream().claim_stale(&[]).await.expect("claim");
        (!claimed.entries.is_empty()).then_some(claimed)
    })
    .await; // delivery 2: the limit
    assert_eq!(ids(&claimed.entries), [&a1]);
    let claimed = eventually("the dead letter", || async {
        let claimed = f.engine.stream().claim_stale(&[]).await.expect("claim");
        (claimed.dead_lettered > 0 || !claimed.entries.is_empty()).then_some(claimed)
    })
    .await;
    assert!(claimed.entries.is_empty(), "{claimed:?}");
    assert_eq!(claimed.dead_lettered, 1);
    let dead = f
        .engine
        .stream()
        .recent_dead_letters(10)
        .await
        .expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, a1);
    assert_eq!(dead[0].kind.as_deref(), Some(&b"order.status"[..]));
    assert_eq!(dead[0].data.as_deref(), Some(raw.as_bytes()));
    assert_eq!(f.engine.stream().stats().await.expect("stats").pending, 0);
    // The order is released: its next entry goes.
    within(
        "o1 after its dead letter",
        f.peer().stream().wait_turn("o1", &a2, &never),
    )
    .await
    .expect("turn");
}

async fn an_orders_entries_take_turns_across_nodes(f: &Fixture<RedisEngine>) {
    let never = CancellationToken::new();
    let a1 = append(&f.engine, "order.status", &status("o1", "accepted")).await;
    let first = f.engine.stream().read_new(1).await.expect("read");
    assert_eq!(ids(&first), [&a1]);
    let a2 = append(&f.engine, "order.status", &status("o1", "preparing")).await;
    let second = read_all(f.peer()).await;
    assert_eq!(ids(&second), [&a2]);
    assert!(first[0].first_in_order);
    assert!(
        !second[0].first_in_order,
        "queued behind another node's entry"
    );
    assert!(
        tokio::time::timeout(QUIET, f.peer().stream().wait_turn("o1", &a2, &never))
            .await
            .is_err(),
        "node 2 waits for node 1's earlier entry"
    );
    let (turn, advanced) = tokio::join!(
        within(
            "node 2's turn after node 1 emitted",
            f.peer().stream().wait_turn("o1", &a2, &never)
        ),
        f.engine.stream().advance("o1", &a1),
    );
    advanced.expect("advance");
    turn.expect("turn");
}

/// Redis only: in the memory engine every ack follows its advance, while
/// in a cluster a head can be acked by another path or trimmed away.
async fn a_queue_head_no_longer_pending_stops_blocking_its_order(f: &Fixture<RedisEngine>) {
    let never = CancellationToken::new();
    let a1 = append(&f.engine, "order.status", &status("o1", "accepted")).await;
    let a2 = append(&f.engine, "order.status", &status("o1", "preparing")).await;
    read_all(&f.engine).await;
    // Acked, never advanced: the waiter behind it drops it (after a second).
    f.engine.stream().ack(&a1).await.expect("ack");
    within(
        "the entry behind a dead head",
        f.peer().stream().wait_turn("o1", &a2, &never),
    )
    .await
    .expect("turn");
}

/// The read script takes an entry's order only from `data` that is UTF-8
/// text, as `sequence_key` does: an entry it queued and the node could not
/// key would block its order until the stale-head check.
async fn the_read_script_queues_an_entry_by_its_order_only_when_its_data_is_text(
    f: &Fixture<RedisEngine>,
) {
    let server = f.redis.as_ref().expect("redis fixture");
    let mut conn = server.connection().await;
    let cases: [(&str, &[u8], bool); 7] = [
        ("ascii", b"", true),
        (
            "two, three and four bytes",
            "\u{e9}\u{20ac}\u{1f680}".as_bytes(),
            true,
        ),
        ("a stray continuation byte", b"\x80", false),
        ("an overlong encoding", b"\xc0\xaf", false),
        ("a surrogate", b"\xed\xa0\x80", false),
        ("beyond U+10FFFF", b"\xf4\x90\x80\x80", false),
        ("cut short", b"ab\xe2\x82", false),
    ];
    for (n, (what, text, _)) in cases.iter().enumerate() {
        let mut data = format!(r#"{{"order_id":"q{n}","status":"x","note":""#).into_bytes();
        data.extend_from_slice(text);
        data.extend_from_slice(b"\"}");
        let _: String = ::redis::cmd("XADD")
            .arg(format!("{}events", f.prefix))
            .arg("*")
            .arg("type")
            .arg("order.status")
            .arg("data")
            .arg(&data)
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("XADD {what}: {e}"));
    }
    let read = read_all(&f.engine).await;
    assert_eq!(read.len(), cases.len());
    for (entry, (what, text, queued)) in read.iter().zip(cases) {
        assert_eq!(entry.first_in_order, queued, "{what}");
        let data = entry.data.as_deref().expect("data");
        assert!(
            data.ends_with(&[text, b"\"}"].concat()),
            "{what}: bytes kept"
        );
    }
}

/// issue #17 (3): a geo-fenced `delivery.request` handled again goes to the
/// drivers it went to the first time, whoever is near by now; a request
/// that found nobody finds nobody again (its one `no_recipient` stands).
async fn a_geo_requests_targets_are_the_first_ones_found<E: Engine>(engine: &E) {
    let stream = engine.stream();
    let first = vec!["d1".to_owned(), "d2".to_owned()];
    assert_eq!(
        stream.offer_targets("1-1", &first).await.expect("targets"),
        first
    );
    let moved = vec!["d2".to_owned(), "d3".to_owned()];
    assert_eq!(
        stream.offer_targets("1-1", &moved).await.expect("targets"),
        first
    );
    assert_eq!(
        stream.offer_targets("1-2", &[]).await.expect("targets"),
        Vec::<String>::new()
    );
    assert_eq!(
        stream.offer_targets("1-2", &moved).await.expect("targets"),
        Vec::<String>::new()
    );
    assert_eq!(
        stream.offer_targets("1-3", &moved).await.expect("targets"),
        moved
    );
}
