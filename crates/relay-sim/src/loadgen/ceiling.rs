//! The highest location rate the nodes carry with driver -> customer p99
//! under a bound: the location scenario at rising rates, then a short
//! bisection between the last rate that held and the first that did not.

use std::time::Duration;

use super::{LoadgenError, Target, location, machine};

pub struct CeilingArgs {
    pub drivers: usize,
    /// The first rate tried (updates/s, all drivers together).
    pub from: u32,
    /// No rate above this one is tried.
    pub max: u32,
    pub p99_limit: Duration,
    /// Bisection steps after the first rate that failed.
    pub rounds: u32,
    pub duration: Duration,
    pub warmup: Duration,
}

/// A rate holds when p99 stays under the bound, at least 99 % of the
/// updates arrive, and the load generator really sent (nearly) that rate:
/// otherwise the generator, not the relay, was the limit.
fn holds(f: &location::Figures, rate: u32, limit_ms: f64) -> bool {
    f.p99_ms < limit_ms && f.ratio >= 99.0 && f.sent_per_s >= 0.95 * f64::from(rate)
}

pub async fn run(target: &Target, args: CeilingArgs) -> Result<String, LoadgenError> {
    let limit_ms = args.p99_limit.as_secs_f64() * 1000.0;
    let mut rows = String::new();
    let mut best: Option<u32> = None;
    let mut failed: Option<u32> = None;
    let mut rate = args.from.max(1);
    let mut step = 0;
    let mut rounds = 0;
    loop {
        step += 1;
        let f = location::measure(
            target,
            &format!("r{step}"),
            args.drivers,
            rate,
            args.duration,
            args.warmup,
        )
        .await?;
        let ok = holds(&f, rate, limit_ms);
        rows.push_str(&format!(
            "| {rate} | {:.0} | {:.0} | {:.2} % | {:.2} ms | {:.1} µs | {} |\n",
            f.sent_per_s,
            f.delivered_per_s,
            f.ratio,
            f.p99_ms,
            f.cpu_us_per_update,
            if ok { "yes" } else { "no" }
        ));
        if ok {
            best = Some(best.map_or(rate, |b| b.max(rate)));
        } else {
            failed = Some(failed.map_or(rate, |b| b.min(rate)));
        }
        let next = match (best, failed) {
            // Still rising: half as much again, up to the maximum.
            (Some(good), None) if good < args.max => (good + good / 2).min(args.max),
            (Some(good), Some(bad)) if rounds < args.rounds && bad - good > good / 20 => {
                rounds += 1;
                good + (bad - good) / 2
            }
            _ => break,
        };
        rate = next;
    }
    let verdict = match best {
        Some(rate) => format!("**{rate} updates/s** held p99 under {limit_ms:.0} ms"),
        None => format!("no rate tried held p99 under {limit_ms:.0} ms"),
    };
    Ok(format!(
        "### Highest location rate with p99 under {limit_ms:.0} ms\n\n\
         The location scenario ({drivers} drivers, {drivers} customers, every delivery cross-node) at rising rates from {from}/s, \
         then {rounds} bisection steps; {secs:.0} s per rate after {warm:.0} s of warm-up. A rate holds when p99 is under \
         {limit_ms:.0} ms, at least 99 % of the updates arrive and the load generator (on the same machine) sent at least 95 % \
         of the rate. Machine: {machine}.\n\n\
         | target rate (updates/s) | sent | delivered | delivery ratio | p99 | relay CPU per update | holds |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n{rows}\n{verdict}.\n",
        drivers = args.drivers,
        from = args.from,
        rounds = args.rounds,
        secs = args.duration.as_secs_f64(),
        warm = args.warmup.as_secs_f64(),
        machine = machine(),
    ))
}
