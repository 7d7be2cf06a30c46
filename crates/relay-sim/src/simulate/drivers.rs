//! Drivers: riders on the city's streets with the driver app. Idle ones
//! wander and park; they answer delivery offers (most accept, some decline,
//! a few let them time out); an assigned one rides to the store, waits for
//! the food, rides to the door. Every few seconds of city time the app
//! sends `driver:location_update` with heading and speed. An assigned
//! driver answers the customer's chat messages, and sometimes says so at
//! pickup (see `chat`).

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    Ctx,
    chat::{self, Chatter},
    city::{CENTRE, RADIUS_M},
    desk::Signal,
    geo::{Mover, Point, Step},
    order::round6,
    rng::Rng,
    session::{Identity, Link, Replies, SessionEnd, Wake, wake},
    stats::bump,
};
use relay::auth::Role;
use relay_client::{Client, ClientError, Event, Transport};

const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// How far an idle driver drifts in one go (metres).
const WANDER_M: f64 = 1_500.0;

/// How a driver answers a delivery offer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OfferAnswer {
    Accept {
        after: Duration,
    },
    Decline {
        after: Duration,
    },
    /// Phone in the pocket: the offer times out.
    Ignore,
}

/// Free drivers mostly take the offer after a glance; busy ones decline
/// almost at once (the app does it for them).
pub fn answer_offer(free: bool, rng: &mut Rng) -> OfferAnswer {
    let secs = |rng: &mut Rng, lo: f64, hi: f64| Duration::from_secs_f64(rng.range(lo, hi));
    if !free {
        return if rng.chance(0.95) {
            OfferAnswer::Decline {
                after: secs(rng, 0.5, 2.0),
            }
        } else {
            OfferAnswer::Ignore
        };
    }
    let u = rng.unit();
    if u < 0.80 {
        OfferAnswer::Accept {
            after: secs(rng, 2.0, 12.0),
        }
    } else if u < 0.95 {
        OfferAnswer::Decline {
            after: secs(rng, 2.0, 8.0),
        }
    } else {
        OfferAnswer::Ignore
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Job {
    order_id: String,
    pickup: Point,
    drop: Point,
}

impl Job {
    /// From a `delivery:new_request` payload.
    fn from_offer(data: &Value) -> Option<Self> {
        let point = |v: &Value| Some(Point::new(v.get("lat")?.as_f64()?, v.get("lng")?.as_f64()?));
        Some(Self {
            order_id: data.get("order_id")?.as_str()?.to_owned(),
            pickup: point(data.get("pickup")?)?,
            drop: point(data.get("drop")?)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Idle,
    ToStore(Job),
    AtStore(Job),
    ToDrop(Job),
    AtDrop(Job),
}

impl Mode {
    fn job(&self) -> Option<&Job> {
        match self {
            Mode::Idle => None,
            Mode::ToStore(j) | Mode::AtStore(j) | Mode::ToDrop(j) | Mode::AtDrop(j) => Some(j),
        }
    }
}

struct Driver {
    index: usize,
    link: Link,
    rng: Rng,
    mover: Mover,
    kmh: f64,
    mode: Mode,
    mode_since: Instant,
    /// Accepted an offer and waits to hear whether it got the order.
    pending: Option<(String, Instant)>,
    /// Offers this driver accepted, by order id: the assignment names only the order.
    accepted: HashMap<String, (Job, Instant)>,
    /// Answers given, by `event_id`: a redelivered offer gets the same one.
    answers: HashMap<String, (Option<Value>, Instant)>,
    parked_until: Option<Instant>,
    replies: Replies,
    chatter: Chatter,
    last_move: Instant,
    next_send: Instant,
}

pub async fn run(ctx: Arc<Ctx>, index: usize) {
    let mut rng = Rng::derive(ctx.seed, "driver", index as u64);
    let start = CENTRE.random_within(RADIUS_M * 0.8, &mut rng);
    let heading = rng.range(0.0, 360.0);
    let id = ctx.city.drivers[index].clone();
    let now = Instant::now();
    let mut driver = Driver {
        index,
        link: Link::new(Identity::new(id, Role::Driver, Transport::WebSocket, index)),
        rng,
        mover: Mover::new(start, heading),
        kmh: 0.0,
        mode: Mode::Idle,
        mode_since: now,
        pending: None,
        accepted: HashMap::new(),
        answers: HashMap::new(),
        parked_until: None,
        replies: Replies::default(),
        chatter: Chatter::default(),
        last_move: now,
        next_send: now,
    };
    loop {
        let Ok(mut client) = driver.link.connect(&ctx).await else {
            break;
        };
        driver.replies.clear();
        match driver.session(&ctx, &mut client).await {
            SessionEnd::Stopped => {
                client.disconnect().await;
                break;
            }
            SessionEnd::Lost => driver.link.lost(&ctx, &client),
        }
    }
    driver.set_mode(&ctx, Mode::Idle);
}

impl Driver {
    fn id(&self) -> &str {
        &self.link.who.sub
    }

    async fn session(&mut self, ctx: &Ctx, client: &mut Client) -> SessionEnd {
        // Online again: the app reports where it is at once.
        self.next_send = Instant::now();
        loop {
            let deadline = [self.replies.next_due(), self.chatter.next_due()]
                .into_iter()
                .flatten()
                .fold(self.next_send, Instant::min);
            match wake(ctx, client, deadline).await {
                Wake::Stop => return SessionEnd::Stopped,
                Wake::Event(Ok(event)) => self.on_event(ctx, event).await,
                Wake::Event(Err(ClientError::Timeout(_))) => {}
                Wake::Event(Err(_)) => return SessionEnd::Lost,
                Wake::Timer => {
                    if !self.replies.send_due(client).await
                        || !self.chatter.send_due(ctx, client).await
                    {
                        return SessionEnd::Lost;
                    }
                    if Instant::now() >= self.next_send && !self.tick(ctx, client).await {
                        return SessionEnd::Lost;
                    }
                }
            }
        }
    }

    async fn on_event(&mut self, ctx: &Ctx, event: Event) {
        match event.name.as_str() {
            "delivery:new_request" => {
                bump(&ctx.stats.events_received);
                self.on_offer(ctx, event);
            }
            "order:status_update" => {
                if self.link.first_time(ctx, &event) {
                    let data = event.data();
                    if let (Some(order), Some(status)) = (
                        data.get("order_id").and_then(Value::as_str),
                        data.get("status").and_then(Value::as_str),
                    ) {
                        self.on_status(ctx, order, status);
                    }
                }
            }
            "sync:done" => {
                bump(&ctx.stats.events_received);
                if event.data().get("recovered").and_then(Value::as_bool) == Some(false) {
                    self.resync(ctx).await;
                }
            }
            "chat:message" | "chat:typing" => {
                if self.link.first_time(ctx, &event) {
                    self.on_chat(ctx, &event.name, event.data());
                }
            }
            _ => {
                self.link.first_time(ctx, &event);
            }
        }
    }

    /// The customer of this driver's job wrote: most drivers answer.
    fn on_chat(&mut self, ctx: &Ctx, name: &str, data: &Value) {
        let from = chat::heard(ctx, self.id(), name, data);
        let order = data["order_id"].as_str().unwrap_or_default();
        let mine = self.mode.job().is_some_and(|j| j.order_id == order);
        if from.as_deref() == Some("customer")
            && mine
            && let Some(line) = Chatter::driver_answer(&mut self.rng)
        {
            let after = self
                .rng
                .duration(Duration::from_secs(20), Duration::from_secs(60));
            self.chatter
                .write(order, line, ctx.clock.real(after), &mut self.rng);
        }
    }

    fn on_offer(&mut self, ctx: &Ctx, event: Event) {
        if !event.needs_ack() {
            return;
        }
        let data = event.data();
        let event_id = data
            .get("event_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let timer = Duration::from_secs(data.get("timer").and_then(Value::as_u64).unwrap_or(30));
        let now = Instant::now();
        // Redelivered after a reconnect: same answer, right away.
        if let Some((answer, _)) = self.answers.get(&event_id) {
            if let Some(answer) = answer.clone() {
                self.replies.schedule(now, event, answer);
            }
            return;
        }
        let free = self.mode == Mode::Idle && self.pending.is_none();
        let job = Job::from_offer(data);
        let answer = match (answer_offer(free, &mut self.rng), job) {
            (OfferAnswer::Accept { after }, Some(job)) => {
                self.pending = Some((job.order_id.clone(), now + timer + Duration::from_secs(5)));
                self.accepted.insert(job.order_id.clone(), (job, now));
                Some((after, json!({"accepted": true})))
            }
            (OfferAnswer::Accept { after } | OfferAnswer::Decline { after }, None) => {
                tracing::warn!(driver = self.id(), offer = %data, "offer without pickup or drop; declining");
                Some((after, json!({"accepted": false})))
            }
            (OfferAnswer::Decline { after }, _) => Some((after, json!({"accepted": false}))),
            (OfferAnswer::Ignore, _) => None,
        };
        self.answers
            .insert(event_id, (answer.as_ref().map(|(_, a)| a.clone()), now));
        if let Some((after, answer)) = answer {
            // However slow the rider, the app answers within the timer.
            let delay = ctx.clock.real(after).min(timer.mul_f64(0.7));
            self.replies.schedule(now + delay, event, answer);
        }
    }

    fn on_status(&mut self, ctx: &Ctx, order_id: &str, status: &str) {
        let mine = self.mode.job().is_some_and(|j| j.order_id == order_id);
        match status {
            "driver_assigned" if self.mode == Mode::Idle => {
                if let Some((job, _)) = self.accepted.remove(order_id) {
                    self.pending = None;
                    self.kmh = self.rng.range(18.0, 32.0);
                    self.mover.route_to(job.pickup, &mut self.rng);
                    self.set_mode(ctx, Mode::ToStore(job));
                }
            }
            "picked_up" if mine => {
                if let Some(line) = Chatter::picked_up_line(&mut self.rng) {
                    self.chatter
                        .write(order_id, line, Duration::ZERO, &mut self.rng);
                }
                if let Mode::ToStore(job) | Mode::AtStore(job) = self.mode.clone() {
                    self.kmh = self.rng.range(18.0, 32.0);
                    self.mover.route_to(job.drop, &mut self.rng);
                    self.set_mode(ctx, Mode::ToDrop(job));
                }
            }
            "delivered" | "cancelled" | "rejected" if mine => {
                self.chatter.forget(order_id);
                self.mover.stop();
                self.set_mode(ctx, Mode::Idle);
            }
            _ => {}
        }
    }

    /// After a reconnect whose missed events could not be replayed: the
    /// relay's view of this driver's orders says where the job stands.
    async fn resync(&mut self, ctx: &Ctx) {
        let Some(job) = self.mode.job().cloned() else {
            return;
        };
        let url = format!("{}/orders/active", self.link.url(ctx));
        let token = ctx.token(self.id(), Role::Driver, &[]);
        let reply = ctx
            .http
            .get(url)
            .bearer_auth(token)
            .timeout(ACK_TIMEOUT)
            .send()
            .await;
        let body: Value = match reply {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
            Ok(r) => {
                tracing::warn!(driver = self.id(), status = %r.status(), "cannot resync");
                return;
            }
            Err(e) => {
                tracing::warn!(driver = self.id(), error = %e.without_url(), "cannot resync");
                return;
            }
        };
        let Some(orders) = body.get("orders").and_then(Value::as_array) else {
            return;
        };
        let status = orders
            .iter()
            .find(|o| o.get("order_id").and_then(Value::as_str) == Some(&job.order_id))
            .and_then(|o| o.get("status").and_then(Value::as_str));
        match status {
            None => self.on_status(ctx, &job.order_id, "cancelled"),
            Some(status) => self.on_status(ctx, &job.order_id, status),
        }
    }

    fn set_mode(&mut self, ctx: &Ctx, mode: Mode) {
        let was_busy = self.mode != Mode::Idle;
        let busy = mode != Mode::Idle;
        if was_busy != busy {
            ctx.stats.drivers_busy.fetch_add(
                if busy { 1 } else { -1 },
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        self.mode = mode;
        self.mode_since = Instant::now();
    }

    /// Moves, then reports the position. False when the connection is gone.
    async fn tick(&mut self, ctx: &Ctx, client: &Client) -> bool {
        let now = Instant::now();
        let city_dt = ctx.clock.city(now - self.last_move);
        self.last_move = now;
        self.expire(ctx, now);
        if self.mode == Mode::Idle && !self.mover.is_moving() {
            self.wander(ctx, now);
        }
        let moving = self.mover.is_moving();
        if moving && self.mover.advance(self.kmh / 3.6 * city_dt.as_secs_f64()) == Step::Arrived {
            self.arrived(ctx, now);
        }
        let interval = ctx.location_interval(&mut self.rng);
        self.next_send = now + interval;
        self.send_location(ctx, client, moving).await
    }

    /// Drops what has waited too long: an offer never assigned, a job the
    /// backend never finished (its events may have been missed).
    fn expire(&mut self, ctx: &Ctx, now: Instant) {
        if self
            .pending
            .as_ref()
            .is_some_and(|(_, until)| *until <= now)
        {
            self.pending = None;
        }
        let old = Duration::from_secs(600);
        self.accepted
            .retain(|_, (_, at)| now.duration_since(*at) < old);
        self.answers
            .retain(|_, (_, at)| now.duration_since(*at) < old);
        let stuck_after = ctx.clock.real(Duration::from_secs(90 * 60)) + Duration::from_secs(60);
        if self.mode != Mode::Idle && now.duration_since(self.mode_since) > stuck_after {
            tracing::warn!(driver = self.id(), mode = ?self.mode, "no news of the job for too long; back to idle");
            self.mover.stop();
            self.set_mode(ctx, Mode::Idle);
        }
    }

    /// Idle: park for a while, then drift somewhere else in town.
    fn wander(&mut self, ctx: &Ctx, now: Instant) {
        match self.parked_until {
            Some(until) if until > now => {}
            Some(_) => {
                self.parked_until = None;
                let mut to = self.mover.at().random_within(WANDER_M, &mut self.rng);
                if CENTRE.distance_m(to) > RADIUS_M {
                    to = CENTRE.random_within(RADIUS_M * 0.6, &mut self.rng);
                }
                self.kmh = self.rng.range(12.0, 22.0);
                self.mover.route_to(to, &mut self.rng);
            }
            None => {
                let park = self
                    .rng
                    .duration(Duration::from_secs(60), Duration::from_secs(6 * 60));
                self.parked_until = Some(now + ctx.clock.real(park));
            }
        }
    }

    fn arrived(&mut self, ctx: &Ctx, now: Instant) {
        let driver_id = self.id().to_owned();
        match self.mode.clone() {
            Mode::ToStore(job) => {
                let told = ctx
                    .desk
                    .deliver(&job.order_id, Signal::AtStore { driver_id });
                self.set_mode(ctx, if told { Mode::AtStore(job) } else { Mode::Idle });
            }
            Mode::ToDrop(job) => {
                let told = ctx
                    .desk
                    .deliver(&job.order_id, Signal::AtDrop { driver_id });
                self.set_mode(ctx, if told { Mode::AtDrop(job) } else { Mode::Idle });
            }
            Mode::Idle => {
                let park = self
                    .rng
                    .duration(Duration::from_secs(60), Duration::from_secs(6 * 60));
                self.parked_until = Some(now + ctx.clock.real(park));
            }
            Mode::AtStore(_) | Mode::AtDrop(_) => {}
        }
    }

    async fn send_location(&mut self, ctx: &Ctx, client: &Client, moving: bool) -> bool {
        let at = self.mover.at();
        // A deliberate bad input (see `glitches`): a garbage GPS fix.
        let glitch = ctx.take_gps_glitch(self.index);
        let update = if glitch {
            json!({"lat": round6(91.0 + self.rng.unit()), "lng": round6(at.lng), "heading": 0, "speed": 0})
        } else {
            let speed = if moving {
                self.kmh * self.rng.range(0.9, 1.1)
            } else {
                0.0
            };
            json!({
                "lat": round6(at.lat),
                "lng": round6(at.lng),
                "heading": (self.mover.heading() * 10.0).round() / 10.0 % 360.0,
                "speed": (speed * 10.0).round() / 10.0,
            })
        };
        bump(&ctx.stats.locations_sent);
        match client
            .emit_with_ack("driver:location_update", update, ACK_TIMEOUT)
            .await
        {
            Ok(args) => {
                let reply = args.first().cloned().unwrap_or(Value::Null);
                if reply.get("ok").and_then(Value::as_bool) == Some(true) {
                    bump(&ctx.stats.locations_accepted);
                    if glitch {
                        tracing::warn!(
                            driver = self.id(),
                            "the relay accepted a latitude above 90"
                        );
                    }
                } else {
                    bump(&ctx.stats.locations_refused);
                    if !glitch && ctx.first_refusal() {
                        // A node that stalls for a moment (a busy machine)
                        // receives two updates close together and drops the
                        // second: harmless, counted in the status line.
                        tracing::warn!(driver = self.id(), reply = %reply, "a location update was refused; later ones are only counted");
                    }
                }
                true
            }
            Err(ClientError::Timeout(_)) => {
                tracing::debug!(driver = self.id(), "no ack for a location update");
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_drivers_mostly_accept_and_busy_ones_decline() {
        let mut rng = Rng::new(11);
        let (mut accept, mut decline, mut ignore) = (0, 0, 0);
        for _ in 0..2000 {
            match answer_offer(true, &mut rng) {
                OfferAnswer::Accept { after } => {
                    assert!(after >= Duration::from_secs(2) && after < Duration::from_secs(12));
                    accept += 1;
                }
                OfferAnswer::Decline { .. } => decline += 1,
                OfferAnswer::Ignore => ignore += 1,
            }
        }
        assert!((1500..1700).contains(&accept), "{accept}");
        assert!((220..380).contains(&decline), "{decline}");
        assert!((50..150).contains(&ignore), "{ignore}");
        for _ in 0..200 {
            assert!(!matches!(
                answer_offer(false, &mut rng),
                OfferAnswer::Accept { .. }
            ));
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_answers() {
        let answers = |seed| {
            let mut rng = Rng::derive(seed, "driver", 3);
            (0..20)
                .map(|_| answer_offer(true, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(answers(5), answers(5));
        assert_ne!(answers(5), answers(6));
    }

    #[test]
    fn a_job_is_read_from_the_offer() {
        let offer = json!({"event_id": "1-0", "order_id": "o1", "pickup": {"lat": 12.98, "lng": 77.6, "name": "x"},
                           "drop": {"lat": 12.95, "lng": 77.58}, "fare": 50, "timer": 3});
        let job = Job::from_offer(&offer).expect("job");
        assert_eq!(job.order_id, "o1");
        assert_eq!(job.drop, Point::new(12.95, 77.58));
        assert!(Job::from_offer(&json!({"order_id": "o1", "pickup": {}})).is_none());
    }
}
