//! The Socket.IO event names of the protocol (CONTRACT §2), each spelled
//! once: what the relay emits and what clients may send.

use std::fmt;

/// Events the relay emits to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerEvent {
    OrderStatusUpdate,
    MerchantNewOrder,
    DeliveryNewRequest,
    AdminAlert,
    OrderDriverLocation,
    /// The answer to a client's `sync` (and to a resume on connect).
    SyncDone,
    /// To one socket, `RELAY_TOKEN_REFRESH_NOTICE_S` before its token's `exp`.
    AuthExpiring,
    /// A message of an order's chat, recorded like a status update.
    ChatMessage,
    /// Volatile, unrecorded: someone in the order room is typing.
    ChatTyping,
}

impl ServerEvent {
    pub const ALL: [ServerEvent; 9] = [
        Self::OrderStatusUpdate,
        Self::MerchantNewOrder,
        Self::DeliveryNewRequest,
        Self::AdminAlert,
        Self::OrderDriverLocation,
        Self::SyncDone,
        Self::AuthExpiring,
        Self::ChatMessage,
        Self::ChatTyping,
    ];

    /// The events that carry an offer (acked by a client, with an outcome).
    pub const OFFERS: [ServerEvent; 2] = [Self::MerchantNewOrder, Self::DeliveryNewRequest];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OrderStatusUpdate => "order:status_update",
            Self::MerchantNewOrder => "merchant:new_order",
            Self::DeliveryNewRequest => "delivery:new_request",
            Self::AdminAlert => "admin:alert",
            Self::OrderDriverLocation => "order:driver_location",
            Self::SyncDone => "sync:done",
            Self::AuthExpiring => "auth:expiring",
            Self::ChatMessage => "chat:message",
            Self::ChatTyping => "chat:typing",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

impl fmt::Display for ServerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ServerEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Events clients send to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientEvent {
    Sync,
    DriverLocationUpdate,
    OrderSubscribe,
    OrderUnsubscribe,
    AuthRefresh,
    ChatSend,
    ChatHistory,
    ChatTyping,
}

impl ClientEvent {
    pub const ALL: [ClientEvent; 8] = [
        Self::Sync,
        Self::DriverLocationUpdate,
        Self::OrderSubscribe,
        Self::OrderUnsubscribe,
        Self::AuthRefresh,
        Self::ChatSend,
        Self::ChatHistory,
        Self::ChatTyping,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::DriverLocationUpdate => "driver:location_update",
            Self::OrderSubscribe => "order:subscribe",
            Self::OrderUnsubscribe => "order:unsubscribe",
            Self::AuthRefresh => "auth:refresh",
            Self::ChatSend => "chat:send",
            Self::ChatHistory => "chat:history",
            Self::ChatTyping => "chat:typing",
        }
    }
}

impl fmt::Display for ClientEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_contracts_and_parse_back() {
        let names: Vec<_> = ServerEvent::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(
            names,
            [
                "order:status_update",
                "merchant:new_order",
                "delivery:new_request",
                "admin:alert",
                "order:driver_location",
                "sync:done",
                "auth:expiring",
                "chat:message",
                "chat:typing",
            ]
        );
        for event in ServerEvent::ALL {
            assert_eq!(ServerEvent::parse(event.as_str()), Some(event));
        }
        assert_eq!(ServerEvent::parse("order:status"), None);
        let names: Vec<_> = ClientEvent::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(
            names,
            [
                "sync",
                "driver:location_update",
                "order:subscribe",
                "order:unsubscribe",
                "auth:refresh",
                "chat:send",
                "chat:history",
                "chat:typing",
            ]
        );
    }
}
