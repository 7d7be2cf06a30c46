//! The platform's order backend: customers' orders arrive at random, each
//! gets a lifecycle task; now and then a kitchen gets slammed and operations
//! hear about it. At shutdown, orders still open are cancelled so that the
//! relay does not keep them.

use std::{sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use serde_json::json;

use super::{
    Ctx,
    clock::{Stopped, real_sleep},
    order::{self, OrderPlan},
    rng::Rng,
    stats::bump,
};

/// City time between two happenings in town (a kitchen rush starting or
/// ending, rain), on average.
const HAPPENINGS_EVERY: Duration = Duration::from_secs(8 * 60);

/// Places orders at `--orders-per-minute` (wall-clock), until the run stops.
pub async fn place_orders(ctx: Arc<Ctx>, orders_per_minute: f64) {
    if orders_per_minute <= 0.0 {
        return;
    }
    let mean_gap = Duration::from_secs_f64(60.0 / orders_per_minute);
    let mut rng = Rng::derive(ctx.seed, "orders", 0);
    for n in 1u64.. {
        // The first customer was waiting for the app to open.
        let gap = if n == 1 {
            Duration::ZERO
        } else {
            rng.exponential(mean_gap)
        };
        if real_sleep(gap, &ctx.stop).await.is_err() {
            return;
        }
        let plan = OrderPlan::draw(&ctx, n, &mut rng);
        let inbox = ctx.desk.open(&plan.order_id);
        let order_rng = Rng::derive(ctx.seed, "order", n);
        ctx.tasks
            .spawn(order::run(ctx.clone(), plan, inbox, order_rng));
    }
}

/// Kitchens that get slammed and recover, and the weather: admin alerts
/// that are not about one order.
pub async fn happenings(ctx: Arc<Ctx>) {
    let mut rng = Rng::derive(ctx.seed, "happenings", 0);
    while happen(&ctx, &mut rng).await.is_ok() {}
}

async fn happen(ctx: &Ctx, rng: &mut Rng) -> Result<(), Stopped> {
    ctx.clock
        .sleep(rng.exponential(HAPPENINGS_EVERY), &ctx.stop)
        .await?;
    let alert = if rng.chance(0.85) {
        let i = rng.below(ctx.city.stores.len());
        let store = &ctx.city.stores[i];
        if ctx.set_rush(i, !ctx.in_rush(i)) {
            json!({"level": "warning", "kind": "store_slow", "store_id": store.id,
                   "message": format!("{} is running slow: prep times about twice the usual", store.name)})
        } else {
            json!({"level": "info", "kind": "store_recovered", "store_id": store.id,
                   "message": format!("{} is back to normal prep times", store.name)})
        }
    } else {
        json!({"level": "info", "kind": "weather",
               "message": "Rain over the city: expect slower rides for a while"})
    };
    match ctx.api.publish("admin.alert", alert).await {
        Ok(_) => bump(&ctx.stats.events_published),
        Err(e) => {
            tracing::warn!(error = %e, "cannot post an admin alert");
            bump(&ctx.stats.errors);
        }
    }
    Ok(())
}

/// Cancels the orders that are still open (the run stopped under them), a
/// few at a time, within `limit`.
pub async fn cancel_open_orders(ctx: &Ctx, limit: Duration) -> usize {
    let open = ctx.desk.open_orders();
    if open.is_empty() {
        return 0;
    }
    let cancel = stream::iter(open)
        .map(|order_id| async move {
            let data = json!({"order_id": order_id, "status": "cancelled"});
            let cancelled = ctx.api.publish("order.status", data).await.is_ok();
            ctx.desk.close(&order_id);
            if cancelled {
                bump(&ctx.stats.events_published);
            }
            cancelled
        })
        .buffer_unordered(16)
        .filter(|cancelled| std::future::ready(*cancelled))
        .count();
    tokio::time::timeout(limit, cancel).await.unwrap_or(0)
}
