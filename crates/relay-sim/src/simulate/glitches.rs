//! Deliberate bad input at a low rate, so that the relay's rejection
//! metrics and alerts have something to show. Each is something that
//! happens in production:
//!
//! - a phone's GPS reports a garbage fix (latitude above 90), through one of
//!   the simulated drivers' own connections: every tick;
//! - and in turn, one of:
//!   - a customer app build that sends `driver:location_update` (not a driver);
//!   - a customer app that opens someone else's order (`order:subscribe`);
//!   - a device with a token signed by a rotated-out secret (`invalid token`);
//!   - a backend release that posts `order.status` without a status (400).

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use super::{Ctx, clock::real_sleep, rng::Rng, stats::bump};
use relay::{
    auth::{Role, mint_hs256},
    config::Secret,
};
use relay_client::{Client, ClientError, ConnectOptions, Transport};

const ACK_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(ctx: Arc<Ctx>, every: Duration) {
    if every.is_zero() {
        return;
    }
    let mut rng = Rng::derive(ctx.seed, "glitches", 0);
    for turn in 0u64.. {
        if real_sleep(rng.jitter(every, 0.2), &ctx.stop).await.is_err() {
            return;
        }
        ctx.request_gps_glitch(rng.below(ctx.city.drivers.len()));
        bump(&ctx.stats.glitches);
        let refused = match turn % 4 {
            0 => customer_sends_a_location(&ctx).await,
            1 => customer_opens_another_order(&ctx, &mut rng).await,
            2 => stale_token(&ctx).await,
            _ => backend_posts_a_bad_event(&ctx).await,
        };
        bump(&ctx.stats.glitches);
        match refused {
            Ok(true) => {}
            Ok(false) => tracing::warn!(turn, "the relay took a deliberately bad input"),
            Err(e) => tracing::debug!(turn, error = %e, "glitch not delivered"),
        }
    }
}

/// The customer on a beta build of the app.
async fn beta_app(ctx: &Ctx) -> Result<Client, ClientError> {
    let options = ConnectOptions::new(ctx.urls[0].clone())
        .transport(Transport::WebSocket)
        .auth(json!({ "token": ctx.token("c-beta", Role::Customer, &[]) }))
        .timeout(Duration::from_secs(5));
    Client::connect(options).await
}

fn refused(reply: &[Value]) -> bool {
    reply
        .first()
        .and_then(|r| r.get("ok"))
        .and_then(Value::as_bool)
        == Some(false)
}

async fn customer_sends_a_location(ctx: &Ctx) -> Result<bool, ClientError> {
    let client = beta_app(ctx).await?;
    let reply = client
        .emit_with_ack(
            "driver:location_update",
            json!({"lat": 12.97, "lng": 77.59}),
            ACK_TIMEOUT,
        )
        .await;
    client.disconnect().await;
    Ok(refused(&reply?))
}

async fn customer_opens_another_order(ctx: &Ctx, rng: &mut Rng) -> Result<bool, ClientError> {
    let order_id = ctx
        .desk
        .random_open(rng)
        .unwrap_or_else(|| "o-nonexistent".to_owned());
    let client = beta_app(ctx).await?;
    let reply = client
        .emit_with_ack(
            "order:subscribe",
            json!({ "order_id": order_id }),
            ACK_TIMEOUT,
        )
        .await;
    client.disconnect().await;
    Ok(refused(&reply?))
}

async fn stale_token(ctx: &Ctx) -> Result<bool, ClientError> {
    let token = mint_hs256(
        &Secret::new("a-secret-rotated-out-last-month"),
        "c1",
        Role::Customer,
        &[],
        Duration::from_secs(3600),
        None,
        None,
    )
    .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let options = ConnectOptions::new(ctx.urls[0].clone())
        .transport(Transport::WebSocket)
        .auth(json!({ "token": token }))
        .timeout(Duration::from_secs(5));
    match Client::connect(options).await {
        Err(ClientError::Rejected { .. }) => Ok(true),
        Err(e) => Err(e),
        Ok(client) => {
            client.disconnect().await;
            Ok(false)
        }
    }
}

async fn backend_posts_a_bad_event(ctx: &Ctx) -> Result<bool, ClientError> {
    let body = json!({"type": "order.status", "data": {"order_id": "o-unknown-status"}});
    match ctx.api.publish_raw(body).await {
        Ok(status) => Ok(status == 400),
        Err(e) => Err(ClientError::Protocol(e.to_string())),
    }
}
