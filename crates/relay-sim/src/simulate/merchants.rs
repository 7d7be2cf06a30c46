//! Merchants: a tablet at each store's counter with the merchant app (a
//! third of them on long-polling: old tablets, flaky Wi-Fi). A new order
//! rings; staff accept it after a moment, sometimes decline (busy, an item
//! ran out), and now and then nobody looks and the offer times out.
//!
//! Tablets also go away now and then (`--store-breaks-every`): a Wi-Fi
//! blip, which the relay's presence grace hides, or a break of a few
//! graces, during which the store is offline for the backend.

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    Ctx,
    clock::real_sleep,
    rng::Rng,
    session::{Identity, Link, Replies, SessionEnd, Wake, wake},
    stats::bump,
};
use relay::auth::Role;
use relay_client::{Client, ClientError, Event, Transport};

/// How the counter answers a new order.
#[derive(Debug, Clone, PartialEq)]
pub enum MerchantAnswer {
    Accept {
        after: Duration,
    },
    Decline {
        after: Duration,
        reason: &'static str,
    },
    Ignore,
}

/// A calm kitchen takes nearly everything; a slammed one (see
/// `backend::happenings`) declines more and misses more.
pub fn answer_order(rush: bool, rng: &mut Rng) -> MerchantAnswer {
    let (decline, ignore) = if rush { (0.15, 0.07) } else { (0.05, 0.03) };
    let after = Duration::from_secs_f64(rng.range(4.0, 40.0));
    let u = rng.unit();
    if u < ignore {
        MerchantAnswer::Ignore
    } else if u < ignore + decline {
        let reason = *rng.pick(&["busy", "busy", "item unavailable", "closing soon"]);
        MerchantAnswer::Decline { after, reason }
    } else {
        MerchantAnswer::Accept { after }
    }
}

pub async fn run(ctx: Arc<Ctx>, index: usize) {
    let store = &ctx.city.stores[index];
    let transport = if index % 3 == 2 {
        Transport::Polling
    } else {
        Transport::WebSocket
    };
    let mut who = Identity::new(store.merchant_id.clone(), Role::Merchant, transport, index);
    who.store_ids = vec![store.id.clone()];
    let mut counter = Counter {
        index,
        link: Link::new(who),
        rng: Rng::derive(ctx.seed, "merchant", index as u64),
        answers: HashMap::new(),
        replies: Replies::default(),
        next_absence: None,
    };
    loop {
        let Ok(mut client) = counter.link.connect(&ctx).await else {
            break;
        };
        counter.replies.clear();
        if !ctx.store_breaks_every.is_zero() {
            let every = counter.rng.jitter(ctx.store_breaks_every, 0.5);
            counter.next_absence = Some(Instant::now() + every);
        }
        match counter.session(&ctx, &mut client).await {
            Ended::Session(SessionEnd::Stopped) => {
                client.disconnect().await;
                break;
            }
            Ended::Session(SessionEnd::Lost) => counter.link.lost(&ctx, &client),
            Ended::Away => {
                client.disconnect().await;
                let away = counter.absence(&ctx);
                if real_sleep(away, &ctx.stop).await.is_err() {
                    break;
                }
                counter.link.went_away();
            }
        }
    }
}

/// How a tablet's session ended.
enum Ended {
    Session(SessionEnd),
    /// The tablet goes away for a while (see [`Counter::absence`]).
    Away,
}

struct Counter {
    index: usize,
    link: Link,
    rng: Rng,
    /// By `event_id`: a redelivered order gets the same answer.
    answers: HashMap<String, (Option<Value>, Instant)>,
    replies: Replies,
    /// When the tablet next goes away; None: never.
    next_absence: Option<Instant>,
}

impl Counter {
    /// How long the tablet stays away: mostly a blip well inside the
    /// relay's presence grace (no change), sometimes a real break.
    fn absence(&mut self, ctx: &Ctx) -> Duration {
        if self.rng.unit() < 0.6 {
            bump(&ctx.stats.store_blips);
            ctx.presence_grace.mul_f64(self.rng.range(0.1, 0.33))
        } else {
            bump(&ctx.stats.store_breaks);
            ctx.presence_grace.mul_f64(self.rng.range(1.5, 3.0))
        }
    }

    async fn session(&mut self, ctx: &Ctx, client: &mut Client) -> Ended {
        loop {
            let reply_due = self
                .replies
                .next_due()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            let deadline = self.next_absence.map_or(reply_due, |a| a.min(reply_due));
            if self.next_absence.is_some_and(|a| a <= Instant::now()) {
                return Ended::Away;
            }
            match wake(ctx, client, deadline).await {
                Wake::Stop => return Ended::Session(SessionEnd::Stopped),
                Wake::Event(Ok(event)) if event.name == "merchant:new_order" => {
                    super::stats::bump(&ctx.stats.events_received);
                    self.on_order(ctx, event);
                }
                Wake::Event(Ok(event)) => {
                    self.link.first_time(ctx, &event);
                }
                Wake::Event(Err(ClientError::Timeout(_))) => {}
                Wake::Event(Err(_)) => return Ended::Session(SessionEnd::Lost),
                Wake::Timer => {
                    if !self.replies.send_due(client).await {
                        return Ended::Session(SessionEnd::Lost);
                    }
                    let now = Instant::now();
                    self.answers
                        .retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(600));
                }
            }
        }
    }

    fn on_order(&mut self, ctx: &Ctx, event: Event) {
        if !event.needs_ack() {
            return;
        }
        let data = event.data();
        let event_id = data
            .get("event_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let timer = Duration::from_secs(data.get("timer").and_then(Value::as_u64).unwrap_or(60));
        let now = Instant::now();
        if let Some((answer, _)) = self.answers.get(&event_id) {
            if let Some(answer) = answer.clone() {
                self.replies.schedule(now, event, answer);
            }
            return;
        }
        let answer = match answer_order(ctx.in_rush(self.index), &mut self.rng) {
            MerchantAnswer::Accept { after } => Some((after, json!({"accepted": true}))),
            MerchantAnswer::Decline { after, reason } => {
                Some((after, json!({"accepted": false, "reason": reason})))
            }
            MerchantAnswer::Ignore => None,
        };
        self.answers
            .insert(event_id, (answer.as_ref().map(|(_, a)| a.clone()), now));
        if let Some((after, answer)) = answer {
            // Staff who answer at all answer in time.
            let delay = ctx.clock.real(after).min(timer.mul_f64(0.7));
            self.replies.schedule(now + delay, event, answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(rush: bool) -> (u32, u32, u32) {
        let mut rng = Rng::new(if rush { 1 } else { 2 });
        let (mut accept, mut decline, mut ignore) = (0, 0, 0);
        for _ in 0..4000 {
            match answer_order(rush, &mut rng) {
                MerchantAnswer::Accept { .. } => accept += 1,
                MerchantAnswer::Decline { reason, .. } => {
                    assert!(!reason.is_empty());
                    decline += 1;
                }
                MerchantAnswer::Ignore => ignore += 1,
            }
        }
        (accept, decline, ignore)
    }

    #[test]
    fn most_orders_are_accepted_and_a_rush_costs_some() {
        let (calm_accept, calm_decline, calm_ignore) = shares(false);
        let (rush_accept, rush_decline, rush_ignore) = shares(true);
        assert!(calm_accept > 3600, "{calm_accept}");
        assert!(calm_decline > 100 && calm_ignore > 50);
        assert!(rush_accept < calm_accept - 300);
        assert!(rush_decline > calm_decline * 2 && rush_ignore > calm_ignore);
    }
}
