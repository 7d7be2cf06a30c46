//! `chat:send`, `chat:history` and `chat:typing` (CONTRACT §7). A message
//! is not emitted here: it is appended to the event stream as a
//! `chat.message` entry and goes out from the dispatcher like any order
//! event, so that one order's chat and status updates share one sequence,
//! one history and one recovery (docs/design.md, "Order chat").

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};

use super::{GatewayState, budget::EventBudget};
use crate::events::chat::{self, ChatHistoryQuery, ChatMessage, ChatSend, ChatTyping, InvalidChat};
use crate::events::{ClientEvent, EventKind, ServerEvent};
use crate::metrics::{ChatOutcome, ClientEventOutcome, StoreOp};
use crate::{
    active_order::ActiveOrder,
    auth::{Principal, Role},
    engine::{ChatLog, ChatParties, Engine, EventStream, OrderStore, StoreError},
    metrics,
    rooms::Room,
};

/// Why a chat request is refused: the ack's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatRefusal {
    #[error("not allowed")]
    NotAllowed,
    #[error("order not active")]
    OrderNotActive,
    #[error("invalid message")]
    Invalid(#[from] InvalidChat),
    #[error("rate limited")]
    RateLimited,
    #[error("temporarily unavailable")]
    Unavailable,
}

impl ChatRefusal {
    fn outcome(&self) -> ChatOutcome {
        match self {
            Self::NotAllowed => ChatOutcome::NotAllowed,
            Self::OrderNotActive => ChatOutcome::OrderNotActive,
            Self::Invalid(_) => ChatOutcome::Invalid,
            Self::RateLimited => ChatOutcome::RateLimited,
            Self::Unavailable => ChatOutcome::Unavailable,
        }
    }
}

fn unavailable(e: StoreError) -> ChatRefusal {
    metrics::store_error(StoreOp::Chat);
    tracing::warn!(error = %e, "chat store unavailable");
    ChatRefusal::Unavailable
}

/// Whether `principal` is one of an order's writers: its customer, its
/// driver, or support or admin. Merchants never are.
fn is_party(principal: &Principal, customer_id: &str, driver_id: Option<&str>) -> bool {
    match principal.role() {
        Role::Admin | Role::Support => true,
        Role::Customer => principal.sub() == customer_id,
        Role::Driver => driver_id == Some(principal.sub()),
        Role::Merchant => false,
    }
}

/// Where an order's chat stands for `principal`.
enum Access {
    /// The order is active and `principal` may write and read.
    Open(ActiveOrder),
    /// The order ended (or is unknown to staff): read-only.
    ReadOnly,
}

async fn access<E: Engine>(
    engine: &E,
    principal: &Principal,
    order_id: &str,
) -> Result<Access, ChatRefusal> {
    // Closed is checked too: the chat closes before the final status goes
    // out, the order is forgotten only after.
    let (order, closed) = tokio::join!(
        engine.orders().get(order_id),
        engine.chat().closed(order_id)
    );
    let closed = closed.map_err(unavailable)?;
    if let Some(order) = order.map_err(unavailable)?
        && closed.is_none()
    {
        return if is_party(principal, &order.customer_id, order.driver_id.as_deref()) {
            Ok(Access::Open(order))
        } else {
            Err(ChatRefusal::NotAllowed)
        };
    }
    if matches!(principal.role(), Role::Admin | Role::Support) {
        return Ok(Access::ReadOnly);
    }
    match closed {
        Some(ChatParties {
            customer_id,
            driver_id,
        }) if is_party(principal, &customer_id, driver_id.as_deref()) => Ok(Access::ReadOnly),
        // Someone else's order, or none at all: the same answer.
        _ => Err(ChatRefusal::NotAllowed),
    }
}

fn refuse(ack: AckSender<impl socketioxide::adapter::Adapter>, refusal: &ChatRefusal) {
    // A client that asked for no ack gets none; a gone client cannot be told.
    let _ = ack.send(&json!({ "ok": false, "error": refusal.to_string() }));
}

pub async fn send<E: Engine>(
    TryData(data): TryData<ChatSend>,
    ack: AckSender<E::Adapter>,
    Extension(principal): Extension<Principal>,
    Extension(budget): Extension<Arc<EventBudget>>,
    State(gateway): State<GatewayState>,
    State(engine): State<Arc<E>>,
) {
    let result = async {
        if !budget.admit(tokio::time::Instant::now()) {
            return Err(ChatRefusal::RateLimited);
        }
        let send = chat::check_send(data, gateway.chat_max_chars)?;
        if let Access::ReadOnly = access(engine.as_ref(), &principal, &send.order_id).await? {
            return Err(ChatRefusal::OrderNotActive);
        }
        let message = ChatMessage::from_client(&send, principal.sub(), principal.role().as_str());
        engine
            .stream()
            .append(
                EventKind::ChatMessage.as_str(),
                &message.to_data().to_string(),
            )
            .await
            .map_err(|e| {
                metrics::store_error(StoreOp::Append);
                tracing::warn!(error = %e, "chat message not appended");
                ChatRefusal::Unavailable
            })
    }
    .await;
    match result {
        Ok(event_id) => {
            metrics::chat_message(ChatOutcome::Sent);
            let ts = chat::entry_ts(&event_id);
            let _ = ack.send(&json!({ "ok": true, "event_id": event_id, "ts": ts }));
        }
        Err(refusal) => {
            metrics::chat_message(refusal.outcome());
            refuse(ack, &refusal);
        }
    }
}

pub async fn history<E: Engine>(
    TryData(data): TryData<ChatHistoryQuery>,
    ack: AckSender<E::Adapter>,
    Extension(principal): Extension<Principal>,
    Extension(budget): Extension<Arc<EventBudget>>,
    State(engine): State<Arc<E>>,
) {
    let result = async {
        if !budget.admit(tokio::time::Instant::now()) {
            return Err(ChatRefusal::RateLimited);
        }
        let query = chat::check_history(data)?;
        access(engine.as_ref(), &principal, &query.order_id).await?;
        let limit = query.limit.unwrap_or(chat::HISTORY_PAGE);
        let messages = engine
            .chat()
            .history(&query.order_id, query.before.as_deref(), limit)
            .await
            .map_err(unavailable)?;
        // Written by the dispatcher as JSON; anything else is skipped.
        Ok(messages
            .iter()
            .filter_map(|m| serde_json::from_str::<Value>(m).ok())
            .collect::<Vec<_>>())
    }
    .await;
    metrics::client_event(ClientEvent::ChatHistory, client_outcome(&result));
    match result {
        Ok(messages) => {
            let _ = ack.send(&json!({ "ok": true, "messages": messages }));
        }
        Err(refusal) => refuse(ack, &refusal),
    }
}

pub async fn typing<E: Engine>(
    socket: SocketRef<E::Adapter>,
    TryData(data): TryData<ChatTyping>,
    ack: AckSender<E::Adapter>,
    Extension(principal): Extension<Principal>,
    Extension(budget): Extension<Arc<EventBudget>>,
    State(engine): State<Arc<E>>,
) {
    let result = async {
        if !budget.admit(tokio::time::Instant::now()) {
            return Err(ChatRefusal::RateLimited);
        }
        let typing = chat::check_typing(data)?;
        let Access::Open(order) = access(engine.as_ref(), &principal, &typing.order_id).await?
        else {
            return Err(ChatRefusal::OrderNotActive);
        };
        let notice = json!({
            "order_id": typing.order_id,
            "from": { "id": principal.sub(), "role": principal.role().as_str() },
        });
        // Volatile and unrecorded: a lost "typing" is harmless, a late one
        // misleading. Merchants' sockets are those in the order's store room.
        socket
            .broadcast()
            .to(Room::order(&order.order_id).name())
            .except(Room::Merchant(order.store_id.clone()).name())
            .volatile()
            .emit(ServerEvent::ChatTyping.as_str(), &notice)
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "typing notice not relayed");
                ChatRefusal::Unavailable
            })?;
        metrics::emitted(ServerEvent::ChatTyping);
        Ok(())
    }
    .await;
    metrics::client_event(ClientEvent::ChatTyping, client_outcome(&result));
    match result {
        Ok(()) => {
            let _ = ack.send(&json!({ "ok": true }));
        }
        Err(refusal) => refuse(ack, &refusal),
    }
}

fn client_outcome<T>(result: &Result<T, ChatRefusal>) -> ClientEventOutcome {
    match result {
        Ok(_) => ClientEventOutcome::Ok,
        Err(ChatRefusal::RateLimited) => ClientEventOutcome::RateLimited,
        Err(_) => ClientEventOutcome::Rejected,
    }
}
