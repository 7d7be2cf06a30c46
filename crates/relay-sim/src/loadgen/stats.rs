//! Figures: latency percentiles, a node's CPU and memory from /proc, and
//! counters scraped from a node's /metrics.

use std::time::Duration;

/// Latencies in microseconds.
#[derive(Debug, Default)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        self.0
            .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
    }

    pub fn merge(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// p50, p90, p99 and max, in milliseconds.
    pub fn summary(&mut self) -> Option<[f64; 4]> {
        if self.0.is_empty() {
            return None;
        }
        self.0.sort_unstable();
        let at = |q: f64| {
            let i = ((self.0.len() as f64 * q).ceil() as usize).clamp(1, self.0.len()) - 1;
            f64::from(self.0[i]) / 1000.0
        };
        Some([
            at(0.50),
            at(0.90),
            at(0.99),
            f64::from(self.0[self.0.len() - 1]) / 1000.0,
        ])
    }
}

/// Sum of every series of `metric` whose labels contain `labels` (e.g.
/// `outcome="accepted"`), from Prometheus text.
pub fn metric_sum(text: &str, metric: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.is_empty() || l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The machine, for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB RAM")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_metric_sums() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.summary(), Some([50.0, 90.0, 99.0, 100.0]));
        let text = "# HELP x\nrelay_location_updates_total{outcome=\"accepted\"} 5\nrelay_location_updates_total{outcome=\"rejected\"} 2\nrelay_location_updates_totalx 9\n";
        assert_eq!(
            metric_sum(text, "relay_location_updates_total", "outcome=\"accepted\""),
            5.0
        );
        assert_eq!(metric_sum(text, "relay_location_updates_total", ""), 7.0);
    }
}
