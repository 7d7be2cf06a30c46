//! `order:subscribe` and `order:unsubscribe`: joining an order room on request.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};

use super::budget::EventBudget;
use crate::events::{ClientEvent, ServerEvent};
use crate::location::DriverLocationEvent;
use crate::metrics::{ClientEventOutcome, StoreOp};
use crate::{
    active_order::ActiveOrder,
    auth::{Principal, Role},
    engine::{Engine, LocationCache, OrderStore, WatchedOrders},
    interest::Interest,
    metrics,
    rooms::Room,
};

#[derive(Deserialize)]
pub struct OrderRef {
    order_id: String,
}

pub fn order_ref(data: Result<OrderRef, impl std::fmt::Display>) -> Result<String, &'static str> {
    match data {
        Ok(r) if !r.order_id.is_empty() && r.order_id.len() <= 128 => Ok(r.order_id),
        _ => Err("invalid payload: expected { \"order_id\": \"...\" }"),
    }
}

/// Whether `principal` may watch `order`: admin and support any order; the
/// others only their own active ones.
pub(super) fn may_watch(principal: &Principal, order: Option<&ActiveOrder>) -> bool {
    let sub = principal.sub();
    match (principal.role(), order) {
        (Role::Admin | Role::Support, _) => true,
        (_, None) => false,
        (Role::Customer, Some(o)) => o.customer_id == sub,
        (Role::Driver, Some(o)) => o.driver_id.as_deref() == Some(sub),
        (Role::Merchant, Some(o)) => principal.store_ids().contains(&o.store_id),
    }
}

fn reply(ack: AckSender<impl socketioxide::adapter::Adapter>, result: Result<(), &str>) {
    let body = match result {
        Ok(()) => json!({ "ok": true }),
        Err(error) => json!({ "ok": false, "error": error }),
    };
    // A client that asked for no ack gets none; a gone client cannot be told.
    let _ = ack.send(&body);
}

pub async fn subscribe<E: Engine>(
    socket: SocketRef<E::Adapter>,
    TryData(data): TryData<OrderRef>,
    ack: AckSender<E::Adapter>,
    Extension(principal): Extension<Principal>,
    Extension(budget): Extension<Arc<EventBudget>>,
    State(engine): State<Arc<E>>,
    State(interest): State<Arc<Interest<E>>>,
) {
    if !budget.admit(tokio::time::Instant::now()) {
        metrics::client_event(ClientEvent::OrderSubscribe, ClientEventOutcome::RateLimited);
        return reply(ack, Err("rate limited"));
    }
    let result = async {
        let order_id = order_ref(data)?;
        let order = engine.orders().get(&order_id).await.map_err(|e| {
            metrics::store_error(StoreOp::Subscribe);
            tracing::warn!(error = %e, "order state unavailable for subscribe");
            "temporarily unavailable"
        })?;
        if !may_watch(&principal, order.as_ref()) {
            // Same answer for someone else's order and for no order at all.
            return Err("not allowed");
        }
        let room = Room::order(&order_id).name();
        // Subscribed before the join and the ack: the client gets everything
        // published after it sees `ok`.
        interest
            .ensure_for(
                std::slice::from_ref(&room),
                super::watches_locations(&principal),
            )
            .await
            .map_err(|_| "temporarily unavailable")?;
        socket.join(room);
        // For the user's sockets that resume later, on any node. Failing
        // that, this socket is in the room all the same.
        if let Err(e) = engine.watches().watch(&principal, &order_id).await {
            metrics::store_error(StoreOp::Subscribe);
            tracing::warn!(error = %e, order_id, "subscription not remembered for resumes");
        }
        Ok(order)
    }
    .await;
    metrics::client_event(ClientEvent::OrderSubscribe, outcome(&result));
    let order = match result {
        Ok(order) => {
            reply(ack, Ok(()));
            order
        }
        Err(error) => return reply(ack, Err(error)),
    };
    // The map of a newly watched order moves at once.
    if let Some(order) = order
        && let Some(driver) = &order.driver_id
        && let Ok(Some(location)) = engine.locations().latest(driver).await
    {
        let _ = socket.emit(
            ServerEvent::OrderDriverLocation.as_str(),
            &DriverLocationEvent::new(&order.order_id, &location),
        );
    }
}

pub async fn unsubscribe<E: Engine>(
    socket: SocketRef<E::Adapter>,
    TryData(data): TryData<OrderRef>,
    ack: AckSender<E::Adapter>,
    Extension(principal): Extension<Principal>,
    Extension(budget): Extension<Arc<EventBudget>>,
    State(engine): State<Arc<E>>,
) {
    if !budget.admit(tokio::time::Instant::now()) {
        metrics::client_event(
            ClientEvent::OrderUnsubscribe,
            ClientEventOutcome::RateLimited,
        );
        return reply(ack, Err("rate limited"));
    }
    let result = order_ref(data);
    if let Ok(order_id) = &result {
        socket.leave(Room::order(order_id).name());
        // Forgotten before the ack: a resume after it never puts the room back.
        if let Err(e) = engine.watches().unwatch(&principal, order_id).await {
            metrics::store_error(StoreOp::Subscribe);
            tracing::warn!(error = %e, order_id, "unsubscribe not remembered for resumes");
        }
    }
    let result = result.map(|_| ());
    metrics::client_event(ClientEvent::OrderUnsubscribe, outcome(&result));
    reply(ack, result);
}

fn outcome<T, E>(result: &Result<T, E>) -> ClientEventOutcome {
    if result.is_ok() {
        ClientEventOutcome::Ok
    } else {
        ClientEventOutcome::Rejected
    }
}
