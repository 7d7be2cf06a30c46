//! The Socket.IO side of an offer: who is in the target room now, and an
//! emit with an ack request to all of them (see `offers` for the rest).

use std::{pin::Pin, time::Duration};

use futures_util::{Stream, StreamExt};
use serde_json::Value;
use socketioxide::socket::Sid;

use super::{BroadcastFailed, Gateway};
use crate::events::ServerEvent;
use crate::{engine::Engine, metrics, rooms::Room};

/// The acks of one emit: one item per socket, an error for a socket that
/// left or did not answer in time.
pub type Acks = Pin<Box<dyn Stream<Item = Result<Value, socketioxide::AckError>> + Send>>;

impl<E: Engine> Gateway<E> {
    /// The sockets in `room`, on every node.
    pub async fn room_sockets(&self, room: &Room) -> Result<Vec<Sid>, BroadcastFailed> {
        Ok(self
            .ns()?
            .within(room.name())
            .fetch_sockets()
            .await
            .map_err(|e| BroadcastFailed(e.to_string()))?
            .iter()
            .map(|s| s.data().id)
            .collect())
    }

    /// Sends `event` with an ack request to every socket of `room`, on every
    /// node, waiting at most `timeout` for their acks.
    pub async fn send_offer(
        &self,
        room: &Room,
        event: ServerEvent,
        payload: &Value,
        timeout: Duration,
    ) -> Result<Acks, BroadcastFailed> {
        let acks = self
            .ns()?
            .to(room.name())
            .timeout(timeout)
            .emit_with_ack::<_, Value>(event.as_str(), payload)
            .await
            .map_err(|e| BroadcastFailed(e.to_string()))?;
        metrics::emitted(event);
        Ok(Box::pin(acks.map(|(_, result)| result)))
    }
}
