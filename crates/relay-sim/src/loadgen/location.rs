//! Drivers and customers in pairs, always on different nodes: each driver
//! sends its locations at its share of the total rate, stamping the send
//! time (microseconds since the run began) in `speed`; its customer
//! measures the delay when `order:driver_location` arrives.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use tokio::time::Instant;

use super::{Latencies, LoadgenError, Target, machine, metric_sum, node_rows};
use relay::auth::Role;

pub async fn run(
    target: &Target,
    drivers: usize,
    rate: u32,
    duration: Duration,
    warmup: Duration,
) -> Result<String, LoadgenError> {
    Ok(measure(target, "", drivers, rate, duration, warmup)
        .await?
        .report)
}

/// One run's figures, and its report.
pub struct Figures {
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
    /// Delivered / sent, in per cent.
    pub ratio: f64,
    pub p99_ms: f64,
    pub cpu_us_per_update: f64,
    pub report: String,
}

/// Runs the scenario once; `tag` keeps the ids of several runs against the
/// same nodes apart.
pub async fn measure(
    target: &Target,
    tag: &str,
    drivers: usize,
    rate: u32,
    duration: Duration,
    warmup: Duration,
) -> Result<Figures, LoadgenError> {
    let run = &format!("{}{tag}", target.run);
    let mut setup = Vec::with_capacity(drivers * 2);
    for i in 0..drivers {
        let (order, customer, driver) = (
            format!("{run}-o{i}"),
            format!("{run}-c{i}"),
            format!("{run}-d{i}"),
        );
        setup.push(("order.created", json!({"order_id": order, "customer_id": customer, "store_id": format!("{run}-s"), "items": []})));
        setup.push((
            "order.assigned",
            json!({"order_id": order, "driver_id": driver}),
        ));
    }
    target.append_and_settle(setup).await?;

    let customers = target
        .connect_as(Role::Customer, drivers, 1, |i| format!("{run}-c{i}"))
        .await?;
    let driver_clients = target
        .connect_as(Role::Driver, drivers, 0, |i| format!("{run}-d{i}"))
        .await?;

    let epoch = Instant::now();
    let window_start = warmup;
    let window_end = warmup + duration;
    let stop = Arc::new(AtomicBool::new(false));
    let sent_in_window = Arc::new(AtomicU64::new(0));
    let mut receivers = Vec::new();
    for mut customer in customers {
        let stop = stop.clone();
        receivers.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            while !stop.load(Ordering::Relaxed) {
                let Ok(event) = customer.next_event(Duration::from_millis(200)).await else {
                    continue;
                };
                if event.name != "order:driver_location" {
                    continue;
                }
                let Some(sent_us) = event.data()["speed"].as_f64() else {
                    continue;
                };
                let sent = Duration::from_micros(sent_us as u64);
                if sent >= window_start && sent < window_end {
                    latencies.record(epoch.elapsed().saturating_sub(sent));
                }
            }
            latencies
        }));
    }
    let period = Duration::from_secs_f64(drivers as f64 / f64::from(rate.max(1)));
    let mut senders = Vec::new();
    for (i, driver) in driver_clients.into_iter().enumerate() {
        let (stop, sent_in_window) = (stop.clone(), sent_in_window.clone());
        // Spread the drivers' ticks evenly over one period.
        let offset = period.mul_f64(i as f64 / drivers as f64);
        senders.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(epoch + offset, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                let now = epoch.elapsed();
                if now >= window_end {
                    break;
                }
                let update = json!({"lat": 12.9716, "lng": 77.5946, "heading": 90, "speed": now.as_micros() as f64});
                if driver.emit("driver:location_update", update).await.is_ok() && now >= window_start {
                    sent_in_window.fetch_add(1, Ordering::Relaxed);
                }
            }
            driver
        }));
    }

    tokio::time::sleep_until(epoch + window_start).await;
    let (metrics_before, procs_before) = (target.scrape().await, target.samples());
    let redis_before = target.redis_bytes_sent().await;
    tokio::time::sleep_until(epoch + window_end).await;
    let (metrics_after, procs_after) = (target.scrape().await, target.samples());
    let redis_after = target.redis_bytes_sent().await;
    let mut drivers_back = Vec::new();
    for sender in senders {
        if let Ok(driver) = sender.await {
            drivers_back.push(driver);
        }
    }
    // Deliveries still in flight get a moment to land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Latencies::default();
    for receiver in receivers {
        if let Ok(l) = receiver.await {
            latencies.merge(l);
        }
    }
    drop(drivers_back);

    let secs = duration.as_secs_f64();
    let delta = |name: &str, labels: &str| -> f64 {
        metrics_after
            .iter()
            .map(|t| metric_sum(t, name, labels))
            .sum::<f64>()
            - metrics_before
                .iter()
                .map(|t| metric_sum(t, name, labels))
                .sum::<f64>()
    };
    let accepted = delta("relay_location_updates_total", "outcome=\"accepted\"");
    let rejected = delta("relay_location_updates_total", "outcome=\"rejected\"");
    let sent = sent_in_window.load(Ordering::Relaxed) as f64;
    let delivered = latencies.len() as f64;
    let (rows, cpu) = node_rows(target, &procs_before, &procs_after, duration);
    let cpu_us_per_update = if accepted > 0.0 {
        cpu.as_secs_f64() * 1e6 / accepted
    } else {
        0.0
    };
    let [p50, p90, p99, max] = latencies.summary().unwrap_or([f64::NAN; 4]);
    // Everything Redis sent in the window (replies to the location writes
    // included), per update the relay accepted.
    let redis_bytes = match (redis_before, redis_after) {
        (Some(before), Some(after)) if accepted > 0.0 => format!(
            "| Redis bytes sent per update | {:.0} (INFO stats total_net_output_bytes less total_net_repl_output_bytes, all Redis nodes) |\n",
            after.saturating_sub(before) as f64 / accepted
        ),
        _ => String::new(),
    };
    let ratio = if sent > 0.0 {
        delivered * 100.0 / sent
    } else {
        0.0
    };
    let report = format!(
        "### Location fan-out\n\n\
         {drivers} drivers and {drivers} customers over {nodes} nodes{others}, every customer on another node than its driver; \
         target {rate} updates/s for {secs:.0} s after {warm:.0} s of warm-up. Machine: {machine}.\n\n\
         | figure | value |\n| --- | --- |\n\
         | sent | {sent_rate:.0} updates/s |\n\
         | accepted by the relay | {acc_rate:.0} updates/s ({rejected:.0} rejected) |\n\
         | delivered to customers | {del_rate:.0} updates/s |\n\
         | delivery ratio | {ratio:.2} % |\n\
         | driver -> customer latency | p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms |\n\
         | relay CPU per update | {cpu_us_per_update:.1} µs (all nodes together) |\n\
         {redis_bytes}\n\
         | process | CPU | RSS at end |\n| --- | --- | --- |\n{rows}",
        nodes = target.nodes.len(),
        others = match target.node_procs().len().saturating_sub(target.nodes.len()) {
            0 => String::new(),
            n => format!(" ({n} more nodes without clients in the cluster)"),
        },
        warm = warmup.as_secs_f64(),
        machine = machine(),
        sent_rate = sent / secs,
        acc_rate = accepted / secs,
        del_rate = delivered / secs,
    );
    Ok(Figures {
        sent_per_s: sent / secs,
        delivered_per_s: delivered / secs,
        ratio,
        p99_ms: p99,
        cpu_us_per_update,
        report,
    })
}
