//! `sync` `{ last_event_id }`: a connected client that noticed a gap asks
//! for what it missed (the replay itself is `delivery`'s).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};

use super::budget::EventBudget;
use super::remembered::{leave_over, remembered};
use crate::events::ClientEvent;
use crate::metrics::ClientEventOutcome;
use crate::{auth::Principal, delivery::Replay, engine::Engine, interest::Interest, metrics};

#[derive(Deserialize)]
pub struct SyncRequest {
    last_event_id: String,
}

/// Longest `last_event_id` accepted: a stream id is about 30 characters.
const MAX_ID_LEN: usize = 64;

#[allow(
    clippy::too_many_arguments,
    reason = "a socketioxide handler takes each extractor as an argument"
)]
pub async fn sync<E: Engine>(
    socket: SocketRef<E::Adapter>,
    TryData(data): TryData<SyncRequest>,
    ack: AckSender<E::Adapter>,
    Extension(principal): Extension<Principal>,
    Extension(budget): Extension<Arc<EventBudget>>,
    State(replay): State<Replay<E::Adapter>>,
    State(engine): State<Arc<E>>,
    State(interest): State<Arc<Interest<E>>>,
) {
    if !budget.admit(tokio::time::Instant::now()) {
        metrics::client_event(ClientEvent::Sync, ClientEventOutcome::RateLimited);
        let _ = ack.send(&json!({ "ok": false, "error": "rate limited" }));
        return;
    }
    let Some(last_event_id) = last_event_id(data) else {
        metrics::client_event(ClientEvent::Sync, ClientEventOutcome::Rejected);
        let _ = ack.send(&json!({
            "ok": false,
            "error": "invalid payload: expected { \"last_event_id\": \"...\" }"
        }));
        return;
    };
    metrics::client_event(ClientEvent::Sync, ClientEventOutcome::Ok);
    let mut rooms: Vec<String> = socket.rooms().into_iter().map(|r| r.into_owned()).collect();
    // The orders it subscribed to, here or on a node it was on before,
    // are replayed and joined like its own rooms (joining a room it is in
    // already changes nothing).
    let remembered = remembered(engine.as_ref(), &principal).await;
    // Subscribed before the replay joins them, like every other join.
    let _ = interest
        .ensure_for(&remembered.rooms, super::watches_locations(&principal))
        .await;
    for room in remembered.rooms {
        if !rooms.contains(&room) {
            rooms.push(room);
        }
    }
    let recovered = replay
        .resume(socket.clone(), rooms, last_event_id, true)
        .await;
    leave_over(engine.as_ref(), &principal, &socket, &remembered.over).await;
    let _ = ack.send(&json!({ "ok": true, "recovered": recovered }));
}

/// The id a `sync` payload asks to resume after, when it is well-formed.
pub fn last_event_id(data: Result<SyncRequest, impl std::fmt::Display>) -> Option<String> {
    match data {
        Ok(r) if !r.last_event_id.is_empty() && r.last_event_id.len() <= MAX_ID_LEN => {
            Some(r.last_event_id)
        }
        _ => None,
    }
}
