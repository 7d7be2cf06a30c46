//! `auth:refresh` `{ token }`: a new token on the live connection, checked
//! exactly as at the handshake. The socket is local, so its principal, its
//! expiry and its rooms change here alone: the adapter asks each node which
//! of its own sockets are in a room, so a local join is seen cluster-wide.

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::{
    adapter::Adapter,
    extract::{AckSender, Extension, SocketRef, State, TryData},
};

use super::{GatewayState, budget::EventBudget, handshake::token_from};
use crate::metrics::{RefreshOutcome, StoreOp};
use crate::{
    auth::{self, Principal, Rejection, Role},
    engine::{Engine, OrderStore},
    metrics,
    rooms::{Room, RoomChanges},
};

/// The token an `auth:refresh` payload carries, read as the handshake reads
/// its `auth` payload: not an object, no `token`, a token that is not a
/// string or is empty are all `missing token`.
pub fn refresh_token(data: Option<&Value>) -> Result<String, Rejection> {
    token_from(data, None).ok_or(Rejection::MissingToken)
}

pub async fn refresh<E: Engine>(
    socket: SocketRef<E::Adapter>,
    TryData(data): TryData<Value>,
    ack: AckSender<E::Adapter>,
    Extension(current): Extension<Principal>,
    Extension(budget): Extension<Arc<EventBudget>>,
    State(gateway): State<GatewayState>,
    State(engine): State<Arc<E>>,
) {
    if !budget.admit(tokio::time::Instant::now()) {
        metrics::token_refresh_outcome(RefreshOutcome::RateLimited);
        let _ = ack.send(&json!({ "ok": false, "error": "rate limited" }));
        return;
    }
    let verified = refresh_token(data.as_ref().ok()).and_then(|t| gateway.verifier.verify(&t));
    let next = match auth::refreshed(&current, verified) {
        Ok(next) => next,
        Err(refusal) => {
            metrics::token_refresh(Err(refusal));
            tracing::debug!(sid = %socket.id, %refusal, "token refresh refused");
            let _ = ack.send(&json!({ "ok": false, "error": refusal.to_string() }));
            return;
        }
    };
    // From here on every handler sees the new claims, and the sweeper the new end.
    socket.extensions.insert::<Principal>(next.clone());
    gateway.expiries.watch(socket.id, &next);
    // A merchant's stores follow its new `store_ids`: a store added may
    // come online, one removed goes offline after the grace.
    gateway.presence.update(socket.id, &next);
    let RoomChanges { leave, join } = Room::changes(&current, &next);
    if !join.is_empty() {
        socket.join(join.iter().map(Room::name).collect::<Vec<_>>());
    }
    if !leave.is_empty() {
        socket.leave(leave.iter().map(Room::name).collect::<Vec<_>>());
        leave_dropped_stores_orders(&socket, engine.as_ref(), &current, &next).await;
    }
    metrics::token_refresh(Ok(()));
    tracing::debug!(sid = %socket.id, exp = next.exp(), joined = join.len(), left = leave.len(), "token refreshed");
    let _ = ack.send(&json!({ "ok": true, "exp": next.exp() }));
}

/// A merchant that no longer owns a store stops watching that store's
/// orders it had subscribed to. An order that cannot be read is left too:
/// the merchant may subscribe again, but must not keep what it lost.
async fn leave_dropped_stores_orders<E: Engine>(
    socket: &SocketRef<impl Adapter>,
    engine: &E,
    before: &Principal,
    after: &Principal,
) {
    if after.role() != Role::Merchant {
        return;
    }
    let dropped: Vec<&String> = before
        .store_ids()
        .iter()
        .filter(|s| !after.store_ids().contains(s))
        .collect();
    let watched: Vec<String> = socket
        .rooms()
        .into_iter()
        .filter_map(|r| r.strip_prefix(Room::ORDER_PREFIX).map(str::to_owned))
        .collect();
    for order_id in watched {
        let keep = match engine.orders().get(&order_id).await {
            Ok(Some(order)) => !dropped.contains(&&order.store_id),
            Ok(None) => true,
            Err(e) => {
                metrics::store_error(StoreOp::Refresh);
                tracing::warn!(error = %e, "order state unavailable at refresh: leaving the order room");
                false
            }
        };
        if !keep {
            socket.leave(Room::order(&order_id).name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_without_a_string_token_is_a_missing_token() {
        for data in [
            json!("eyJ..."),
            json!(["token"]),
            json!({}),
            json!({ "token": 7 }),
            json!({ "token": null }),
            json!({ "token": "  " }),
        ] {
            assert_eq!(
                refresh_token(Some(&data)),
                Err(Rejection::MissingToken),
                "{data}"
            );
        }
        assert_eq!(refresh_token(None), Err(Rejection::MissingToken));
        assert_eq!(
            refresh_token(Some(&json!({ "token": "Bearer a.b.c" }))).as_deref(),
            Ok("a.b.c")
        );
    }
}
