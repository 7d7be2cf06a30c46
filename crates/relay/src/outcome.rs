//! What happened to an offer (CONTRACT §4): exactly one per event and target room.

use serde::Serialize;
use serde_json::Value;

use crate::events::ServerEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The first ack of any socket of the room.
    Acked,
    /// Offered, but no ack before the timer ended.
    Timeout,
    /// No socket of the room could be offered it before the timer ended.
    NoRecipient,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 3] = [Self::Acked, Self::Timeout, Self::NoRecipient];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acked => "acked",
            Self::Timeout => "timeout",
            Self::NoRecipient => "no_recipient",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub event_id: String,
    pub event: ServerEvent,
    pub order_id: String,
    /// The room offered to, or `geo` when a geo-fenced request found no driver.
    pub target: String,
    pub outcome: OutcomeKind,
    /// The client's ack, when acked.
    pub response: Option<Value>,
    pub latency_ms: u64,
    pub node: String,
}

impl Outcome {
    /// As stream fields, in the contract's order.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("event_id", self.event_id.clone()),
            ("event", self.event.as_str().to_owned()),
            ("order_id", self.order_id.clone()),
            ("target", self.target.clone()),
            ("outcome", self.outcome.as_str().to_owned()),
        ];
        if let Some(response) = &self.response {
            fields.push(("response", response.to_string()));
        }
        fields.push(("latency_ms", self.latency_ms.to_string()));
        fields.push(("node", self.node.clone()));
        fields
    }
}
