//! What tests do with one client again and again: a request with its ack,
//! a resume with a last event id, reading on until an event comes.

use relay_client::{Client, ConnectOptions, Event};
use serde_json::{Value, json};

use super::WAIT;

/// Emits `event` with an ack request and returns the ack's one argument.
pub async fn ask(client: &Client, event: &str, data: Value) -> Value {
    let mut args = client
        .emit_with_ack(event, data, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{event} ack: {e}"));
    assert_eq!(args.len(), 1, "{event}: one ack argument: {args:?}");
    args.remove(0)
}

/// The `error` of a refused request's ack (`{ "ok": false, "error" }`).
pub fn refusal(ack: &Value) -> &str {
    assert_eq!(ack["ok"], false, "{ack}");
    ack["error"].as_str().expect("error")
}

/// A client that connects with `last_event_id` in its auth, as an app
/// coming back does.
pub async fn resume(url: &str, jwt: &str, last_event_id: &str) -> Client {
    Client::connect(
        ConnectOptions::new(url)
            .auth(json!({ "token": jwt, "last_event_id": last_event_id }))
            .timeout(WAIT),
    )
    .await
    .expect("resume")
}

/// The events before `sync:done`, and its payload.
pub async fn until_sync_done(client: &mut Client) -> (Vec<Event>, Value) {
    let mut events = Vec::new();
    loop {
        let event = client
            .next_event(WAIT)
            .await
            .expect("events until sync:done");
        if event.name == "sync:done" {
            return (events, event.data().clone());
        }
        events.push(event);
    }
}

/// Every event up to and including the first `order:status_update` with
/// `status`.
pub async fn until_status(client: &mut Client, status: &str) -> Vec<Event> {
    until_statuses(client, &[status]).await
}

/// Every event until an `order:status_update` of each of `statuses` came
/// (updates of different orders may come in any order).
pub async fn until_statuses(client: &mut Client, statuses: &[&str]) -> Vec<Event> {
    let mut seen: Vec<Event> = Vec::new();
    let mut missing: Vec<&str> = statuses.to_vec();
    while !missing.is_empty() {
        let event = client
            .next_event(WAIT)
            .await
            .unwrap_or_else(|e| panic!("waiting for {missing:?}: {e}; had {seen:?}"));
        if event.name == "order:status_update"
            && let Some(status) = event.data()["status"].as_str()
        {
            missing.retain(|m| *m != status);
        }
        seen.push(event);
    }
    seen
}
