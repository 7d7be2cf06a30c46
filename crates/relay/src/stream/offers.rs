//! Durable offers: `merchant:new_order` and `delivery:new_request` outlive
//! a recipient's reconnect and the node that made them.
//!
//! An offer's timer runs from the event's append (the time in its stream
//! id), not from when a node picked it up, so a node that takes over the
//! entry of a stopped one keeps the original deadline. Until then the offer
//! goes to every socket of the target room, and again whenever a socket
//! that was not there before shows up (a merchant that reconnects, on any
//! node). The first ack wins. The outcome is written once per offer whatever
//! happens (see `EventStream::append_outcome`), and an offer already decided
//! is not made again.

use std::{collections::HashSet, time::Duration};

use futures_util::{StreamExt, stream::SelectAll};
use serde_json::Value;
use socketioxide::socket::Sid;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::ServerEvent;
use crate::{
    engine::{Engine, EventStream, OfferState},
    events::now_ms,
    gateway::{Acks, BroadcastFailed, Gateway},
    metrics,
    outcome::OutcomeKind,
    rooms::Room,
};

/// How often a waiting offer looks for new sockets in its room, at first;
/// the interval doubles up to `MAX_LOOK_EVERY` while nothing changes.
const LOOK_EVERY: Duration = Duration::from_millis(250);
const MAX_LOOK_EVERY: Duration = Duration::from_secs(2);

/// How an offer ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub outcome: OutcomeKind,
    pub response: Option<Value>,
    /// From the first time it was sent to the ack (zero when not acked).
    pub latency: Duration,
}

/// One event offered to one room.
pub struct Offer {
    pub event_id: String,
    pub target: Room,
    pub event: ServerEvent,
    pub payload: Value,
    pub deadline: Instant,
    acks: SelectAll<Acks>,
    seen: HashSet<Sid>,
    offered: bool,
    first_sent: Option<Instant>,
    decided: bool,
    /// Sent to nobody any more: the order it offers is over.
    closed: bool,
}

/// When the timer of an event appended at `event_id`'s time ends.
pub fn deadline(event_id: &str, timer: Duration) -> Instant {
    let appended_ms = event_id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .unwrap_or_else(now_ms);
    let ends_ms = appended_ms.saturating_add(timer.as_millis() as u64);
    Instant::now() + Duration::from_millis(ends_ms.saturating_sub(now_ms()))
}

impl Offer {
    pub fn new(
        event_id: &str,
        target: Room,
        event: ServerEvent,
        payload: Value,
        deadline: Instant,
    ) -> Self {
        Self {
            event_id: event_id.to_owned(),
            target,
            event,
            payload,
            deadline,
            acks: SelectAll::new(),
            seen: HashSet::new(),
            offered: false,
            first_sent: None,
            decided: false,
            closed: false,
        }
    }

    /// Sends the offer to no socket from now on; its outcome is still
    /// written when its timer ends (`timeout` if it reached someone before,
    /// else `no_recipient`).
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Looks up how far the offer got (on this or a stopped node) and sends
    /// it to the room's sockets at once, before the event's order moves on.
    pub async fn start<E: Engine>(
        &mut self,
        gateway: &Gateway<E>,
        stream: &E::Stream,
    ) -> Result<(), crate::stream::DispatchError> {
        match stream
            .offer_state(&self.event_id, &self.target.name())
            .await?
        {
            OfferState::Decided => self.decided = true,
            OfferState::Offered => self.offered = true,
            OfferState::Fresh => {}
        }
        if !self.decided {
            self.offer_to_newcomers(gateway, stream).await?;
        }
        Ok(())
    }

    /// Waits for the first ack, re-offering to sockets that join the room,
    /// until the deadline. `None`: decided before (by a stopped node), or
    /// this node is stopping and hands the entry back.
    pub async fn decide<E: Engine>(
        mut self,
        gateway: &Gateway<E>,
        stream: &E::Stream,
        stop: &CancellationToken,
    ) -> Option<Decision> {
        if self.decided {
            return None;
        }
        let mut look_every = LOOK_EVERY;
        let mut next_look = Instant::now() + look_every;
        loop {
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep_until(self.deadline) => {
                    let outcome = if self.offered {
                        OutcomeKind::Timeout
                    } else {
                        OutcomeKind::NoRecipient
                    };
                    return Some(Decision { outcome, response: None, latency: Duration::ZERO });
                }
                Some(ack) = self.acks.next(), if !self.acks.is_empty() => match ack {
                    Ok(response) => {
                        let latency = self.first_sent.map_or(Duration::ZERO, |t| t.elapsed());
                        return Some(Decision { outcome: OutcomeKind::Acked, response: Some(response), latency });
                    }
                    // A socket left (or timed out): look for its successor soon.
                    Err(_) => {
                        look_every = LOOK_EVERY;
                        next_look = Instant::now() + look_every;
                    }
                },
                () = tokio::time::sleep_until(next_look) => {
                    match self.offer_to_newcomers(gateway, stream).await {
                        Ok(true) => look_every = LOOK_EVERY,
                        Ok(false) => look_every = (look_every * 2).min(MAX_LOOK_EVERY),
                        Err(e) => tracing::debug!(error = %e, "looking for recipients failed"),
                    }
                    next_look = Instant::now() + look_every;
                }
            }
        }
    }

    /// Sends the offer to the room when a socket is there that has not had
    /// it yet; returns whether it did.
    async fn offer_to_newcomers<E: Engine>(
        &mut self,
        gateway: &Gateway<E>,
        stream: &E::Stream,
    ) -> Result<bool, BroadcastFailed> {
        if self.closed {
            return Ok(false);
        }
        let sockets = gateway.room_sockets(&self.target).await?;
        let newcomers = sockets.iter().any(|sid| !self.seen.contains(sid));
        if !newcomers {
            return Ok(false);
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let acks = gateway
            .send_offer(&self.target, self.event, &self.payload, left)
            .await?;
        if self.first_sent.is_some() {
            metrics::reoffered(self.event);
        }
        self.acks.push(acks);
        self.seen.extend(sockets);
        self.first_sent.get_or_insert_with(Instant::now);
        if !self.offered {
            self.offered = true;
            if let Err(e) = stream
                .mark_offered(&self.event_id, &self.target.name())
                .await
            {
                // Only matters if this node stops before the timer ends.
                tracing::debug!(error = %e, "offer mark not written");
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_timer_runs_from_the_events_append() {
        let timer = Duration::from_secs(60);
        let appended = now_ms() - 20_000;
        let left = deadline(&format!("{appended}-0"), timer) - Instant::now();
        assert!(left <= Duration::from_secs(40) && left > Duration::from_secs(38));
        let long_ago = deadline("1-0", timer);
        assert!(long_ago <= Instant::now());
    }
}
