//! Customers: the app open on the order screen, listening to status
//! updates and the rider's position. A quarter are on long-polling (some of
//! them upgrading to WebSocket, as browsers do). Now and then a customer
//! puts the app away and opens it again later, coming back with
//! `last_event_id` so that the relay replays what they missed. When a
//! driver takes their order, some write to the driver (see `chat`).

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use serde_json::Value;

use super::{
    Ctx,
    chat::{self, Chatter},
    clock::real_sleep,
    rng::Rng,
    session::{Identity, Link, Wake, wake},
    stats::bump,
};
use relay::auth::Role;
use relay_client::{Client, ClientError, Transport};

/// Wall-clock time a customer keeps the app open, on average.
const APP_OPEN: Duration = Duration::from_secs(4 * 60);

/// The transport of customer `index`: 6 of 8 WebSocket, 1 long-polling,
/// 1 long-polling upgraded to WebSocket.
pub fn transport(index: usize) -> Transport {
    match index % 8 {
        3 => Transport::Polling,
        7 => Transport::PollingThenUpgrade,
        _ => Transport::WebSocket,
    }
}

enum Left {
    Stopped,
    Lost,
    /// The app went to the background.
    Away,
}

pub async fn run(ctx: Arc<Ctx>, index: usize) {
    let customer = &ctx.city.customers[index];
    let who = Identity::new(customer.id.clone(), Role::Customer, transport(index), index);
    let mut link = Link::new(who);
    let mut rng = Rng::derive(ctx.seed, "customer", index as u64);
    let mut chatter = Chatter::default();
    loop {
        let Ok(mut client) = link.connect(&ctx).await else {
            break;
        };
        let until = Instant::now() + rng.exponential(APP_OPEN);
        let mut me = Me {
            link: &mut link,
            rng: &mut rng,
            chatter: &mut chatter,
        };
        match me.session(&ctx, &mut client, until).await {
            Left::Stopped => {
                client.disconnect().await;
                break;
            }
            Left::Lost => link.lost(&ctx, &client),
            Left::Away => {
                client.disconnect().await;
                link.went_away();
                let away = rng.duration(Duration::from_secs(5), Duration::from_secs(60));
                if real_sleep(away, &ctx.stop).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// A customer during one session.
struct Me<'a> {
    link: &'a mut Link,
    rng: &'a mut Rng,
    chatter: &'a mut Chatter,
}

impl Me<'_> {
    async fn session(&mut self, ctx: &Ctx, client: &mut Client, until: Instant) -> Left {
        loop {
            let deadline = self.chatter.next_due().map_or(until, |due| due.min(until));
            match wake(ctx, client, deadline).await {
                Wake::Stop => return Left::Stopped,
                Wake::Timer if Instant::now() >= until => return Left::Away,
                Wake::Timer => {
                    if !self.chatter.send_due(ctx, client).await {
                        return Left::Lost;
                    }
                }
                Wake::Event(Ok(event)) => {
                    if self.link.first_time(ctx, &event) {
                        self.on_event(ctx, &event.name, event.data());
                    }
                }
                Wake::Event(Err(ClientError::Timeout(_))) => {}
                Wake::Event(Err(_)) => return Left::Lost,
            }
        }
    }

    fn on_event(&mut self, ctx: &Ctx, name: &str, data: &Value) {
        match name {
            "order:driver_location" => bump(&ctx.stats.driver_locations_received),
            "order:status_update" => {
                let (Some(order), Some(status)) =
                    (data["order_id"].as_str(), data["status"].as_str())
                else {
                    return;
                };
                match status {
                    "driver_assigned" => {
                        if let Some(line) = Chatter::customer_line(self.rng) {
                            let after = self
                                .rng
                                .duration(Duration::from_secs(30), Duration::from_secs(120));
                            self.chatter
                                .write(order, line, ctx.clock.real(after), self.rng);
                        }
                    }
                    "delivered" | "cancelled" | "rejected" => self.chatter.forget(order),
                    _ => {}
                }
            }
            "chat:message" | "chat:typing" => {
                chat::heard(ctx, &self.link.who.sub, name, data);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_of_customers_start_on_long_polling() {
        let polling = (0..80)
            .filter(|i| transport(*i) != Transport::WebSocket)
            .count();
        assert_eq!(polling, 20);
    }
}
