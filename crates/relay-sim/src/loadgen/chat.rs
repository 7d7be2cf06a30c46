//! Order chat: a customer and the driver of one order on different nodes
//! write to each other at a set total rate (the turn alternates), and each
//! measures the time from the other's `chat:send` to its own `chat:message`.
//! A message the other participant never receives is lost.
//!
//! The sender does not wait for the `chat:send` ack: a participant's one
//! connection also receives, and waiting would delay its receipts. A
//! refused message shows as lost, and the nodes' `relay_chat_messages_total`
//! outcomes say why.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use tokio::{sync::mpsc, time::Instant};

use super::{Latencies, LoadgenError, Target, machine, metric_sum, node_rows};
use relay::auth::Role;
use relay_client::Client;

/// Bound on the warm-up round: every participant hears from the other once.
const WARMUP_LIMIT: Duration = Duration::from_secs(30);
/// Time left after the last send for the last messages to arrive.
const DRAIN: Duration = Duration::from_secs(2);

/// Message `k` goes from the customer of pair `k % pairs` on even rounds,
/// from its driver on odd ones: both directions, both nodes.
fn sender(k: usize, pairs: usize) -> (usize, bool) {
    (k % pairs, (k / pairs).is_multiple_of(2))
}

/// What one participant's task sends and sees.
struct Participant {
    client: Client,
    order_id: String,
    role: &'static str,
    /// Message numbers to send, from the pacing loop.
    outbox: mpsc::UnboundedReceiver<usize>,
}

/// What one participant received.
#[derive(Default)]
struct Heard {
    latencies: Latencies,
    /// Messages of the other participant, counted once each.
    from_other: u64,
    repeats: u64,
    warmup: bool,
    /// This participant's role: its own messages come back to it too
    /// (CONTRACT §7), told apart by the sender's role.
    role: &'static str,
}

pub async fn run(
    target: &Target,
    pairs: usize,
    rate: u32,
    duration: Duration,
) -> Result<String, LoadgenError> {
    let run = &target.run;
    let pairs = pairs.max(1);
    let order = |i: usize| format!("{run}-co{i}");
    let mut setup = Vec::with_capacity(pairs * 2);
    for i in 0..pairs {
        setup.push(("order.created", json!({"order_id": order(i), "customer_id": format!("{run}-cc{i}"), "store_id": format!("{run}-s"), "items": []})));
        setup.push((
            "order.assigned",
            json!({"order_id": order(i), "driver_id": format!("{run}-cd{i}")}),
        ));
    }
    target.append_and_settle(setup).await?;
    let customers = target
        .connect_as(Role::Customer, pairs, 0, |i| format!("{run}-cc{i}"))
        .await?;
    let drivers = target
        .connect_as(Role::Driver, pairs, 1, |i| format!("{run}-cd{i}"))
        .await?;

    let total = (f64::from(rate) * duration.as_secs_f64()) as usize;
    // Send times in microseconds since `epoch`, by message number.
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let warmed = Arc::new(AtomicU64::new(0));
    let mut outboxes = Vec::with_capacity(pairs * 2);
    let mut tasks = Vec::with_capacity(pairs * 2);
    for (i, (customer, driver)) in customers.into_iter().zip(drivers).enumerate() {
        for (client, role) in [(customer, "customer"), (driver, "driver")] {
            let (tx, outbox) = mpsc::unbounded_channel();
            outboxes.push(tx);
            let me = Participant {
                client,
                order_id: order(i),
                role,
                outbox,
            };
            let (stop, sent_at, warmed) = (stop.clone(), sent_at.clone(), warmed.clone());
            tasks.push(tokio::spawn(me.live(epoch, sent_at, stop, warmed)));
        }
    }
    // Warm-up: one message each way per pair, not measured, so that every
    // room is joined and every connection is warm before the clock starts.
    for tx in &outboxes {
        let _ = tx.send(usize::MAX);
    }
    let deadline = Instant::now() + WARMUP_LIMIT;
    while warmed.load(Ordering::Relaxed) < (pairs * 2) as u64 {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            return Err(LoadgenError::Setup(format!(
                "warm-up: {} of {} participants heard the other within {WARMUP_LIMIT:?}",
                warmed.load(Ordering::Relaxed),
                pairs * 2
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let metrics_before = target.scrape().await;
    let procs_before = target.samples();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for (k, slot) in sent_at.iter().enumerate() {
        ticks.tick().await;
        let (pair, from_customer) = sender(k, pairs);
        slot.store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        let _ = outboxes[pair * 2 + usize::from(!from_customer)].send(k);
    }
    let elapsed = started.elapsed();
    let procs_after = target.samples();
    tokio::time::sleep(DRAIN).await;
    stop.store(true, Ordering::Relaxed);
    let metrics_after = target.scrape().await;
    let mut heard = Heard::default();
    for task in tasks {
        if let Ok(h) = task.await {
            heard.latencies.merge(h.latencies);
            heard.from_other += h.from_other;
            heard.repeats += h.repeats;
        }
    }
    let outcome = |o: &str| -> f64 {
        let label = format!("outcome=\"{o}\"");
        let sum = |texts: &[String]| -> f64 {
            texts
                .iter()
                .map(|t| metric_sum(t, "relay_chat_messages_total", &label))
                .sum()
        };
        sum(&metrics_after) - sum(&metrics_before)
    };
    let refused: f64 = [
        "not_allowed",
        "order_not_active",
        "invalid",
        "rate_limited",
        "unavailable",
    ]
    .iter()
    .map(|o| outcome(o))
    .sum();
    let lost = (total as u64).saturating_sub(heard.from_other);
    let (rows, _) = node_rows(target, &procs_before, &procs_after, elapsed);
    let [p50, p90, p99, max] = heard.latencies.summary().unwrap_or([f64::NAN; 4]);
    Ok(format!(
        "### Chat\n\n\
         {total} `chat:send` at {rate}/s over {pairs} orders; each order's customer and driver on \
         different nodes ({nodes} nodes), taking turns. Machine: {machine}.\n\n\
         | figure | value |\n| --- | --- |\n\
         | sent | {sent_rate:.0} messages/s |\n\
         | received by the other participant | {received} of {total} ({repeats} repeats) |\n\
         | lost | {lost} |\n\
         | nodes' chat outcomes | {accepted} sent, {refused} refused |\n\
         | sender `chat:send` -> other participant's `chat:message` | p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms |\n\n\
         | process | CPU | RSS at end |\n| --- | --- | --- |\n{rows}",
        nodes = target.nodes.len(),
        machine = machine(),
        sent_rate = total as f64 / elapsed.as_secs_f64(),
        received = heard.from_other,
        repeats = heard.repeats,
        accepted = outcome("sent"),
    ))
}

impl Participant {
    async fn live(
        mut self,
        epoch: Instant,
        sent_at: Arc<Vec<AtomicU64>>,
        stop: Arc<AtomicBool>,
        warmed: Arc<AtomicU64>,
    ) -> Heard {
        let mut heard = Heard {
            role: self.role,
            ..Heard::default()
        };
        let mut seen = vec![false; sent_at.len()];
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                Some(k) = self.outbox.recv() => {
                    let text = if k == usize::MAX { "w".to_owned() } else { format!("m{k}") };
                    let _ = self
                        .client
                        .emit("chat:send", json!({"order_id": self.order_id, "text": text}))
                        .await;
                }
                event = self.client.next_event(Duration::from_millis(200)) => {
                    let Ok(event) = event else { continue };
                    let arrived = epoch.elapsed();
                    if event.name != "chat:message" {
                        continue;
                    }
                    heard.on_message(event.data(), arrived, &sent_at, &mut seen, &warmed);
                }
            }
        }
        heard
    }
}

impl Heard {
    fn on_message(
        &mut self,
        data: &serde_json::Value,
        arrived: Duration,
        sent_at: &[AtomicU64],
        seen: &mut [bool],
        warmed: &AtomicU64,
    ) {
        let text = data["text"].as_str().unwrap_or_default();
        let Some(k) = text.strip_prefix('m') else {
            if text == "w" && !self.warmup && self.is_the_others(data) {
                self.warmup = true;
                warmed.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        let Ok(k) = k.parse::<usize>() else { return };
        if !self.is_the_others(data) {
            return;
        }
        match seen.get_mut(k) {
            Some(true) => self.repeats += 1,
            Some(slot) => {
                *slot = true;
                self.from_other += 1;
                let sent = Duration::from_micros(sent_at[k].load(Ordering::Relaxed));
                self.latencies.record(arrived.saturating_sub(sent));
            }
            None => {}
        }
    }

    fn is_the_others(&self, data: &serde_json::Value) -> bool {
        data["from"]["role"].as_str() != Some(self.role)
    }
}
