//! The reconnect storm: the first node, holding `clients` customers in
//! their order rooms, is SIGKILLed while order events stream in with XADD;
//! its clients come back to the second node with their `last_event_id`,
//! the way socket.io-client does (its randomised back-off, and the pause a
//! shedding node names in `Retry-After`). Measures how long until they have
//! all had `sync:done { recovered: true }`, what was lost or repeated, what
//! the storm costs the survivor and Redis, and how the survivor's own
//! customers fare meanwhile.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{Latencies, LoadgenError, Target, machine, metric_sum};
use relay::{auth::Role, metrics::process::ProcSample};
use relay_client::{Backoff, Client, ClientError, ConnectOptions, Transport};

/// Events appended after the last client recovered, so that the run also
/// shows delivery back to normal on the survivor.
const TAIL: Duration = Duration::from_secs(3);
/// Bound on delivery of the last events once the stream is handled.
const DRAIN: Duration = Duration::from_secs(15);
/// Bound on the wait, after the warm-up, for every client's first event.
const PRIME_LIMIT: Duration = Duration::from_secs(60);
/// Bound on one reconnect attempt (socket.io-client's `timeout` is 20 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

pub struct StormArgs {
    pub clients: usize,
    pub survivor_clients: usize,
    pub rate: u32,
    pub warmup: Duration,
    pub limit: Duration,
}

/// Shared by the client tasks and the run.
struct Shared {
    epoch: Instant,
    /// Per event `k`: microseconds from `epoch` to just before its XADD.
    sent_at: Vec<AtomicU64>,
    /// Distinct events received, all clients together.
    delivered: AtomicUsize,
    /// Clients that have received at least one event: only those have a
    /// `last_event_id` to come back with.
    primed: AtomicUsize,
    /// Handshakes refused with 503, and of those, without a Retry-After.
    shed: AtomicUsize,
    shed_blind: AtomicUsize,
    /// Reconnect attempts that timed out, and that failed otherwise.
    timed_out: AtomicUsize,
    failed: AtomicUsize,
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Events `k` in arrival order, repeats kept.
    events: Vec<u32>,
    /// For the survivor's own clients: (microseconds from `epoch` to the
    /// XADD, latency).
    latencies: Vec<(u64, Duration)>,
}

/// A victim's `sync:done`: when (from `epoch`) and what it said.
struct Recovery {
    at: Duration,
    recovered: bool,
}

pub async fn run(target: &Target, args: StormArgs) -> Result<String, LoadgenError> {
    let [victim_url, survivor_url] = &target.nodes[..] else {
        return Err(LoadgenError::Setup(
            "storm needs exactly two --nodes: the one killed, then the survivor".into(),
        ));
    };
    let Some(&(_, victim_pid)) = target.procs.first().filter(|_| target.procs.len() >= 3) else {
        return Err(LoadgenError::Setup(
            "storm needs --node-pids (it kills the first node)".into(),
        ));
    };
    let survivor_pid = target.procs.get(1).map(|(_, pid)| *pid);
    let redis_pid = target
        .procs
        .iter()
        .find(|(label, _)| label == "redis-server")
        .map(|(_, pid)| *pid);
    let run = &target.run;
    let orders = args.clients + args.survivor_clients;
    // The survivor's own customers are spread over the orders (every 11th
    // of 11,000), so that the round-robin of events reaches them all along.
    let own = args.survivor_clients;
    let is_victim = |i: usize| (i * own) % orders >= own;
    let setup = (0..orders)
        .map(|i| ("order.created", json!({"order_id": format!("{run}-o{i}"), "customer_id": format!("{run}-c{i}"), "store_id": format!("{run}-s"), "items": []})))
        .collect();
    target.append_and_settle(setup).await?;
    let clients = target
        .connect_all(
            (0..orders)
                .map(|i| {
                    let node = if is_victim(i) {
                        victim_url
                    } else {
                        survivor_url
                    };
                    (
                        node.clone(),
                        target.token(&format!("{run}-c{i}"), Role::Customer),
                    )
                })
                .collect(),
        )
        .await?;

    let capacity = (f64::from(args.rate)
        * (args.warmup + PRIME_LIMIT + args.limit + TAIL).as_secs_f64())
        as usize
        + 1;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        sent_at: (0..capacity).map(|_| AtomicU64::new(u64::MAX)).collect(),
        delivered: AtomicUsize::new(0),
        primed: AtomicUsize::new(0),
        shed: AtomicUsize::new(0),
        shed_blind: AtomicUsize::new(0),
        timed_out: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });
    let stop = CancellationToken::new();
    let (recoveries_tx, mut recoveries) = mpsc::unbounded_channel();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let victim = is_victim(i);
            tokio::spawn(customer(CustomerRun {
                index: i,
                client,
                victim,
                fallback: survivor_url.clone(),
                token: target.token(&format!("{run}-c{i}"), Role::Customer),
                shared: shared.clone(),
                recoveries: recoveries_tx.clone(),
                stop: stop.clone(),
            }))
        })
        .collect();
    drop(recoveries_tx);

    let stop_producer = CancellationToken::new();
    let producer = tokio::spawn(produce(
        target.connection().await?,
        format!("{}events", target.prefix),
        run.clone(),
        orders,
        args.rate,
        shared.clone(),
        stop_producer.clone(),
    ));
    // Steady state before the kill (a benchmark: the pause is the
    // measurement), and until every client has an event id to resume from:
    // one without would reconnect as a new client, without sync:done.
    tokio::time::sleep(args.warmup).await;
    let primed_by = Instant::now() + PRIME_LIMIT;
    while shared.primed.load(Ordering::Relaxed) < orders {
        if Instant::now() > primed_by {
            return Err(LoadgenError::Setup(format!(
                "only {} of {orders} clients had an event within {PRIME_LIMIT:?} of the warm-up",
                shared.primed.load(Ordering::Relaxed)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warmed = shared.epoch.elapsed();

    let shed_before = survivor_shed(target).await;
    let measured = [survivor_pid, redis_pid, Some(std::process::id())];
    let cpu_before = measured.map(|p| p.and_then(ProcSample::read));
    let status = std::process::Command::new("kill")
        .args(["-KILL", &victim_pid.to_string()])
        .status()?;
    let killed_at = shared.epoch.elapsed();
    if !status.success() {
        return Err(LoadgenError::Setup(format!(
            "kill -KILL {victim_pid} failed"
        )));
    }

    // Until every victim has its sync:done, CPU sampled each second for the
    // busiest second.
    let mut samples = vec![(killed_at, cpu_before)];
    let mut done: Vec<Recovery> = Vec::with_capacity(args.clients);
    let deadline = Instant::now() + args.limit;
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    every_second.tick().await;
    while done.len() < args.clients && Instant::now() < deadline {
        tokio::select! {
            r = recoveries.recv() => match r {
                Some(r) => done.push(r),
                None => break,
            },
            _ = every_second.tick() => samples.push((
                shared.epoch.elapsed(),
                measured.map(|p| p.and_then(ProcSample::read)),
            )),
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    let storm_end = shared.epoch.elapsed();
    let cpu_after = measured.map(|p| p.and_then(ProcSample::read));
    samples.push((storm_end, cpu_after));
    let shed_after = survivor_shed(target).await;

    tokio::time::sleep(TAIL).await;
    stop_producer.cancel();
    let appended = producer
        .await
        .map_err(|e| LoadgenError::Setup(format!("producer: {e}")))??;
    // Every entry handled (the dead node's claimed after RELAY_CLAIM_IDLE_MS),
    // then delivered or given up on after DRAIN.
    target
        .settle(&mut target.connection().await?, Duration::from_secs(60))
        .await?;
    let drain_until = Instant::now() + DRAIN;
    while shared.delivered.load(Ordering::Relaxed) < appended && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let mut seen = Vec::with_capacity(orders);
    for task in tasks {
        seen.push(
            task.await
                .map_err(|e| LoadgenError::Setup(format!("client task: {e}")))?,
        );
    }

    // Losses and repeats against what was appended: event k went to order
    // k % orders, whose customer is client k % orders.
    let (mut lost, mut duplicates) = (0usize, 0usize);
    for (i, s) in seen.iter().enumerate() {
        let mut got = vec![false; appended.div_ceil(orders)];
        for &k in &s.events {
            let Some(slot) = got.get_mut(k as usize / orders) else {
                continue;
            };
            if *slot {
                duplicates += 1;
            }
            *slot = true;
        }
        lost += (i..appended)
            .step_by(orders)
            .filter(|k| !got[k / orders])
            .count();
    }
    let (mut storm_live, mut before_live) = (Latencies::default(), Latencies::default());
    let (from, to) = (killed_at.as_micros() as u64, storm_end.as_micros() as u64);
    for (sent, latency) in seen.iter().flat_map(|s| &s.latencies) {
        if (from..=to).contains(sent) {
            storm_live.record(*latency);
        } else if *sent < from {
            before_live.record(*latency);
        }
    }

    let mut times: Vec<Duration> = done
        .iter()
        .filter(|r| r.recovered)
        .map(|r| r.at.saturating_sub(killed_at))
        .collect();
    times.sort_unstable();
    let not_recovered = done.iter().filter(|r| !r.recovered).count();
    let missing = args.clients - done.len();
    let at_share = |share: f64| {
        let needed = (args.clients as f64 * share).ceil() as usize;
        times
            .get(needed.saturating_sub(1))
            .filter(|_| needed <= times.len())
            .map_or_else(
                || "not reached".to_owned(),
                |t| format!("{:.2} s", t.as_secs_f64()),
            )
    };
    let cpu_rows = cpu_rows(&samples);
    let p = |l: &mut Latencies| {
        l.summary().map_or_else(
            || "no events".to_owned(),
            |[p50, _, p99, max]| {
                format!(
                    "p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({} events)",
                    l.len()
                )
            },
        )
    };
    Ok(format!(
        "### Reconnect storm\n\n\
         {clients} customers on node 1 and {own} on node 2, each in its order's room; order events appended with XADD at {rate}/s \
         round-robin over their orders; node 1 SIGKILLed after {warmup:.1} s, once every client had an event to resume from. Its clients reconnect to node 2 with \
         `auth.last_event_id` the way socket.io-client does (first try after its back-off, 1 s doubling to 5 s, \
         randomisation 0.5; after a 503 at least the `Retry-After` it names). Machine: {machine}.\n\n\
         | figure | value |\n| --- | --- |\n\
         | `sync:done {{ recovered: true }}`, first / 50 % of the clients | {first_at} / {p50_at} after the kill |\n\
         | `sync:done {{ recovered: true }}`, 99 % of the clients | {p99_at} after the kill |\n\
         | `sync:done {{ recovered: true }}`, 100 % | {all_at} after the kill |\n\
         | `recovered: false` / no `sync:done` within {limit} s | {not_recovered} / {missing} |\n\
         | events appended / lost / repeated (at least once) | {appended} / {lost} / {duplicates} |\n\
         | handshakes shed by node 2 (`connect_rate`) | {shed_metric:.0} |\n\
         | reconnect tries refused with 503 / of those without `Retry-After` / timed out ({timeout} s) / failed otherwise | {shed} / {blind} / {timed_out} / {failed} |\n\
         | node 2's own customers, XADD -> client, during the storm | {storm_p} |\n\
         | the same before the kill | {before_p} |\n\n\
         | process, kill -> last `sync:done` | CPU (mean) | CPU (busiest second) |\n| --- | --- | --- |\n{cpu_rows}",
        clients = args.clients,
        own = args.survivor_clients,
        rate = args.rate,
        warmup = warmed.as_secs_f64(),
        machine = machine(),
        first_at = at_share(1.0 / args.clients as f64),
        p50_at = at_share(0.5),
        p99_at = at_share(0.99),
        all_at = at_share(1.0),
        limit = args.limit.as_secs(),
        shed_metric = shed_after - shed_before,
        shed = shared.shed.load(Ordering::Relaxed),
        blind = shared.shed_blind.load(Ordering::Relaxed),
        timed_out = shared.timed_out.load(Ordering::Relaxed),
        timeout = CONNECT_TIMEOUT.as_secs(),
        failed = shared.failed.load(Ordering::Relaxed),
        storm_p = p(&mut storm_live),
        before_p = p(&mut before_live),
    ))
}

async fn survivor_shed(target: &Target) -> f64 {
    let texts = target.scrape().await;
    texts.get(1).map_or(0.0, |t| {
        metric_sum(t, "relay_connections_shed_total", "reason=\"connect_rate\"")
    })
}

/// Mean cores over the storm and the busiest one-second step, for node 2,
/// Redis and this load generator.
fn cpu_rows(samples: &[(Duration, [Option<ProcSample>; 3])]) -> String {
    let mut rows = String::new();
    let labels = ["node 2 (survivor)", "redis-server", "load generator"];
    for (p, label) in labels.iter().enumerate() {
        let cpu = |s: &(Duration, [Option<ProcSample>; 3])| s.1[p].as_ref().map(|x| (s.0, x.cpu));
        let points: Vec<(Duration, Duration)> = samples.iter().filter_map(cpu).collect();
        let (Some(first), Some(last)) = (points.first(), points.last()) else {
            continue;
        };
        let cores = |a: &(Duration, Duration), b: &(Duration, Duration)| {
            b.1.saturating_sub(a.1).as_secs_f64() / b.0.saturating_sub(a.0).as_secs_f64().max(1e-3)
        };
        let busiest = points
            .windows(2)
            .map(|w| cores(&w[0], &w[1]))
            .fold(0.0, f64::max);
        rows.push_str(&format!(
            "| {label} | {:.2} cores | {busiest:.2} cores |\n",
            cores(first, last)
        ));
    }
    rows
}

/// XADDs `order.status` events at `rate`, event k to order k % orders,
/// until `stop`; returns how many it appended.
async fn produce(
    mut conn: super::RedisConn,
    stream: String,
    run: String,
    orders: usize,
    rate: u32,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<usize, LoadgenError> {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for (k, slot) in shared.sent_at.iter().enumerate() {
        tokio::select! {
            () = stop.cancelled() => return Ok(k),
            _ = ticks.tick() => {}
        }
        let data = json!({"order_id": format!("{run}-o{}", k % orders), "status": format!("s{k}")});
        slot.store(shared.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
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
    Ok(shared.sent_at.len())
}

struct CustomerRun {
    index: usize,
    client: Client,
    /// On the node that is killed: measures its recovery. Otherwise:
    /// measures live latency.
    victim: bool,
    fallback: String,
    token: String,
    shared: Arc<Shared>,
    recoveries: mpsc::UnboundedSender<Recovery>,
    stop: CancellationToken,
}

/// One customer until `stop`: its events, and when its node is gone, back
/// on the survivor with the last `event_id` it saw.
async fn customer(mut c: CustomerRun) -> Seen {
    let mut seen = Seen::default();
    let mut last_event_id: Option<String> = None;
    let mut backoff = Backoff::socket_io(c.index as u64);
    let mut distinct = std::collections::HashSet::new();
    let mut recovered = false;
    loop {
        let event = tokio::select! {
            () = c.stop.cancelled() => return seen,
            e = c.client.next_event(Duration::from_secs(3600)) => e,
        };
        match event {
            Ok(event) if event.name == "order:status_update" => {
                let arrived = c.shared.epoch.elapsed();
                let k = event.data()["status"]
                    .as_str()
                    .and_then(|s| s.strip_prefix('s'))
                    .and_then(|k| k.parse::<u32>().ok());
                let Some(k) = k else { continue };
                if let Some(id) = event.data()["event_id"].as_str() {
                    if last_event_id.is_none() {
                        c.shared.primed.fetch_add(1, Ordering::Relaxed);
                    }
                    last_event_id = Some(id.to_owned());
                }
                seen.events.push(k);
                if distinct.insert(k) {
                    c.shared.delivered.fetch_add(1, Ordering::Relaxed);
                }
                let sent = c
                    .shared
                    .sent_at
                    .get(k as usize)
                    .map_or(u64::MAX, |s| s.load(Ordering::Relaxed));
                if !c.victim && sent != u64::MAX {
                    seen.latencies
                        .push((sent, arrived.saturating_sub(Duration::from_micros(sent))));
                }
            }
            Ok(event) if event.name == "sync:done" => {
                // A client's first sync:done after the kill is its recovery.
                if c.victim && !recovered {
                    recovered = true;
                    let _ = c.recoveries.send(Recovery {
                        at: c.shared.epoch.elapsed(),
                        recovered: event.data()["recovered"] == true,
                    });
                }
            }
            Ok(_) | Err(ClientError::Timeout(_)) => {}
            Err(_) => {
                // socket.io-client waits one back-off before its first try.
                let first = backoff.next_delay();
                tokio::select! {
                    () = c.stop.cancelled() => return seen,
                    () = tokio::time::sleep(first) => {}
                }
                let mut auth = json!({ "token": c.token });
                if let Some(id) = &last_event_id {
                    auth["last_event_id"] = json!(id);
                }
                match reconnect(&c, auth, &mut backoff).await {
                    Some(client) => c.client = client,
                    None => return seen,
                }
            }
        }
    }
}

/// Connects to the survivor until it works or the run stops, as
/// socket.io-client does after losing its connection.
async fn reconnect(
    c: &CustomerRun,
    auth: serde_json::Value,
    backoff: &mut Backoff,
) -> Option<Client> {
    loop {
        let attempt = Client::connect(
            ConnectOptions::new(c.fallback.clone())
                .transport(Transport::WebSocket)
                .auth(auth.clone())
                .timeout(CONNECT_TIMEOUT),
        );
        let result = tokio::select! {
            () = c.stop.cancelled() => return None,
            r = attempt => r,
        };
        match result {
            Ok(client) => {
                backoff.reset();
                return Some(client);
            }
            Err(e) => {
                if matches!(e, ClientError::Refused { .. }) {
                    c.shared.shed.fetch_add(1, Ordering::Relaxed);
                    if e.retry_after().is_none() {
                        c.shared.shed_blind.fetch_add(1, Ordering::Relaxed);
                    }
                } else if matches!(e, ClientError::Timeout(_)) {
                    c.shared.timed_out.fetch_add(1, Ordering::Relaxed);
                } else {
                    tracing::debug!(error = %e, "reconnect failed");
                    c.shared.failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::select! {
                    () = c.stop.cancelled() => return None,
                    () = tokio::time::sleep(backoff.delay_after(&e)) => {}
                }
            }
        }
    }
}
