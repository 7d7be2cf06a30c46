//! An event sent with an ack request to every socket of a room, on every node.

use std::{pin::Pin, time::Duration};

use futures_util::{Stream, StreamExt};
use serde_json::Value;
use socketioxide::{adapter::Adapter, socket::Sid};
use tokio::time::Instant;

type Acks = Pin<Box<dyn Stream<Item = (Sid, Result<Value, socketioxide::AckError>)> + Send>>;

/// An offer on its way: the room's size when it went out and the stream of
/// its sockets' acks.
pub struct OfferSent {
    pub recipients: usize,
    acks: Option<Acks>,
    pub sent_at: Instant,
}

/// How an offer ended, from the room's point of view.
#[derive(Debug, Clone, PartialEq)]
pub enum OfferResult {
    /// The first ack, and how long after the emit it came.
    Acked { response: Value, after: Duration },
    /// Offered, but no ack by the deadline.
    Unanswered,
    /// Nobody was in the room.
    Nobody,
}

impl OfferSent {
    pub(super) fn nobody() -> Self {
        Self {
            recipients: 0,
            acks: None,
            sent_at: Instant::now(),
        }
    }

    pub(super) fn new<A: Adapter>(
        recipients: usize,
        acks: socketioxide::ack::AckStream<Value, A>,
    ) -> Self
    where
        socketioxide::ack::AckStream<Value, A>: Send + 'static,
    {
        Self {
            recipients,
            acks: Some(Box::pin(acks)),
            sent_at: Instant::now(),
        }
    }

    /// Waits for the first successful ack of any socket until `deadline`.
    /// An empty room answers at once: socketioxide would otherwise keep the
    /// stream open until its request timeout plus the ack timeout.
    pub async fn outcome(mut self, deadline: Instant) -> OfferResult {
        let Some(mut acks) = self.acks.take() else {
            return OfferResult::Nobody;
        };
        let first_ack = async {
            while let Some((_, result)) = acks.next().await {
                if let Ok(response) = result {
                    return Some(response);
                }
            }
            None
        };
        match tokio::time::timeout_at(deadline, first_ack).await {
            Ok(Some(response)) => OfferResult::Acked {
                response,
                after: self.sent_at.elapsed(),
            },
            Ok(None) => {
                // Every socket failed before the timer ended: the offer stays
                // open until then, as the contract counts time, not sockets.
                tokio::time::sleep_until(deadline).await;
                OfferResult::Unanswered
            }
            Err(_) => OfferResult::Unanswered,
        }
    }
}
