//! The backend's events (CONTRACT §3) as typed Rust: one type per kind,
//! decoded from a stream entry's `type` and `data` fields.

pub mod chat;
mod decode;
mod location;
mod names;
mod presence;
mod time;

use serde::Deserialize;
use serde_json::{Map, Value};

pub use chat::ChatMessage;
pub use decode::{DecodeError, DecodeReason, decode, decode_entry, decode_value, sequence_key};
pub use location::{LocationUpdate, Reject};
pub use names::{ClientEvent, ServerEvent};
pub use presence::{PresenceChange, PresenceId, PresenceKind, PresenceState};
pub use time::{Timestamp, is_rfc3339, now_ms, rfc3339};

/// Statuses after which an order is over and its room is emptied.
pub const TERMINAL_STATUSES: [&str; 3] = ["delivered", "cancelled", "rejected"];

pub fn is_terminal(status: &str) -> bool {
    TERMINAL_STATUSES.contains(&status)
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrderEvent {
    Created(OrderCreated),
    Status(OrderStatus),
    Assigned(OrderAssigned),
    DeliveryRequest(DeliveryRequest),
    AdminAlert(AdminAlert),
    ChatMessage(ChatMessage),
}

impl OrderEvent {
    /// The stream `type` of this kind of event.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Created(_) => EventKind::OrderCreated,
            Self::Status(_) => EventKind::OrderStatus,
            Self::Assigned(_) => EventKind::OrderAssigned,
            Self::DeliveryRequest(_) => EventKind::DeliveryRequest,
            Self::AdminAlert(_) => EventKind::AdminAlert,
            Self::ChatMessage(_) => EventKind::ChatMessage,
        }
    }

    pub fn order_id(&self) -> Option<&str> {
        match self {
            Self::Created(e) => Some(&e.order_id),
            Self::Status(e) => Some(&e.order_id),
            Self::Assigned(e) => Some(&e.order_id),
            Self::DeliveryRequest(e) => Some(&e.order_id),
            Self::AdminAlert(_) => None,
            Self::ChatMessage(e) => Some(&e.order_id),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    OrderCreated,
    OrderStatus,
    OrderAssigned,
    DeliveryRequest,
    AdminAlert,
    ChatMessage,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        Self::OrderCreated,
        Self::OrderStatus,
        Self::OrderAssigned,
        Self::DeliveryRequest,
        Self::AdminAlert,
        Self::ChatMessage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => "order.created",
            Self::OrderStatus => "order.status",
            Self::OrderAssigned => "order.assigned",
            Self::DeliveryRequest => "delivery.request",
            Self::AdminAlert => "admin.alert",
            Self::ChatMessage => "chat.message",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// `order.created`: a customer placed an order at a store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OrderCreated {
    pub order_id: String,
    pub customer_id: String,
    pub store_id: String,
    pub items: Vec<Value>,
    #[serde(default = "default_accept_timeout_s")]
    pub accept_timeout_s: u32,
}

fn default_accept_timeout_s() -> u32 {
    60
}

/// `order.status`: any status; `delivered`, `cancelled`, `rejected` end the order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OrderStatus {
    pub order_id: String,
    pub status: String,
    /// RFC 3339; filled in by the relay when absent.
    pub timestamp: Option<String>,
}

/// `order.assigned`: a driver takes the order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OrderAssigned {
    pub order_id: String,
    pub driver_id: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GeoPoint {
    pub lat: f64,
    pub lng: f64,
    /// Address, name, anything else the backend sends, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Who a delivery request goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryTarget {
    Driver(String),
    Nearby { radius_m: f64, max_drivers: u32 },
}

/// `delivery.request`: offer an order to one driver or the nearest ones.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRequest {
    pub order_id: String,
    pub pickup: GeoPoint,
    pub drop: Value,
    pub fare: Value,
    pub target: DeliveryTarget,
    pub timer_s: u32,
}

/// `admin.alert`: level, message and anything else, all passed through.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AdminAlert {
    pub level: String,
    pub message: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
