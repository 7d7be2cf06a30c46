//! A connected socket's life: the rooms it joins before its CONNECT reply,
//! and the bookkeeping when it leaves.

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use socketioxide::{
    adapter::Adapter,
    extract::{AckSender, Extension, SocketRef, State, TryData},
    socket::DisconnectReason,
};

use super::{
    GatewayState, budget::EventBudget, chat, location, refresh, remembered, subscriptions, sync,
};
use crate::events::{ClientEvent, ServerEvent};
use crate::metrics::{ClientEventOutcome, DeferredJoin};
use crate::{
    auth::{Principal, Rejection, Role},
    delivery::Replay,
    engine::{Engine, LocationCache, OrderStore},
    interest::Interest,
    location::DriverLocationEvent,
    metrics,
    presence::Presence,
    rooms::Room,
};

/// Joins the role rooms and the rooms of the principal's active orders,
/// and registers the client event handlers.
/// Runs as a middleware, so a client that sees "connected" is already in
/// all of its rooms. When the active orders cannot be read (the store
/// stalled after the session was let in; new sessions are shed meanwhile),
/// refusing would strand the client: socket.io-client does not retry a
/// `connect_error`. It connects with its role rooms, and its order rooms are
/// joined as soon as the store answers ([`join_orders_later`]).
pub async fn join_rooms<E: Engine>(
    socket: SocketRef<E::Adapter>,
    Extension(principal): Extension<Principal>,
    State(engine): State<Arc<E>>,
    State(interest): State<Arc<Interest<E>>>,
    State(gateway): State<GatewayState>,
    TryData(auth): TryData<Value>,
) -> Result<(), Rejection> {
    // A client that says which event it saw last joins its rooms only after
    // the replay of what it missed (see `delivery`): live events of those
    // rooms cannot overtake the replay.
    let last_event_id = auth
        .ok()
        .as_ref()
        .and_then(|a| a.get("last_event_id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= 64)
        .map(str::to_owned);
    socket
        .extensions
        .insert(Arc::new(EventBudget::new(gateway.client_events_per_s)));
    let mut rooms: Vec<String> = Room::for_principal(&principal)
        .iter()
        .map(Room::name)
        .collect();
    // Every room is subscribed before the socket joins it: whatever is
    // published after the CONNECT reply reaches this node. A failure is
    // retried by the delivery loop, which then fills the gap.
    let _ = interest.ensure(&rooms).await;
    // Role rooms first: an order event processed meanwhile reaches the
    // socket through them (see the dispatcher's cluster-wide joins).
    if last_event_id.is_none() {
        socket.join(rooms.clone());
    }
    if matches!(principal.role(), Role::Customer | Role::Driver) {
        match engine.orders().active_for(&principal).await {
            Ok(orders) => {
                let order_rooms: Vec<String> = orders
                    .iter()
                    .map(|o| Room::order(&o.order_id).name())
                    .collect();
                let _ = interest
                    .ensure_for(&order_rooms, super::watches_locations(&principal))
                    .await;
                if last_event_id.is_none() {
                    socket.join(order_rooms.clone());
                }
                rooms.extend(order_rooms);
                socket.extensions.insert(JoinedOrders(Arc::new(orders)));
            }
            Err(e) => {
                metrics::store_error(metrics::StoreOp::ConnectOrders);
                metrics::deferred_order_join(DeferredJoin::Deferred);
                tracing::warn!(error = %e, "active orders unavailable at connect; joining them once the store answers");
                socket.extensions.insert(OrdersUnjoined);
            }
        }
    }
    if let Some(last_event_id) = last_event_id {
        // Resuming: the orders it subscribed to before, on any node, too.
        let remembered = remembered::remembered(engine.as_ref(), &principal).await;
        // Subscribed before the replay joins them, like the rooms above.
        let _ = interest
            .ensure_for(&remembered.rooms, super::watches_locations(&principal))
            .await;
        for room in remembered.rooms {
            if !rooms.contains(&room) {
                rooms.push(room);
            }
        }
        tracing::trace!(sid = %socket.id, ?rooms, "rooms to resume");
        socket.extensions.insert(PendingResume {
            rooms,
            last_event_id,
            over: remembered.over,
        });
    } else {
        tracing::trace!(sid = %socket.id, ?rooms, "rooms");
    }
    // Handlers too are in place before the CONNECT reply: an event the
    // client sends the moment it is connected must not find none.
    socket.on(
        ClientEvent::DriverLocationUpdate.as_str(),
        location::update::<E::Adapter>,
    );
    socket.on(
        ClientEvent::OrderSubscribe.as_str(),
        subscriptions::subscribe::<E>,
    );
    socket.on(
        ClientEvent::OrderUnsubscribe.as_str(),
        subscriptions::unsubscribe::<E>,
    );
    socket.on(ClientEvent::Sync.as_str(), sync::sync::<E>);
    socket.on(ClientEvent::AuthRefresh.as_str(), refresh::refresh::<E>);
    socket.on(ClientEvent::ChatSend.as_str(), chat::send::<E>);
    socket.on(ClientEvent::ChatHistory.as_str(), chat::history::<E>);
    socket.on(ClientEvent::ChatTyping.as_str(), chat::typing::<E>);
    socket.on_fallback(unknown_event::<E::Adapter>);
    Ok(())
}

/// The active orders a customer joined at connect, for the latest driver
/// locations sent right after its CONNECT reply.
#[derive(Clone)]
struct JoinedOrders(Arc<Vec<crate::active_order::ActiveOrder>>);

/// Its active orders could not be read at connect: its order rooms are
/// still to be joined.
#[derive(Clone)]
struct OrdersUnjoined;

/// First and longest pause between tries to read a socket's active orders.
const JOIN_RETRY_FIRST: Duration = Duration::from_millis(250);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(2);

/// Reads the principal's active orders until the store answers, then joins
/// their rooms (and sends a customer the latest driver locations, as a
/// connect does). Ends when the socket goes; each try is bounded by the
/// store's own response timeout.
async fn join_orders_later<E: Engine>(
    socket: &SocketRef<E::Adapter>,
    engine: &E,
    interest: &Interest<E>,
    principal: &Principal,
) {
    let mut pause = JOIN_RETRY_FIRST;
    loop {
        tokio::time::sleep(pause).await;
        if !socket.connected() {
            metrics::deferred_order_join(DeferredJoin::Abandoned);
            return;
        }
        match engine.orders().active_for(principal).await {
            Ok(orders) => {
                let rooms: Vec<String> = orders
                    .iter()
                    .map(|o| Room::order(&o.order_id).name())
                    .collect();
                let _ = interest
                    .ensure_for(&rooms, super::watches_locations(principal))
                    .await;
                socket.join(rooms.clone());
                metrics::deferred_order_join(DeferredJoin::Joined);
                tracing::info!(sid = %socket.id, ?rooms, "order rooms joined once the store answered");
                if principal.role() != Role::Driver {
                    send_latest_locations(socket, engine, &orders).await;
                }
                return;
            }
            Err(e) => {
                tracing::debug!(sid = %socket.id, error = %e, retry_in = ?pause, "active orders still unavailable");
                pause = (pause * 2).min(JOIN_RETRY_MAX);
            }
        }
    }
}

/// The rooms of a client that connected with `last_event_id`, joined once
/// its missed events are replayed.
#[derive(Clone)]
struct PendingResume {
    rooms: Vec<String>,
    last_event_id: String,
    /// Remembered orders that are over: left after the replay.
    over: Vec<String>,
}

/// Events outside the protocol are dropped, counted and, if the client asked
/// for an ack, answered.
async fn unknown_event<A: Adapter>(
    ack: AckSender<A>,
    Extension(budget): Extension<Arc<EventBudget>>,
) {
    let outcome = if budget.admit(tokio::time::Instant::now()) {
        ClientEventOutcome::Unknown
    } else {
        ClientEventOutcome::RateLimited
    };
    metrics::unknown_client_event(outcome);
    let _ = ack.send(&serde_json::json!({ "ok": false, "error": "unknown event" }));
}

/// Sends each joined order's latest driver location at once, so a
/// reconnecting customer's map moves without waiting for the next update.
async fn send_latest_locations<E: Engine>(
    socket: &SocketRef<E::Adapter>,
    engine: &E,
    orders: &[crate::active_order::ActiveOrder],
) {
    for order in orders {
        let Some(driver) = &order.driver_id else {
            continue;
        };
        match engine.locations().latest(driver).await {
            Ok(Some(location)) => {
                let _ = socket.emit(
                    ServerEvent::OrderDriverLocation.as_str(),
                    &DriverLocationEvent::new(&order.order_id, &location),
                );
            }
            Ok(None) => tracing::debug!(driver, "no fresh location"),
            Err(e) => tracing::debug!(error = %e, "latest location unavailable"),
        }
    }
}

pub async fn on_connect<E: Engine>(
    socket: SocketRef<E::Adapter>,
    Extension(principal): Extension<Principal>,
    State(engine): State<Arc<E>>,
    State(interest): State<Arc<Interest<E>>>,
    State(replay): State<Replay<E::Adapter>>,
    State(gateway): State<GatewayState>,
) {
    metrics::connected(principal.role());
    // Counted first: a replay below may take a while, the store is online now.
    gateway.presence.arrive(socket.id, &principal);
    socket.extensions.insert(Arc::new(PresenceGuard {
        presence: gateway.presence.clone(),
        sid: socket.id,
    }));
    if let Some(PendingResume {
        rooms,
        last_event_id,
        over,
    }) = socket.extensions.remove::<PendingResume>()
    {
        replay
            .resume(socket.clone(), rooms, last_event_id, true)
            .await;
        remembered::leave_over(engine.as_ref(), &principal, &socket, &over).await;
    }
    if principal.role() != Role::Driver
        && let Some(JoinedOrders(orders)) = socket.extensions.get::<JoinedOrders>()
    {
        send_latest_locations(&socket, engine.as_ref(), &orders).await;
    }
    tracing::debug!(
        sid = %socket.id,
        role = %principal.role(),
        transport = ?socket.transport_type(),
        "connected"
    );
    socket.on_disconnect(on_disconnect::<E::Adapter>);
    // A socket that closed before its disconnect handler was there.
    if !socket.connected() {
        gateway.presence.depart(socket.id);
    }
    if socket.extensions.remove::<OrdersUnjoined>().is_some() {
        join_orders_later(&socket, engine.as_ref(), &interest, &principal).await;
    }
}

async fn on_disconnect<A: Adapter>(
    socket: SocketRef<A>,
    reason: DisconnectReason,
    Extension(principal): Extension<Principal>,
    State(gateway): State<GatewayState>,
) {
    gateway.expiries.forget(socket.id);
    gateway.presence.depart(socket.id);
    metrics::disconnected(principal.role(), reason_label(reason));
    tracing::debug!(sid = %socket.id, %reason, "disconnected");
}

/// Takes a socket out of presence when it is dropped, however it ended
/// (the disconnect handler does so first; a second departure is a no-op).
struct PresenceGuard {
    presence: Arc<Presence>,
    sid: socketioxide::socket::Sid,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.presence.depart(self.sid);
    }
}

fn reason_label(reason: DisconnectReason) -> metrics::DisconnectReason {
    use metrics::DisconnectReason as Label;
    match reason {
        DisconnectReason::TransportClose => Label::TransportClose,
        DisconnectReason::MultipleHttpPollingError => Label::MultiplePolling,
        DisconnectReason::PacketParsingError => Label::PacketParsing,
        DisconnectReason::TransportError => Label::TransportError,
        DisconnectReason::HeartbeatTimeout => Label::HeartbeatTimeout,
        DisconnectReason::ClientNSDisconnect => Label::ClientDisconnect,
        DisconnectReason::ServerNSDisconnect => Label::ServerDisconnect,
        DisconnectReason::ClosingServer => Label::ClosingServer,
    }
}
