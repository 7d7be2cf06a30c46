//! `order:driver_location` to this node's sockets, and to the other nodes.
//!
//! The node that receives an update emits it to its own sockets at once,
//! and queues the deliveries with the cache write: the writer publishes each
//! to its order room's location channel ([`crate::engine::Routed::Location`],
//! [`Routed::locations_of`]), in one pipeline per flush, and only the nodes
//! with sockets other than drivers' in that room hear it (`delivery` emits
//! it there). Order per driver holds: a driver's updates
//! come through one socket, so one node, one writer and, per room, one
//! channel.

use serde::{Deserialize, Serialize};
use socketioxide::{SocketIo, adapter::Adapter};

use crate::{
    engine::{DriverLocation, Routed},
    events::ServerEvent,
};

/// The payload of `order:driver_location` (CONTRACT §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverLocationEvent {
    pub order_id: String,
    pub lat: f64,
    pub lng: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    pub ts: u64,
}

impl DriverLocationEvent {
    pub fn new(order_id: &str, l: &DriverLocation) -> Self {
        Self {
            order_id: order_id.to_owned(),
            lat: l.lat,
            lng: l.lng,
            heading: l.heading,
            speed: l.speed,
            ts: l.ts,
        }
    }
}

/// One update for one order room, minus the sockets of the driver who sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub room: String,
    pub except: String,
    pub event: DriverLocationEvent,
}

/// The message that carries `delivery` to the other nodes in its room.
pub fn routed(node: &str, delivery: &Delivery) -> (String, Vec<u8>) {
    let message = Routed::Location {
        node: node.to_owned(),
        except: delivery.except.clone(),
        // Plain strings and numbers: serialising cannot fail.
        data: serde_json::to_value(&delivery.event).unwrap_or_default(),
    };
    (Routed::locations_of(&delivery.room), message.encode())
}

/// Emits to this node's sockets only: other nodes get [`routed`] messages.
pub async fn deliver<A: Adapter>(io: &SocketIo<A>, deliveries: &[Delivery]) {
    // Before the namespace opens no client is connected (and socketioxide's
    // shortcuts for the default namespace would panic).
    let Some(ns) = io.of("/") else { return };
    for d in deliveries {
        // Volatile: a client too slow for this update gets the next one.
        if let Err(e) = ns
            .clone()
            .local()
            .to(d.room.clone())
            .except(d.except.clone())
            .volatile()
            .emit(ServerEvent::OrderDriverLocation.as_str(), &d.event)
            .await
        {
            tracing::debug!(error = %e, "location fan-out failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_goes_to_its_room_without_absent_fields() {
        let location = DriverLocation {
            lat: 12.9,
            lng: 77.5,
            heading: None,
            speed: Some(8.5),
            ts: 1,
        };
        let delivery = Delivery {
            room: "order_o1".to_owned(),
            except: "driver_d1".to_owned(),
            event: DriverLocationEvent::new("o1", &location),
        };
        let (room, bytes) = routed("n1", &delivery);
        assert_eq!(Routed::located(&room), Some("order_o1"));
        let Routed::Location { node, except, data } = Routed::decode(&bytes).unwrap() else {
            panic!("not a location");
        };
        assert_eq!((node.as_str(), except.as_str()), ("n1", "driver_d1"));
        assert!(data.get("heading").is_none());
        let event: DriverLocationEvent = serde_json::from_value(data).unwrap();
        assert_eq!(event, delivery.event);
    }
}
