//! The orders a user joined with `order:subscribe`, remembered across its
//! sockets and the nodes: a socket that resumes (`auth.last_event_id` or
//! `sync`) gets their missed events and is put back in their rooms, with
//! the same rules `order:subscribe` has.

use crate::{
    auth::Principal,
    engine::{Engine, OrderStore, WatchedOrders},
    metrics::{self, StoreOp},
    rooms::Room,
};

use super::subscriptions::may_watch;

/// What a resuming socket gets back.
#[derive(Debug, Clone, Default)]
pub struct Remembered {
    /// Rooms to replay and join.
    pub rooms: Vec<String>,
    /// Orders no longer active: their rooms are replayed (their last
    /// events, the final status among them, may be what the client
    /// missed), then left, and the orders forgotten.
    pub over: Vec<String>,
}

/// The rooms of the orders `principal` watches and may still watch. Orders
/// it may no longer watch (no longer its own) are forgotten. A store that
/// does not answer gives none: the client resumes its other rooms.
pub async fn remembered<E: Engine>(engine: &E, principal: &Principal) -> Remembered {
    let watched = match engine.watches().watched(principal).await {
        Ok(watched) => watched,
        Err(e) => {
            metrics::store_error(StoreOp::Subscribe);
            tracing::warn!(error = %e, "remembered subscriptions unavailable; resuming without them");
            return Remembered::default();
        }
    };
    let mut remembered = Remembered::default();
    for order_id in watched {
        let order = match engine.orders().get(&order_id).await {
            Ok(order) => order,
            Err(e) => {
                metrics::store_error(StoreOp::Subscribe);
                tracing::warn!(error = %e, order_id, "order state unavailable; not resubscribed");
                continue;
            }
        };
        if !may_watch(principal, order.as_ref()) {
            forget(engine, principal, &order_id).await;
            continue;
        }
        remembered.rooms.push(Room::order(&order_id).name());
        if order.is_none() {
            remembered.over.push(order_id);
        }
    }
    remembered
}

/// Leaves the rooms of orders that are over, once their events are
/// replayed, and forgets them.
pub async fn leave_over<E: Engine>(
    engine: &E,
    principal: &Principal,
    socket: &socketioxide::extract::SocketRef<E::Adapter>,
    over: &[String],
) {
    for order_id in over {
        socket.leave(Room::order(order_id).name());
        forget(engine, principal, order_id).await;
    }
}

async fn forget<E: Engine>(engine: &E, principal: &Principal, order_id: &str) {
    if let Err(e) = engine.watches().unwatch(principal, order_id).await {
        tracing::debug!(error = %e, order_id, "remembered subscription not forgotten");
    }
}
