//! One order's life as the platform's backend drives it: created, offered
//! to its store, accepted (or not), prepared, offered to nearby drivers,
//! assigned, picked up, delivered. Every step is an event posted to the
//! relay; every answer comes back as an offer outcome or a driver app tap.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::{sync::mpsc::UnboundedReceiver, time::Instant};

use super::{
    Ctx,
    api::{ApiError, OfferOutcome},
    city::{self, Customer, Store},
    clock::{Stopped, real_sleep},
    desk::Signal,
    geo::Point,
    rng::Rng,
    stats::bump,
};

/// How long a store has to accept, in city time (the relay's default).
const MERCHANT_TIMER: Duration = Duration::from_secs(60);
/// How long a driver has to take an offer, in city time.
const DRIVER_TIMER: Duration = Duration::from_secs(30);
/// The relay's timers are whole wall-clock seconds, never below this.
const TIMER_FLOOR_S: u32 = 3;
/// Wall-clock slack after a relay timer before the backend stops waiting
/// for its outcome (outcomes are polled, and polls can fail for a while).
const OUTCOME_GRACE: Duration = Duration::from_secs(10);
/// Geo-fenced dispatch: each round wider than the last.
const DISPATCH_ROUNDS: [(f64, u32); 3] = [(3_000.0, 5), (6_000.0, 10), (10_000.0, 20)];
/// City time between two dispatch rounds.
const ROUND_PAUSE: Duration = Duration::from_secs(30);
/// A driver slower than this (km/h) on a leg is lost: the order is cancelled.
const SLOWEST_KMH: f64 = 8.0;
/// Share of customers who cancel while the kitchen is still preparing.
const CUSTOMER_CANCELS: f64 = 0.02;

/// What the backend decided to sell, before the order exists.
#[derive(Debug, Clone)]
pub struct OrderPlan {
    pub order_id: String,
    pub store: usize,
    pub customer: usize,
    pub items: Vec<Value>,
    pub total: u32,
    /// Kitchen time in city time, before any rush.
    pub prep: Duration,
    pub customer_cancels: bool,
}

impl OrderPlan {
    pub fn draw(ctx: &Ctx, n: u64, rng: &mut Rng) -> Self {
        let store = ctx.city.pick_store(rng);
        let customer = ctx.city.pick_customer(&ctx.city.stores[store], rng);
        let (items, total) = city::basket(&ctx.city.stores[store], rng);
        Self {
            order_id: format!("o-{}-{n}", ctx.run_tag),
            store,
            customer,
            prep: rng.duration(Duration::from_secs(5 * 60), Duration::from_secs(12 * 60))
                + Duration::from_secs(60) * items.len() as u32,
            items,
            total,
            customer_cancels: rng.chance(CUSTOMER_CANCELS),
        }
    }
}

/// How an order ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Delivered,
    Rejected,
    Cancelled,
}

/// What the store's answer means for the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MerchantVerdict {
    Accepted,
    Declined(String),
    /// Offered, never answered.
    TimedOut,
    /// No merchant device was connected during the whole timer.
    Offline,
}

pub fn merchant_verdict(outcome: &OfferOutcome) -> MerchantVerdict {
    match (outcome.outcome.as_str(), outcome.accepted()) {
        ("acked", Some(true)) => MerchantVerdict::Accepted,
        ("acked", _) => {
            MerchantVerdict::Declined(outcome.reason().unwrap_or("declined").to_owned())
        }
        ("no_recipient", _) => MerchantVerdict::Offline,
        _ => MerchantVerdict::TimedOut,
    }
}

/// One round of a geo-fenced delivery request: the first driver to accept
/// gets the order.
#[derive(Debug)]
pub struct DriverRound {
    event_id: String,
    pub declined: u32,
    pub timed_out: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundEnd {
    Taken(String),
    /// No driver with a fresh location within the radius.
    NobodyNear,
}

impl DriverRound {
    pub fn new(event_id: String) -> Self {
        Self {
            event_id,
            declined: 0,
            timed_out: 0,
        }
    }

    pub fn on_outcome(&mut self, o: &OfferOutcome) -> Option<RoundEnd> {
        if o.event_id != self.event_id || o.event != "delivery:new_request" {
            return None;
        }
        match (o.outcome.as_str(), o.accepted()) {
            ("acked", Some(true)) => o
                .target
                .strip_prefix("driver_")
                .map(|driver| RoundEnd::Taken(driver.to_owned())),
            ("acked", _) => {
                self.declined += 1;
                None
            }
            ("no_recipient", _) if o.target == "geo" => Some(RoundEnd::NobodyNear),
            _ => {
                self.timed_out += 1;
                None
            }
        }
    }
}

/// Why a lifecycle stopped early.
enum Abort {
    Stopped,
    /// The relay would not take an event: the order cannot go on.
    Api(&'static str, ApiError),
}

impl From<Stopped> for Abort {
    fn from(_: Stopped) -> Self {
        Abort::Stopped
    }
}

/// One order, start to end. Returns `None` when the run stopped first (the
/// order stays open in the desk and is cancelled at shutdown).
pub async fn run(
    ctx: Arc<Ctx>,
    plan: OrderPlan,
    inbox: UnboundedReceiver<Signal>,
    rng: Rng,
) -> Option<End> {
    let order_id = plan.order_id.clone();
    let mut life = Life {
        ctx: &ctx,
        plan: &plan,
        store: &ctx.city.stores[plan.store],
        customer: &ctx.city.customers[plan.customer],
        inbox,
        rng,
        placed: false,
    };
    let end = match life.live().await {
        Ok(end) => end,
        // Placed orders stay open in the desk: they are cancelled at stop.
        Err(Abort::Stopped) if life.placed => return None,
        Err(Abort::Stopped) => {
            ctx.desk.close(&order_id);
            return None;
        }
        Err(Abort::Api(step, e)) => {
            tracing::error!(order_id = %order_id, step, error = %e, "order abandoned");
            bump(&ctx.stats.errors);
            if !life.placed {
                ctx.desk.close(&order_id);
                return None;
            }
            // Best effort: the relay has the order open.
            let _ = life.status("cancelled").await;
            End::Cancelled
        }
    };
    ctx.desk.close(&order_id);
    let counter = match end {
        End::Delivered => &ctx.stats.orders_delivered,
        End::Rejected => &ctx.stats.orders_rejected,
        End::Cancelled => &ctx.stats.orders_cancelled,
    };
    bump(counter);
    Some(end)
}

struct Life<'a> {
    ctx: &'a Ctx,
    plan: &'a OrderPlan,
    store: &'a Store,
    customer: &'a Customer,
    inbox: UnboundedReceiver<Signal>,
    rng: Rng,
    /// `order.created` is in the stream: the order exists for the relay.
    placed: bool,
}

impl Life<'_> {
    async fn live(&mut self) -> Result<End, Abort> {
        let (ctx, plan, store, customer) = (self.ctx, self.plan, self.store, self.customer);
        let accept_timeout_s = ctx.clock.timer_s(MERCHANT_TIMER, TIMER_FLOOR_S);
        // `pickup` and `drop` are hints the relay passes over; dashboards
        // put the order on the map with them.
        let created = json!({
            "order_id": plan.order_id,
            "customer_id": customer.id,
            "store_id": store.id,
            "items": plan.items,
            "total": plan.total,
            "currency": "INR",
            "accept_timeout_s": accept_timeout_s,
            "pickup": pickup_point(store),
            "drop": drop_point(customer),
        });
        let offer = self
            .publish("order.created", created, "order.created")
            .await?;
        self.placed = true;
        bump(&ctx.stats.orders_placed);
        bump(&ctx.stats.merchant_offers);

        let deadline =
            Instant::now() + Duration::from_secs(accept_timeout_s.into()) + OUTCOME_GRACE;
        let verdict = loop {
            match self.next(deadline).await? {
                Some(Signal::Outcome(o))
                    if o.event_id == offer && o.event == "merchant:new_order" =>
                {
                    break Some(merchant_verdict(&o));
                }
                Some(_) => {}
                None => break None,
            }
        };
        match verdict {
            Some(MerchantVerdict::Accepted) => {}
            Some(MerchantVerdict::Declined(reason)) => {
                self.status("rejected").await?;
                self.alert(
                    "warning",
                    "order_rejected",
                    format!("{} declined order {}: {reason}", store.name, plan.order_id),
                )
                .await?;
                return Ok(End::Rejected);
            }
            Some(MerchantVerdict::TimedOut) => {
                self.status("cancelled").await?;
                self.alert(
                    "warning",
                    "merchant_timeout",
                    format!(
                        "{} did not answer order {} within {accept_timeout_s} s",
                        store.name, plan.order_id
                    ),
                )
                .await?;
                return Ok(End::Cancelled);
            }
            Some(MerchantVerdict::Offline) => {
                self.status("cancelled").await?;
                self.alert(
                    "warning",
                    "store_offline",
                    format!(
                        "{} is offline: order {} cancelled",
                        store.name, plan.order_id
                    ),
                )
                .await?;
                return Ok(End::Cancelled);
            }
            None => {
                tracing::error!(order_id = %plan.order_id, event_id = %offer, "no outcome for the store's offer");
                bump(&ctx.stats.errors);
                self.status("cancelled").await?;
                return Ok(End::Cancelled);
            }
        }

        self.status("accepted").await?;
        let rush = ctx.in_rush(plan.store);
        let prep = if rush {
            plan.prep.mul_f64(1.8)
        } else {
            plan.prep
        };
        let ready_at = Instant::now() + ctx.clock.real(prep);
        self.city_pause(30, 90).await?;
        self.status("preparing").await?;
        if plan.customer_cancels {
            self.city_pause(60, 180).await?;
            self.status("cancelled").await?;
            return Ok(End::Cancelled);
        }
        // Drivers are asked while the food cooks, so one is there about
        // when it is ready.
        self.city_pause(30, 90).await?;
        let Some(driver) = self.dispatch().await? else {
            self.status("cancelled").await?;
            self.alert(
                "warning",
                "no_driver",
                format!(
                    "no driver took order {} at {} after {} tries",
                    plan.order_id,
                    store.name,
                    DISPATCH_ROUNDS.len()
                ),
            )
            .await?;
            return Ok(End::Cancelled);
        };
        self.publish(
            "order.assigned",
            json!({"order_id": plan.order_id, "driver_id": driver}),
            "order.assigned",
        )
        .await?;
        self.status("driver_assigned").await?;

        // The driver rides to the store; the app says when it is there.
        if !self.wait_for_driver(&driver, true).await? {
            return self.driver_lost(&driver).await;
        }
        // The food may not be ready yet: the driver waits at the counter.
        real_sleep(
            ready_at.saturating_duration_since(Instant::now()),
            &ctx.stop,
        )
        .await?;
        self.status("picked_up").await?;
        if !self.wait_for_driver(&driver, false).await? {
            return self.driver_lost(&driver).await;
        }
        self.city_pause(30, 120).await?;
        self.status("delivered").await?;
        Ok(End::Delivered)
    }

    /// Rounds of geo-fenced requests, wider each time; the first driver to
    /// accept gets the order.
    async fn dispatch(&mut self) -> Result<Option<String>, Abort> {
        let (ctx, plan, store, customer) = (self.ctx, self.plan, self.store, self.customer);
        let distance = store.at.distance_m(customer.home);
        for (round, (radius_m, max_drivers)) in DISPATCH_ROUNDS.into_iter().enumerate() {
            if round > 0 {
                ctx.clock.sleep(ROUND_PAUSE, &ctx.stop).await?;
            }
            let timer_s = ctx.clock.timer_s(DRIVER_TIMER, TIMER_FLOOR_S);
            let request = json!({
                "order_id": plan.order_id,
                "pickup": pickup_point(store),
                "drop": drop_point(customer),
                "fare": city::fare(distance),
                "distance_m": distance.round(),
                "radius_m": radius_m,
                "max_drivers": max_drivers,
                "timer_s": timer_s,
            });
            let offer = self
                .publish("delivery.request", request, "delivery.request")
                .await?;
            bump(&ctx.stats.driver_offers);
            let mut this_round = DriverRound::new(offer);
            let deadline = Instant::now() + Duration::from_secs(timer_s.into()) + OUTCOME_GRACE;
            loop {
                match self.next(deadline).await? {
                    Some(Signal::Outcome(o)) => match this_round.on_outcome(&o) {
                        Some(RoundEnd::Taken(driver)) => return Ok(Some(driver)),
                        Some(RoundEnd::NobodyNear) => break,
                        None => {}
                    },
                    Some(_) => {}
                    None => break,
                }
            }
            tracing::debug!(order_id = %plan.order_id, round, declined = this_round.declined, timed_out = this_round.timed_out, "no driver this round");
        }
        Ok(None)
    }

    /// Waits for the driver app's tap at the store (or at the door). False
    /// when it does not come in any plausible time.
    async fn wait_for_driver(&mut self, driver: &str, to_store: bool) -> Result<bool, Abort> {
        let (ctx, store, customer) = (self.ctx, self.store, self.customer);
        // From anywhere in town to the store, or store to door, at a crawl.
        let leg_m = if to_store {
            2.0 * super::city::RADIUS_M
        } else {
            store.at.distance_m(customer.home)
        };
        let slowest =
            Duration::from_secs_f64(leg_m / (SLOWEST_KMH / 3.6)) + Duration::from_secs(10 * 60);
        let deadline = Instant::now() + ctx.clock.real(slowest) + OUTCOME_GRACE;
        loop {
            match self.next(deadline).await? {
                Some(Signal::AtStore { driver_id }) if to_store && driver_id == driver => {
                    return Ok(true);
                }
                Some(Signal::AtDrop { driver_id }) if !to_store && driver_id == driver => {
                    return Ok(true);
                }
                Some(_) => {}
                None => return Ok(false),
            }
        }
    }

    async fn driver_lost(&mut self, driver: &str) -> Result<End, Abort> {
        tracing::warn!(order_id = %self.plan.order_id, driver, "driver never arrived; cancelling");
        self.status("cancelled").await?;
        self.alert(
            "error",
            "driver_lost",
            format!(
                "driver {driver} stopped moving with order {}",
                self.plan.order_id
            ),
        )
        .await?;
        Ok(End::Cancelled)
    }

    /// The next signal for this order, or `None` at `deadline`.
    async fn next(&mut self, deadline: Instant) -> Result<Option<Signal>, Stopped> {
        tokio::select! {
            () = self.ctx.stop.cancelled() => Err(Stopped),
            signal = self.inbox.recv() => Ok(signal),
            () = tokio::time::sleep_until(deadline) => Ok(None),
        }
    }

    async fn city_pause(&mut self, lo_s: u64, hi_s: u64) -> Result<(), Stopped> {
        let pause = self
            .rng
            .duration(Duration::from_secs(lo_s), Duration::from_secs(hi_s));
        self.ctx.clock.sleep(pause, &self.ctx.stop).await
    }

    async fn publish(&self, kind: &str, data: Value, step: &'static str) -> Result<String, Abort> {
        if self.ctx.stop.is_cancelled() {
            return Err(Abort::Stopped);
        }
        let id = self
            .ctx
            .api
            .publish(kind, data)
            .await
            .map_err(|e| Abort::Api(step, e))?;
        bump(&self.ctx.stats.events_published);
        Ok(id)
    }

    async fn status(&self, status: &'static str) -> Result<String, Abort> {
        let data = json!({
            "order_id": self.plan.order_id,
            "status": status,
            "timestamp": relay::events::rfc3339(relay::events::now_ms()),
        });
        self.publish("order.status", data, status).await
    }

    async fn alert(&self, level: &str, kind: &str, message: String) -> Result<String, Abort> {
        let data = json!({
            "level": level,
            "message": message,
            "kind": kind,
            "order_id": self.plan.order_id,
            "store_id": self.store.id,
        });
        self.publish("admin.alert", data, "admin.alert").await
    }
}

fn point(p: Point) -> Value {
    json!({"lat": round6(p.lat), "lng": round6(p.lng)})
}

pub fn pickup_point(store: &Store) -> Value {
    let mut v = point(store.at);
    v["name"] = store.name.clone().into();
    v["store_id"] = store.id.clone().into();
    v
}

fn drop_point(customer: &Customer) -> Value {
    let mut v = point(customer.home);
    v["customer_id"] = customer.id.clone().into();
    v
}

pub fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(
        event_id: &str,
        target: &str,
        outcome: &str,
        response: Option<Value>,
    ) -> OfferOutcome {
        OfferOutcome {
            event_id: event_id.into(),
            event: if target.starts_with("merchant_") {
                "merchant:new_order"
            } else {
                "delivery:new_request"
            }
            .into(),
            order_id: "o1".into(),
            target: target.into(),
            outcome: outcome.into(),
            response,
        }
    }

    #[test]
    fn the_store_answer_decides_the_order() {
        let m = |o, r| merchant_verdict(&outcome("1-0", "merchant_s1", o, r));
        assert_eq!(
            m("acked", Some(json!({"accepted": true}))),
            MerchantVerdict::Accepted
        );
        assert_eq!(
            m("acked", Some(json!({"accepted": false, "reason": "busy"}))),
            MerchantVerdict::Declined("busy".into())
        );
        assert_eq!(
            m("acked", Some(json!({"accepted": false}))),
            MerchantVerdict::Declined("declined".into())
        );
        assert_eq!(m("timeout", None), MerchantVerdict::TimedOut);
        assert_eq!(m("no_recipient", None), MerchantVerdict::Offline);
    }

    #[test]
    fn the_first_driver_to_accept_takes_the_order() {
        let mut round = DriverRound::new("5-0".into());
        let yes = Some(json!({"accepted": true}));
        let no = Some(json!({"accepted": false}));
        assert_eq!(
            round.on_outcome(&outcome("5-0", "driver_d3", "acked", no)),
            None
        );
        assert_eq!(
            round.on_outcome(&outcome("5-0", "driver_d4", "timeout", None)),
            None
        );
        // Another round's acceptance is not this round's.
        assert_eq!(
            round.on_outcome(&outcome("4-0", "driver_d9", "acked", yes.clone())),
            None
        );
        assert_eq!(
            round.on_outcome(&outcome("5-0", "driver_d7", "acked", yes)),
            Some(RoundEnd::Taken("d7".into()))
        );
        assert_eq!((round.declined, round.timed_out), (1, 1));
        let mut empty = DriverRound::new("6-0".into());
        assert_eq!(
            empty.on_outcome(&outcome("6-0", "geo", "no_recipient", None)),
            Some(RoundEnd::NobodyNear)
        );
    }

    #[test]
    fn coordinates_are_rounded_to_a_tenth_of_a_metre() {
        assert_eq!(round6(12.971_612_345), 12.971_612);
    }
}
