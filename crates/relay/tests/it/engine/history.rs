//! `History` and `RoomChannels`: events recorded for rooms, one
//! cluster-wide order of offsets, the room channels a node hears them on
//! (only those it subscribed to), what a node fills a gap with, and what a
//! reconnecting client missed (or a clear "not recovered" when the history
//! no longer reaches back).

use std::{cmp::Ordering, time::Duration};

use relay::engine::{Engine, History, Missed, Recorded, RoomChannels, Routed, cmp_offsets};

use super::{Settings, conformance, eventually, within};

conformance! {
    offsets_grow_in_publishing_order,
    missed_events_come_after_the_last_one_each_once_in_offset_order,
    missed_events_stop_at_the_offset_asked_for,
    an_unknown_last_event_is_not_recovered,
    a_room_trimmed_past_the_last_event_is_not_recovered(Settings {
        history_size: 2,
        ..Settings::default()
    }),
    events_older_than_the_ttl_are_not_recovered(Settings {
        history_ttl: Duration::from_millis(500),
        ..Settings::default()
    }),
    a_subscribed_room_brings_every_later_event_in_order,
    only_subscribed_rooms_reach_the_feed,
    newest_is_the_offset_published_last,
    since_brings_each_event_of_the_rooms_once_with_its_rooms,
}

fn rooms(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

async fn publish<E: Engine>(engine: &E, id: &str, data: &str, to: &[&str]) -> String {
    engine
        .history()
        .publish("order:status_update", data, id, &rooms(to), None)
        .await
        .expect("publish")
}

async fn recovered<E: Engine>(
    engine: &E,
    to: &[&str],
    last: &str,
    up_to: Option<&str>,
) -> Vec<Recorded> {
    match engine
        .history()
        .missed(&rooms(to), last, up_to)
        .await
        .expect("missed")
    {
        Missed::Recovered(events) => events,
        Missed::NotRecovered => panic!("missed({to:?}, {last}): not recovered"),
    }
}

async fn not_recovered<E: Engine>(engine: &E, to: &[&str], last: &str) -> bool {
    engine
        .history()
        .missed(&rooms(to), last, None)
        .await
        .expect("missed")
        == Missed::NotRecovered
}

/// What both engines give back of a recorded event: offset, event, data.
fn seen(events: &[Recorded]) -> Vec<(&str, &str, &str)> {
    events
        .iter()
        .map(|r| (r.offset.as_str(), r.event.as_str(), r.data.as_str()))
        .collect()
}

async fn offsets_grow_in_publishing_order<E: Engine>(engine: &E) {
    let mut offsets = Vec::new();
    for n in 0..20 {
        let room = if n % 2 == 0 { "order_o1" } else { "admin" };
        offsets.push(publish(engine, &format!("e{n}"), "{}", &[room]).await);
    }
    for pair in offsets.windows(2) {
        assert_eq!(
            cmp_offsets(&pair[0], &pair[1]),
            Ordering::Less,
            "offsets grow across rooms: {offsets:?}"
        );
    }
}

async fn missed_events_come_after_the_last_one_each_once_in_offset_order<E: Engine>(engine: &E) {
    let both = ["order_o1", "customer_c1"];
    let data2 = r#"{"status":"ünïcode \"quoted\"","eta":12.5}"#;
    publish(engine, "e1", r#"{"n":1}"#, &both).await;
    let o2 = publish(engine, "e2", data2, &both).await;
    let o3 = publish(engine, "e3", r#"{"n":3}"#, &["customer_c1"]).await;
    publish(engine, "e4", r#"{"n":4}"#, &["customer_c2"]).await;
    let o5 = publish(engine, "e5", r#"{"n":5}"#, &["order_o1"]).await;

    let missed = recovered(engine, &both, "e1", None).await;
    assert_eq!(
        seen(&missed),
        [
            (o2.as_str(), "order:status_update", data2),
            (o3.as_str(), "order:status_update", r#"{"n":3}"#),
            (o5.as_str(), "order:status_update", r#"{"n":5}"#),
        ],
        "after e1, each once (e2 went to both rooms), offset order, data as published"
    );
    // The last event found in one room only, the other room read too.
    let missed = recovered(engine, &both, "e3", None).await;
    assert_eq!(seen(&missed).len(), 1);
    assert_eq!(missed[0].offset, o5);
    // Nothing missed: recovered, empty.
    assert!(
        recovered(engine, &["order_o1"], "e5", None)
            .await
            .is_empty()
    );
}

async fn missed_events_stop_at_the_offset_asked_for<E: Engine>(engine: &E) {
    let room = ["order_o1"];
    publish(engine, "e1", "{}", &room).await;
    let o2 = publish(engine, "e2", "{}", &room).await;
    let o3 = publish(engine, "e3", "{}", &room).await;
    publish(engine, "e4", "{}", &room).await;
    let offsets = |events: Vec<Recorded>| events.into_iter().map(|r| r.offset).collect::<Vec<_>>();
    assert_eq!(
        offsets(recovered(engine, &room, "e1", Some(&o3)).await),
        [o2.clone(), o3.clone()],
        "up to and including `up_to`"
    );
    assert!(recovered(engine, &room, "e3", Some(&o2)).await.is_empty());
}

async fn an_unknown_last_event_is_not_recovered<E: Engine>(engine: &E) {
    publish(engine, "e1", "{}", &["order_o1"]).await;
    assert!(not_recovered(engine, &["order_o1"], "never-sent").await);
    assert!(
        not_recovered(engine, &["order_o2"], "e1").await,
        "e1 is not in the rooms asked about"
    );
    assert!(not_recovered(engine, &["room_without_history"], "e1").await);
    assert!(not_recovered(engine, &[], "e1").await, "no rooms");
}

async fn a_room_trimmed_past_the_last_event_is_not_recovered<E: Engine>(engine: &E) {
    // History size 2 per room.
    for n in 0..3 {
        publish(engine, &format!("o{n}"), "{}", &["order_o1"]).await;
    }
    publish(engine, "c0", "{}", &["customer_c1"]).await;
    publish(engine, "c1", "{}", &["customer_c1"]).await;
    let c2 = publish(engine, "c2", "{}", &["customer_c1"]).await;
    // c0 was trimmed, but it came before c1: nothing after c1 is missing.
    let missed = recovered(engine, &["customer_c1"], "c1", None).await;
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].offset, c2);
    // o1 is still in order_o1, but customer_c1 lost c0, which came after it.
    assert!(not_recovered(engine, &["customer_c1", "order_o1"], "o1").await);
    // o0 itself is gone.
    assert!(not_recovered(engine, &["order_o1"], "o0").await);
}

async fn events_older_than_the_ttl_are_not_recovered<E: Engine>(engine: &E) {
    // History TTL 500 ms.
    let room = ["order_o1"];
    publish(engine, "e1", "{}", &room).await;
    publish(engine, "e2", "{}", &room).await;
    assert_eq!(recovered(engine, &room, "e1", None).await.len(), 1);
    eventually("the history to expire", || async {
        not_recovered(engine, &room, "e1").await.then_some(())
    })
    .await;
    // A new event starts the room again; the old ones stay gone.
    publish(engine, "e3", "{}", &room).await;
    assert!(not_recovered(engine, &room, "e1").await);
    assert!(recovered(engine, &room, "e3", None).await.is_empty());
}

/// The next message of the feed, as (room, message).
async fn next_routed(
    feed: &mut tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
    rooms: &impl RoomChannels,
    what: &str,
) -> (String, Routed) {
    let (channel, payload) = within(what, feed.recv()).await.expect("feed open");
    let routed = Routed::decode(&payload).expect("a room message");
    (rooms.room_of(&channel).to_owned(), routed)
}

async fn a_subscribed_room_brings_every_later_event_in_order<E: Engine>(engine: &E) {
    let mut feed = engine.rooms().take_feed().expect("feed");
    assert!(engine.rooms().take_feed().is_none(), "taken once");
    engine
        .rooms()
        .subscribe(&rooms(&["order_o1", "customer_c1", "admin"]))
        .await
        .expect("subscribe");
    let data = r#"{"status":"ünïcode"}"#;
    let o1 = engine
        .history()
        .publish(
            "order:status_update",
            data,
            "e1",
            &rooms(&["order_o1", "customer_c1"]),
            Some("order_o1"),
        )
        .await
        .expect("publish");
    let o2 = publish(engine, "e2", "{}", &["admin"]).await;
    let expected = Recorded {
        offset: o1,
        event: "order:status_update".to_owned(),
        data: data.to_owned(),
        rooms: rooms(&["order_o1", "customer_c1"]),
        then_leave: Some("order_o1".to_owned()),
    };
    // One copy per target room. Each channel keeps its order; copies on
    // different channels may interleave (on a cluster they come from
    // different shards).
    let mut got = std::collections::HashMap::new();
    for _ in 0..3 {
        let (on, message) = next_routed(&mut feed, engine.rooms(), "a recorded event").await;
        assert!(got.insert(on.clone(), message).is_none(), "{on} twice");
    }
    for room in ["order_o1", "customer_c1"] {
        assert_eq!(
            got.get(room),
            Some(&Routed::Recorded(expected.clone())),
            "{room}: as published"
        );
    }
    let Some(Routed::Recorded(second)) = got.get("admin") else {
        panic!("no recorded event on admin: {got:?}");
    };
    assert_eq!(second.offset, o2);
    assert_eq!(second.then_leave, None);
}

async fn only_subscribed_rooms_reach_the_feed<E: Engine>(engine: &E) {
    let mut feed = engine.rooms().take_feed().expect("feed");
    let channels = engine.rooms();
    channels.subscribe(&rooms(&["a"])).await.expect("subscribe");
    publish(engine, "e1", "{}", &["b"]).await;
    let o2 = publish(engine, "e2", "{}", &["a"]).await;
    let (on, message) = next_routed(&mut feed, channels, "the event of a").await;
    assert_eq!(on, "a", "b is not subscribed");
    assert!(matches!(message, Routed::Recorded(r) if r.offset == o2));
    channels
        .unsubscribe(&rooms(&["a"]))
        .await
        .expect("unsubscribe");
    channels.subscribe(&rooms(&["c"])).await.expect("subscribe");
    publish(engine, "e3", "{}", &["a"]).await;
    let join = Routed::Join {
        room: "order_o9".to_owned(),
    };
    channels
        .publish(vec![("c".to_owned(), join.encode())])
        .await
        .expect("publish to c");
    let (on, message) = next_routed(&mut feed, channels, "the message of c").await;
    assert_eq!(
        (on.as_str(), message),
        ("c", join),
        "a is no longer subscribed"
    );
}

async fn newest_is_the_offset_published_last<E: Engine>(engine: &E) {
    assert_eq!(engine.history().newest().await.expect("newest"), None);
    publish(engine, "e1", "{}", &["order_o1"]).await;
    let o2 = publish(engine, "e2", "{}", &["admin"]).await;
    assert_eq!(engine.history().newest().await.expect("newest"), Some(o2));
}

async fn since_brings_each_event_of_the_rooms_once_with_its_rooms<E: Engine>(engine: &E) {
    let o1 = engine
        .history()
        .publish(
            "order:status_update",
            "{}",
            "e1",
            &rooms(&["order_o1", "customer_c1", "merchant_s1"]),
            Some("order_o1"),
        )
        .await
        .expect("publish");
    let o2 = publish(engine, "e2", "{}", &["admin"]).await;
    let o3 = publish(engine, "e3", "{}", &["customer_c1"]).await;
    let found = engine
        .history()
        .since(&rooms(&["order_o1", "customer_c1", "admin"]), 0)
        .await
        .expect("since");
    let offsets: Vec<&str> = found.iter().map(|r| r.offset.as_str()).collect();
    assert_eq!(
        offsets,
        [o1.as_str(), o2.as_str(), o3.as_str()],
        "each once, in order"
    );
    let mut first_rooms = found[0].rooms.clone();
    first_rooms.sort();
    assert_eq!(
        first_rooms,
        rooms(&["customer_c1", "order_o1"]),
        "the asked rooms it went to"
    );
    assert_eq!(found[0].then_leave.as_deref(), Some("order_o1"));
    let (ms, _) = o3.split_once('-').expect("ms-seq");
    let later: u64 = ms.parse::<u64>().expect("ms") + 1;
    assert!(
        engine
            .history()
            .since(&rooms(&["order_o1", "customer_c1", "admin"]), later)
            .await
            .expect("since")
            .is_empty(),
        "nothing since after the last"
    );
}
