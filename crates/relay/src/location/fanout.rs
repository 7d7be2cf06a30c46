//! `order:driver_location` to other nodes, batched.
//!
//! Through the Socket.IO adapter, each update would be one PUBLISH, one
//! MessagePack request decoded by every node, and a Redis write per update:
//! at tens of thousands of updates a second that is most of a node's and of
//! Redis's CPU. Instead, the node that receives an update emits it to its own
//! sockets at once, and queues the deliveries with the cache write: the
//! writer publishes them all in one message per flush, in the same pipeline,
//! and every other node emits them to its local sockets. Order per driver
//! holds: a driver's updates come through one socket, so one node, one
//! writer and one channel.

use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use socketioxide::{SocketIo, adapter::Adapter};
use tokio_util::sync::CancellationToken;

use crate::{
    engine::{DriverLocation, Engine},
    events::ServerEvent,
    metrics::{self, AdapterOp},
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

#[derive(Serialize, Deserialize)]
struct Batch {
    /// The publishing node, which delivered to its own sockets already.
    node: String,
    deliveries: Vec<Delivery>,
}

pub fn encode(node: &str, deliveries: Vec<Delivery>) -> Vec<u8> {
    let batch = Batch {
        node: node.to_owned(),
        deliveries,
    };
    // Plain structs of strings and numbers: serialising cannot fail.
    serde_json::to_vec(&batch).unwrap_or_default()
}

/// Emits to this node's sockets only: other nodes get the batch.
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

/// Delivers the batches other nodes publish until `stop`. Subscribing is
/// retried while the store is away; once subscribed, the connection
/// resubscribes by itself after a reconnect.
pub async fn receive<E: Engine>(
    engine: Arc<E>,
    io: SocketIo<E::Adapter>,
    node: String,
    stop: CancellationToken,
) {
    let mut backoff = std::time::Duration::from_millis(100);
    let mut feed = loop {
        match engine.location_feed().await {
            Ok(Some(feed)) => break feed,
            // A single node: there is nobody to hear from.
            Ok(None) => return,
            Err(e) if e.told_by_health() => {
                tracing::debug!(error = %e, retry_in = ?backoff, "location feed not subscribed")
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "location feed not subscribed")
            }
            // Peers' locations never arrive without it: keep trying, slowly.
            Err(e) => {
                backoff = std::time::Duration::from_secs(2);
                tracing::error!(error = %e, retry_in = ?backoff, "location feed not subscribed");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
    };
    loop {
        let (_, payload) = tokio::select! {
            () = stop.cancelled() => return,
            item = feed.next() => match item {
                Some(item) => item,
                None => return,
            },
        };
        match serde_json::from_slice::<Batch>(&payload) {
            Ok(batch) if batch.node == node => {}
            Ok(batch) => deliver(&io, &batch.deliveries).await,
            Err(e) => {
                metrics::adapter_error(AdapterOp::Decode);
                tracing::warn!(error = %e, "malformed location batch dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips_with_optional_fields_absent() {
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
        let bytes = encode("n1", vec![delivery.clone()]);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(json["deliveries"][0]["event"].get("heading").is_none());
        let batch: Batch = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (batch.node.as_str(), batch.deliveries),
            ("n1", vec![delivery])
        );
    }
}
