//! What each event does (CONTRACT §3): order state, room membership, emits,
//! and offers whose outcomes go back to the backend (CONTRACT §4).

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::ServerEvent;
use crate::metrics::{StoreOp, StreamStage};
use crate::{
    active_order::ActiveOrder,
    engine::{
        ChatAppend, ChatLog, ChatParties, ChatRecord, Created, Engine, EventStream, History,
        LocationCache, OrderStore, OrderWrite,
    },
    events::{
        AdminAlert, ChatMessage, DeliveryRequest, DeliveryTarget, EventKind, OrderAssigned,
        OrderCreated, OrderEvent, OrderStatus, chat, is_terminal, now_ms, rfc3339,
    },
    gateway::{DriverLocationEvent, Gateway},
    metrics,
    outcome::{Outcome, OutcomeKind},
    rooms::Room,
    stream::{
        DispatchError,
        offers::{self, Offer},
    },
};

/// Waits for the outcomes of offers already sent and appends them; resolves
/// to `false` when cancelled before every outcome was written.
pub type OutcomesPending = Pin<Box<dyn Future<Output = bool> + Send>>;

/// What is left of an event once its emits are out.
pub enum Effect {
    Done,
    /// Offers are out; the entry is complete once their outcomes are written.
    Offers(OutcomesPending),
    /// Refused, nothing changed: the entry goes to the dead letters.
    Refused(Refusal),
}

/// Why an event that decoded is refused all the same. Its text is the dead
/// letter's `reason`: the label, `: ` and details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `order.created` for an order that is active with another customer
    /// or store: a backend bug or a reused id. Acting on it would leave the
    /// first parties in the order's rooms (docs/protocol.md).
    #[error(
        "order_exists: order {order_id} is active for customer {customer_id} at store {store_id}"
    )]
    OrderExists {
        order_id: String,
        customer_id: String,
        store_id: String,
    },
    /// `chat.message` for an order that is not active (never was, or ended
    /// before the message's entry): the chat is read-only then.
    #[error("order_not_active: order {order_id} is not active")]
    ChatOrderNotActive { order_id: String },
}

pub struct Dispatcher<E: Engine> {
    engine: Arc<E>,
    gateway: Gateway<E>,
    node: String,
    stop: CancellationToken,
    /// Messages kept per order chat (`RELAY_CHAT_HISTORY`).
    chat_history: usize,
}

impl<E: Engine> Dispatcher<E> {
    pub fn new(engine: Arc<E>, gateway: Gateway<E>, node: String, stop: CancellationToken) -> Self {
        Self {
            engine,
            gateway,
            node,
            stop,
            chat_history: 200,
        }
    }

    /// Keeps the last `messages` of each order's chat.
    pub fn with_chat_history(mut self, messages: usize) -> Self {
        self.chat_history = messages;
        self
    }

    /// Applies one event. Safe to repeat (a retry, or an entry taken over
    /// from a node that died after its effect and before its XACK): order
    /// state is written once per entry (see `OrderStore`), a repeat that
    /// later entries of its order superseded writes and emits nothing, an
    /// offer already decided is not made again, and a geo request goes to
    /// the drivers it first went to. What may come twice is an emit that
    /// was the order's newest (or an alert), with the same `event_id`,
    /// which clients drop.
    pub async fn handle(
        &self,
        event_id: &str,
        event: &OrderEvent,
    ) -> Result<Effect, DispatchError> {
        match event {
            OrderEvent::Created(e) => self.order_created(event_id, e).await,
            OrderEvent::Status(e) => self.order_status(event_id, e).await.map(|()| Effect::Done),
            OrderEvent::Assigned(e) => self
                .order_assigned(event_id, e)
                .await
                .map(|()| Effect::Done),
            OrderEvent::DeliveryRequest(e) => self.delivery_request(event_id, e).await,
            OrderEvent::AdminAlert(e) => self.admin_alert(event_id, e).await.map(|()| Effect::Done),
            OrderEvent::ChatMessage(e) => self.chat_message(event_id, e).await,
        }
    }

    async fn order_created(
        &self,
        event_id: &str,
        e: &OrderCreated,
    ) -> Result<Effect, DispatchError> {
        let order = ActiveOrder::placed(&e.order_id, &e.customer_id, &e.store_id, now_ms());
        // State first, then the join: a customer connecting meanwhile either
        // reads the order at connect or is already in its customer room.
        let started = Instant::now();
        let created = self.engine.orders().create(&order, event_id).await?;
        metrics::stream_stage(StreamStage::Store, started.elapsed().as_secs_f64());
        let ended = match created {
            Created::New => false,
            // The order is active already. With the same parties this is the
            // same order again (a redelivery, a backend's retry): the order
            // stays as later events left it, and the join and the offer
            // below are idempotent. With other parties it is refused: the
            // order and its rooms stay as they are.
            Created::Active(active) => {
                if active.customer_id != e.customer_id || active.store_id != e.store_id {
                    return Ok(Effect::Refused(Refusal::OrderExists {
                        order_id: active.order_id,
                        customer_id: active.customer_id,
                        store_id: active.store_id,
                    }));
                }
                // Its final status was written and emitted, but the node
                // died before it noted the end (`end` comes after the
                // emit): the order is over all the same.
                if is_terminal(&active.status) {
                    metrics::stream_superseded(EventKind::OrderCreated);
                    true
                } else {
                    false
                }
            }
            // Handled before, and the order is over since (a node died
            // while its offer waited): nobody joins its room again, and the
            // offer is not sent again; it still gets its one outcome.
            Created::Ended => {
                metrics::stream_superseded(EventKind::OrderCreated);
                true
            }
        };
        if !ended {
            self.gateway
                .join_members(
                    &Room::Customer(e.customer_id.clone()),
                    &Room::order(&e.order_id),
                )
                .await?;
        }
        let timer = Duration::from_secs(u64::from(e.accept_timeout_s));
        let payload = json!({
            "event_id": event_id,
            "order_id": e.order_id,
            "store_id": e.store_id,
            "items": e.items,
            "timer": e.accept_timeout_s,
        });
        let room = Room::Merchant(e.store_id.clone());
        let mut offer = Offer::new(
            event_id,
            room,
            ServerEvent::MerchantNewOrder,
            payload,
            offers::deadline(event_id, timer),
        );
        if ended {
            offer.close();
        }
        offer.start(&self.gateway, self.engine.stream()).await?;
        Ok(Effect::Offers(self.outcomes(
            event_id,
            ServerEvent::MerchantNewOrder,
            &e.order_id,
            vec![offer],
        )))
    }

    async fn order_status(&self, event_id: &str, e: &OrderStatus) -> Result<(), DispatchError> {
        let now = now_ms();
        let started = Instant::now();
        let written = self
            .engine
            .orders()
            .set_status(&e.order_id, &e.status, now, event_id)
            .await?;
        metrics::stream_stage(StreamStage::Store, started.elapsed().as_secs_f64());
        let order = match written {
            OrderWrite::Current(order) => Some(order),
            OrderWrite::NotActive => None,
            // Emitted when it was handled first: emitting it again now,
            // after later updates, would show clients an older status.
            OrderWrite::Superseded => {
                metrics::stream_superseded(EventKind::OrderStatus);
                return Ok(());
            }
        };
        let order_room = Room::order(&e.order_id);
        let mut rooms = vec![order_room.name()];
        if let Some(order) = &order {
            rooms.push(Room::Customer(order.customer_id.clone()).name());
            rooms.push(Room::Merchant(order.store_id.clone()).name());
            if let Some(driver) = &order.driver_id {
                rooms.push(Room::Driver(driver.clone()).name());
            }
        }
        let timestamp = e.timestamp.clone().unwrap_or_else(|| rfc3339(now));
        let mut payload = json!({
            "event_id": event_id,
            "order_id": e.order_id,
            "status": e.status,
            "timestamp": timestamp,
        });
        if let Some(order) = &order {
            payload["seq"] = json!(order.seq);
        }
        // Everyone leaves the order room only after the final status reached them.
        let then_leave = is_terminal(&e.status).then(|| order_room.name());
        // The chat is read-only before anyone sees the final status: a
        // client that saw it and sends gets `order not active`. It stays
        // readable to the order's parties for a day. Idempotent: a repeat
        // after a crash closes it again.
        if then_leave.is_some()
            && let Some(order) = &order
        {
            let parties = ChatParties {
                customer_id: order.customer_id.clone(),
                driver_id: order.driver_id.clone(),
            };
            self.engine.chat().close(&e.order_id, &parties).await?;
        }
        self.record(
            ServerEvent::OrderStatusUpdate,
            &payload,
            event_id,
            &rooms,
            then_leave.as_deref(),
        )
        .await?;
        if then_leave.is_some() {
            self.engine.orders().end(&e.order_id, event_id).await?;
        }
        Ok(())
    }

    async fn order_assigned(&self, event_id: &str, e: &OrderAssigned) -> Result<(), DispatchError> {
        let started = Instant::now();
        let written = self
            .engine
            .orders()
            .assign(&e.order_id, &e.driver_id, now_ms(), event_id)
            .await?;
        metrics::stream_stage(StreamStage::Store, started.elapsed().as_secs_f64());
        let previous = match written {
            OrderWrite::Current(assignment) => assignment.previous,
            OrderWrite::NotActive => None,
            // A later driver (or the order's end) came after it: putting
            // this driver back in the room would undo that.
            OrderWrite::Superseded => {
                metrics::stream_superseded(EventKind::OrderAssigned);
                return Ok(());
            }
        };
        let order_room = Room::order(&e.order_id);
        if let Some(previous) = previous.filter(|p| *p != e.driver_id) {
            self.gateway
                .leave_members(&Room::Driver(previous), &order_room)
                .await?;
        }
        let driver_room = Room::Driver(e.driver_id.clone());
        self.gateway.join_members(&driver_room, &order_room).await?;
        // The customer's map shows the new driver at once, not at its next update.
        if let Some(location) = self.engine.locations().latest(&e.driver_id).await? {
            let event = DriverLocationEvent::new(&e.order_id, &location);
            self.gateway
                .emit_except(
                    &order_room,
                    &driver_room,
                    ServerEvent::OrderDriverLocation,
                    &event,
                )
                .await?;
        }
        Ok(())
    }

    async fn delivery_request(
        &self,
        event_id: &str,
        e: &DeliveryRequest,
    ) -> Result<Effect, DispatchError> {
        let timer = Duration::from_secs(u64::from(e.timer_s));
        let drivers = match &e.target {
            DeliveryTarget::Driver(driver) => vec![driver.clone()],
            DeliveryTarget::Nearby {
                radius_m,
                max_drivers,
            } => {
                let nearby = self
                    .engine
                    .locations()
                    .nearby(e.pickup.lat, e.pickup.lng, *radius_m, *max_drivers as usize)
                    .await?;
                // Handled again (a node died while its offers waited), the
                // request goes to the drivers it went to the first time:
                // drivers move, and a new search would offer it to others
                // and leave the first ones' offers without an outcome.
                self.engine
                    .stream()
                    .offer_targets(event_id, &nearby)
                    .await?
            }
        };
        if drivers.is_empty() {
            // A geo request that finds no fresh driver: one outcome, at once.
            return Ok(Effect::Offers(self.outcomes(
                event_id,
                ServerEvent::DeliveryNewRequest,
                &e.order_id,
                vec![],
            )));
        }
        let mut pickup = serde_json::Map::from_iter([
            ("lat".to_owned(), json!(e.pickup.lat)),
            ("lng".to_owned(), json!(e.pickup.lng)),
        ]);
        pickup.extend(e.pickup.extra.clone());
        let payload = json!({
            "event_id": event_id,
            "order_id": e.order_id,
            "pickup": pickup,
            "drop": e.drop,
            "fare": e.fare,
            "timer": e.timer_s,
        });
        let deadline = offers::deadline(event_id, timer);
        let mut pending = Vec::with_capacity(drivers.len());
        for driver in drivers {
            let mut offer = Offer::new(
                event_id,
                Room::Driver(driver),
                ServerEvent::DeliveryNewRequest,
                payload.clone(),
                deadline,
            );
            offer.start(&self.gateway, self.engine.stream()).await?;
            pending.push(offer);
        }
        Ok(Effect::Offers(self.outcomes(
            event_id,
            ServerEvent::DeliveryNewRequest,
            &e.order_id,
            pending,
        )))
    }

    async fn admin_alert(&self, event_id: &str, e: &AdminAlert) -> Result<(), DispatchError> {
        let mut payload = e.extra.clone();
        payload.insert("event_id".into(), json!(event_id));
        payload.insert("level".into(), json!(e.level));
        payload.insert("message".into(), json!(e.message));
        self.record(
            ServerEvent::AdminAlert,
            &Value::Object(payload),
            event_id,
            &[Room::AdminUpdates.name()],
            None,
        )
        .await
    }

    /// A chat message: logged for `chat:history` and appended to
    /// `{prefix}chat` once, then recorded and delivered like a status
    /// update (same history, same `event_id` sequence, same recovery).
    async fn chat_message(&self, event_id: &str, e: &ChatMessage) -> Result<Effect, DispatchError> {
        let active = self.engine.orders().get(&e.order_id).await?.is_some()
            && self.engine.chat().closed(&e.order_id).await?.is_none();
        let payload = e.payload(event_id);
        let record = ChatRecord {
            event_id: event_id.to_owned(),
            order_id: e.order_id.clone(),
            from_id: e.from.id().to_owned(),
            from_role: e.from.role().to_owned(),
            text: e.text.clone(),
            ts: chat::entry_ts(event_id),
            message: payload.to_string(),
        };
        match self
            .engine
            .chat()
            .append(&record, self.chat_history, active)
            .await?
        {
            ChatAppend::New | ChatAppend::RepeatNewest => {}
            // Later messages of the order went out after it: so did it.
            ChatAppend::RepeatOlder => {
                metrics::stream_superseded(EventKind::ChatMessage);
                return Ok(Effect::Done);
            }
            ChatAppend::Refused => {
                return Ok(Effect::Refused(Refusal::ChatOrderNotActive {
                    order_id: e.order_id.clone(),
                }));
            }
        }
        self.record(
            ServerEvent::ChatMessage,
            &payload,
            event_id,
            &[Room::order(&e.order_id).name()],
            None,
        )
        .await?;
        Ok(Effect::Done)
    }

    /// Emits through the history: kept for clients that reconnect, and
    /// delivered by every node in one order (see `delivery`).
    async fn record(
        &self,
        event: ServerEvent,
        payload: &Value,
        event_id: &str,
        rooms: &[String],
        then_leave: Option<&str>,
    ) -> Result<(), DispatchError> {
        let started = Instant::now();
        self.engine
            .history()
            .publish(
                event.as_str(),
                &payload.to_string(),
                event_id,
                rooms,
                then_leave,
            )
            .await?;
        metrics::stream_stage(StreamStage::Record, started.elapsed().as_secs_f64());
        metrics::emitted(event);
        Ok(())
    }

    /// Waits for every offer's decision (all share the event's timer) and
    /// appends one outcome per offer; no offers at all means a geo request
    /// that found nobody.
    fn outcomes(
        &self,
        event_id: &str,
        event: ServerEvent,
        order_id: &str,
        offers: Vec<Offer>,
    ) -> OutcomesPending {
        let engine = self.engine.clone();
        let gateway = self.gateway.clone();
        let stop = self.stop.clone();
        let base = Outcome {
            event_id: event_id.to_owned(),
            event,
            order_id: order_id.to_owned(),
            target: "geo".to_owned(),
            outcome: OutcomeKind::NoRecipient,
            response: None,
            latency_ms: 0,
            node: self.node.clone(),
        };
        Box::pin(async move {
            if offers.is_empty() {
                return append_outcome(engine.stream(), &base, &stop).await;
            }
            // Each outcome is written as soon as its offer is decided: a
            // backend waiting for the first driver to accept must not wait
            // for the others' timers.
            let waits = offers.into_iter().map(|offer| {
                let (base, gateway, engine, stop) =
                    (base.clone(), gateway.clone(), engine.clone(), stop.clone());
                async move {
                    let target = offer.target.name();
                    let decision = offer.decide(&gateway, engine.stream(), &stop).await;
                    if stop.is_cancelled() {
                        // Interrupted: the entry goes back to the group
                        // and another node finishes what is left.
                        return false;
                    }
                    // `None`: decided before, by a node that stopped after writing it.
                    let Some(decision) = decision else {
                        return true;
                    };
                    let outcome = Outcome {
                        target,
                        outcome: decision.outcome,
                        response: decision.response,
                        latency_ms: decision.latency.as_millis() as u64,
                        ..base
                    };
                    append_outcome(engine.stream(), &outcome, &stop).await
                }
            });
            tokio::select! {
                written = join_all(waits) => written.into_iter().all(|ok| ok),
                () = stop.cancelled() => false,
            }
        })
    }
}

/// Appends, retrying while the store fails transiently: an outcome that
/// cannot be written keeps its stream entry pending, so it is redelivered
/// rather than lost.
async fn append_outcome<S: EventStream>(
    stream: &S,
    outcome: &Outcome,
    stop: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        match stream.append_outcome(outcome).await {
            Ok(written) => {
                if written {
                    let latency = (outcome.outcome == OutcomeKind::Acked)
                        .then(|| outcome.latency_ms as f64 / 1000.0);
                    metrics::ack_outcome(outcome.event, outcome.outcome, latency);
                }
                return true;
            }
            Err(e) if e.is_transient() => {
                metrics::store_error(StoreOp::AppendOutcome);
                tracing::warn!(error = %e, event_id = %outcome.event_id, "outcome not written yet");
            }
            // Would fail the same way again: the entry stays pending and is
            // redelivered (and dead-lettered after too many deliveries).
            Err(e) => {
                metrics::store_error(StoreOp::AppendOutcome);
                tracing::error!(error = %e, event_id = %outcome.event_id, "outcome not written");
                return false;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
