//! The operations side: an admin console that receives every alert, and a
//! support agent who opens a customer's order now and then
//! (`order:subscribe`), follows it for a while and closes it again.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    Ctx,
    rng::Rng,
    session::{Identity, Link, SessionEnd, Wake, wake},
    stats::bump,
};
use relay::auth::Role;
use relay_client::{Client, ClientError, Transport};

const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// City time between two orders a support agent looks into, on average.
const SUPPORT_TICKETS_EVERY: Duration = Duration::from_secs(4 * 60);

pub async fn admin(ctx: Arc<Ctx>) {
    let mut link = Link::new(Identity::new("a1", Role::Admin, Transport::WebSocket, 0));
    loop {
        let Ok(mut client) = link.connect(&ctx).await else {
            break;
        };
        let end = loop {
            match wake(&ctx, &mut client, Instant::now() + Duration::from_secs(60)).await {
                Wake::Stop => break SessionEnd::Stopped,
                Wake::Event(Ok(event)) => {
                    if link.first_time(&ctx, &event) && event.name == "admin:alert" {
                        bump(&ctx.stats.alerts_received);
                    }
                }
                Wake::Event(Err(ClientError::Timeout(_))) | Wake::Timer => {}
                Wake::Event(Err(_)) => break SessionEnd::Lost,
            }
        };
        match end {
            SessionEnd::Stopped => {
                client.disconnect().await;
                break;
            }
            SessionEnd::Lost => link.lost(&ctx, &client),
        }
    }
}

/// A support agent in a browser (long-polling, then upgraded).
pub async fn support(ctx: Arc<Ctx>) {
    let mut link = Link::new(Identity::new(
        "sup1",
        Role::Support,
        Transport::PollingThenUpgrade,
        1,
    ));
    let mut agent = Agent {
        rng: Rng::derive(ctx.seed, "support", 0),
        watching: None,
        next_ticket: Instant::now(),
    };
    agent.next_ticket =
        Instant::now() + ctx.clock.real(agent.rng.exponential(SUPPORT_TICKETS_EVERY));
    loop {
        let Ok(mut client) = link.connect(&ctx).await else {
            break;
        };
        // A new connection is in no order room.
        agent.watching = None;
        match agent.session(&ctx, &mut link, &mut client).await {
            SessionEnd::Stopped => {
                client.disconnect().await;
                break;
            }
            SessionEnd::Lost => link.lost(&ctx, &client),
        }
    }
}

struct Agent {
    rng: Rng,
    watching: Option<(String, Instant)>,
    next_ticket: Instant,
}

impl Agent {
    async fn session(&mut self, ctx: &Ctx, link: &mut Link, client: &mut Client) -> SessionEnd {
        loop {
            let deadline = self
                .watching
                .as_ref()
                .map_or(self.next_ticket, |(_, until)| *until);
            match wake(ctx, client, deadline).await {
                Wake::Stop => return SessionEnd::Stopped,
                Wake::Event(Ok(event)) => {
                    link.first_time(ctx, &event);
                }
                Wake::Event(Err(ClientError::Timeout(_))) => {}
                Wake::Event(Err(_)) => return SessionEnd::Lost,
                Wake::Timer => {
                    if !self.next_step(ctx, client).await {
                        return SessionEnd::Lost;
                    }
                }
            }
        }
    }

    /// Closes the order being watched, or opens the next one.
    async fn next_step(&mut self, ctx: &Ctx, client: &Client) -> bool {
        if let Some((order_id, _)) = self.watching.take() {
            return request(client, "order:unsubscribe", &order_id)
                .await
                .is_some();
        }
        self.next_ticket =
            Instant::now() + ctx.clock.real(self.rng.exponential(SUPPORT_TICKETS_EVERY));
        let Some(order_id) = ctx.desk.random_open(&mut self.rng) else {
            return true;
        };
        match request(client, "order:subscribe", &order_id).await {
            None => false,
            Some(reply) => {
                if reply.get("ok").and_then(Value::as_bool) == Some(true) {
                    let watch = self
                        .rng
                        .duration(Duration::from_secs(60), Duration::from_secs(180));
                    self.watching = Some((order_id, Instant::now() + ctx.clock.real(watch)));
                } else {
                    // The order may have ended meanwhile; anything else is news.
                    tracing::debug!(%order_id, %reply, "support could not open the order");
                }
                true
            }
        }
    }
}

/// Sends `event` `{order_id}` with an ack; `None` when the connection is gone.
async fn request(client: &Client, event: &str, order_id: &str) -> Option<Value> {
    match client
        .emit_with_ack(event, json!({ "order_id": order_id }), ACK_TIMEOUT)
        .await
    {
        Ok(args) => Some(args.into_iter().next().unwrap_or(Value::Null)),
        Err(ClientError::Timeout(_)) => Some(Value::Null),
        Err(_) => None,
    }
}
