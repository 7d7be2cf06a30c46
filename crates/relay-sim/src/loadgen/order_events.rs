//! Order events: statuses appended with XADD at a set rate; customers
//! measure the time from just before the XADD to the event's arrival.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use tokio::time::Instant;

use super::{Latencies, LoadgenError, Target, machine, node_rows};
use relay::auth::Role;

pub async fn run(
    target: &Target,
    customers: usize,
    rate: u32,
    duration: Duration,
) -> Result<String, LoadgenError> {
    let run = &target.run;
    let setup = (0..customers)
        .map(|i| ("order.created", json!({"order_id": format!("{run}-o{i}"), "customer_id": format!("{run}-c{i}"), "store_id": format!("{run}-s"), "items": []})))
        .collect();
    target.append_and_settle(setup).await?;
    let clients = target
        .connect_as(Role::Customer, customers, 0, |i| format!("{run}-c{i}"))
        .await?;

    let total = (f64::from(rate) * duration.as_secs_f64()) as usize;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for mut client in clients {
        let (stop, sent_at) = (stop.clone(), sent_at.clone());
        receivers.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            while !stop.load(Ordering::Relaxed) {
                let Ok(event) = client.next_event(Duration::from_millis(200)).await else {
                    continue;
                };
                let arrived = epoch.elapsed();
                let k = event.data()["status"]
                    .as_str()
                    .and_then(|s| s.strip_prefix('s'))
                    .and_then(|k| k.parse::<usize>().ok());
                if let Some(sent) = k
                    .and_then(|k| sent_at.get(k))
                    .map(|s| s.load(Ordering::Relaxed))
                {
                    latencies.record(arrived.saturating_sub(Duration::from_micros(sent)));
                }
            }
            latencies
        }));
    }

    let mut conn = target.connection().await?;
    let stream = format!("{}events", target.prefix);
    let procs_before = target.samples();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for (k, slot) in sent_at.iter().enumerate() {
        ticks.tick().await;
        let data =
            json!({"order_id": format!("{run}-o{}", k % customers), "status": format!("s{k}")});
        slot.store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("type")
            .arg("order.status")
            .arg("data")
            .arg(data.to_string())
            .query_async(&mut conn)
            .await?;
    }
    let elapsed = epoch.elapsed();
    let procs_after = target.samples();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Latencies::default();
    for receiver in receivers {
        if let Ok(l) = receiver.await {
            latencies.merge(l);
        }
    }
    let delivered = latencies.len();
    let (rows, _) = node_rows(target, &procs_before, &procs_after, elapsed);
    let [p50, p90, p99, max] = latencies.summary().unwrap_or([f64::NAN; 4]);
    Ok(format!(
        "### Order events\n\n\
         {total} `order.status` events appended with XADD at {rate}/s over {customers} orders, one connected customer each, \
         spread over {nodes} nodes. Machine: {machine}.\n\n\
         | figure | value |\n| --- | --- |\n\
         | appended | {sent_rate:.0} events/s |\n\
         | delivered | {delivered} of {total} |\n\
         | XADD -> client latency | p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms |\n\n\
         | process | CPU | RSS at end |\n| --- | --- | --- |\n{rows}",
        nodes = target.nodes.len(),
        machine = machine(),
        sent_rate = total as f64 / elapsed.as_secs_f64(),
    ))
}
