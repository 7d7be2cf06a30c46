//! `ChatLog`: each order's last messages, the backend's feed once per
//! message, and who may still read an ended order's chat.

use relay::engine::{ChatAppend, ChatLog, ChatParties, ChatRecord, Engine};

use super::conformance;

conformance! {
    a_message_is_logged_once_and_a_repeat_is_told_newest_or_older,
    a_new_message_for_an_order_not_active_is_refused_but_a_repeat_is_known,
    history_pages_back_oldest_first_and_keeps_the_last_n,
    a_closed_chat_names_its_parties,
}

fn record(order: &str, id: &str, text: &str) -> ChatRecord {
    ChatRecord {
        event_id: id.to_owned(),
        order_id: order.to_owned(),
        from_id: "c1".into(),
        from_role: "customer".into(),
        text: text.to_owned(),
        ts: 1,
        message: format!(r#"{{"event_id":"{id}","text":"{text}"}}"#),
    }
}

async fn texts<E: Engine>(
    engine: &E,
    order: &str,
    before: Option<&str>,
    limit: usize,
) -> Vec<String> {
    engine
        .chat()
        .history(order, before, limit)
        .await
        .expect("history")
        .into_iter()
        .map(|m| {
            serde_json::from_str::<serde_json::Value>(&m).expect("JSON")["text"]
                .as_str()
                .expect("text")
                .to_owned()
        })
        .collect()
}

async fn a_message_is_logged_once_and_a_repeat_is_told_newest_or_older<E: Engine>(engine: &E) {
    let chat = engine.chat();
    assert_eq!(
        chat.append(&record("o1", "10-0", "a"), 10, true)
            .await
            .unwrap(),
        ChatAppend::New
    );
    assert_eq!(
        chat.append(&record("o1", "11-0", "b"), 10, true)
            .await
            .unwrap(),
        ChatAppend::New
    );
    assert_eq!(
        chat.append(&record("o1", "11-0", "b"), 10, true)
            .await
            .unwrap(),
        ChatAppend::RepeatNewest
    );
    assert_eq!(
        chat.append(&record("o1", "10-0", "a"), 10, true)
            .await
            .unwrap(),
        ChatAppend::RepeatOlder
    );
    // Another order has a log of its own.
    assert_eq!(
        chat.append(&record("o2", "10-0", "x"), 10, true)
            .await
            .unwrap(),
        ChatAppend::New
    );
    assert_eq!(texts(engine, "o1", None, 50).await, ["a", "b"]);
}

async fn a_new_message_for_an_order_not_active_is_refused_but_a_repeat_is_known<E: Engine>(
    engine: &E,
) {
    let chat = engine.chat();
    assert_eq!(
        chat.append(&record("o1", "5-0", "never"), 10, false)
            .await
            .unwrap(),
        ChatAppend::Refused
    );
    assert_eq!(
        chat.append(&record("o1", "10-0", "a"), 1, true)
            .await
            .unwrap(),
        ChatAppend::New
    );
    assert_eq!(
        chat.append(&record("o1", "11-0", "b"), 1, true)
            .await
            .unwrap(),
        ChatAppend::New
    );
    // The order ended; a repeat is still recognised, also of a message trimmed away.
    assert_eq!(
        chat.append(&record("o1", "11-0", "b"), 1, false)
            .await
            .unwrap(),
        ChatAppend::RepeatNewest
    );
    assert_eq!(
        chat.append(&record("o1", "10-0", "a"), 1, false)
            .await
            .unwrap(),
        ChatAppend::RepeatOlder
    );
    assert_eq!(
        chat.append(&record("o1", "12-0", "late"), 1, false)
            .await
            .unwrap(),
        ChatAppend::Refused
    );
    assert_eq!(texts(engine, "o1", None, 50).await, ["b"]);
}

async fn history_pages_back_oldest_first_and_keeps_the_last_n<E: Engine>(engine: &E) {
    let chat = engine.chat();
    for i in 0..6 {
        let id = format!("{}-0", 100 + i);
        chat.append(&record("o1", &id, &format!("m{i}")), 5, true)
            .await
            .unwrap();
    }
    assert_eq!(
        texts(engine, "o1", None, 50).await,
        ["m1", "m2", "m3", "m4", "m5"]
    );
    assert_eq!(texts(engine, "o1", None, 2).await, ["m4", "m5"]);
    assert_eq!(texts(engine, "o1", Some("104-0"), 2).await, ["m2", "m3"]);
    assert_eq!(texts(engine, "o1", Some("102-0"), 50).await, ["m1"]);
    assert!(texts(engine, "o1", Some("101-0"), 50).await.is_empty());
    assert!(texts(engine, "o-none", None, 50).await.is_empty());
}

async fn a_closed_chat_names_its_parties<E: Engine>(engine: &E) {
    let chat = engine.chat();
    assert_eq!(chat.closed("o1").await.unwrap(), None);
    chat.append(&record("o1", "10-0", "a"), 10, true)
        .await
        .unwrap();
    assert_eq!(chat.closed("o1").await.unwrap(), None, "open while active");
    let parties = ChatParties {
        customer_id: "c1".into(),
        driver_id: Some("d1".into()),
    };
    chat.close("o1", &parties).await.unwrap();
    // Closing again (a repeat of the final status) changes nothing.
    chat.close("o1", &parties).await.unwrap();
    assert_eq!(chat.closed("o1").await.unwrap(), Some(parties));
    assert_eq!(texts(engine, "o1", None, 50).await, ["a"], "still readable");
    // An order without a driver, and without messages.
    let alone = ChatParties {
        customer_id: "c2".into(),
        driver_id: None,
    };
    chat.close("o2", &alone).await.unwrap();
    assert_eq!(chat.closed("o2").await.unwrap(), Some(alone));
}
