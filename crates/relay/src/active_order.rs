//! An active order as the relay knows it from the event stream.

use serde::{Deserialize, Serialize};

use crate::events::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveOrder {
    pub order_id: String,
    pub status: String,
    pub customer_id: String,
    pub store_id: String,
    pub driver_id: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// How many `order:status_update` events the order has had: each one
    /// carries its number, so a client notices one it missed.
    #[serde(default)]
    pub seq: u64,
}

impl ActiveOrder {
    pub fn placed(order_id: &str, customer_id: &str, store_id: &str, at: Timestamp) -> Self {
        Self {
            order_id: order_id.to_owned(),
            status: "placed".to_owned(),
            customer_id: customer_id.to_owned(),
            store_id: store_id.to_owned(),
            driver_id: None,
            created_at: at,
            updated_at: at,
            seq: 0,
        }
    }
}
