//! A process's CPU time, memory and file descriptors from /proc (Linux):
//! the node's own `process_*` metrics, and the load generator's reports on
//! other processes (crates/relay-sim reads node and Redis pids).
//!
//! Not `metrics-process`: through the `metrics` facade it exports
//! `process_cpu_seconds_total` as a counter of whole seconds (its `u64`
//! counters), so `rate()` over a scrape interval of a lightly loaded node
//! jumps between 0 and 1/interval; its gauge option keeps the fraction but
//! gives a gauge named `_total`, which `promtool check metrics` refuses. It
//! would also not serve the load generator, which samples other pids.

use std::time::Duration;

/// A node's CPU time and resident memory at one moment.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub cpu: Duration,
    pub rss_kib: u64,
}

impl ProcSample {
    pub fn read(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which may contain spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        // USER_HZ is 100 on Linux.
        Some(Self {
            cpu: Duration::from_millis(ticks * 10),
            rss_kib,
        })
    }
}

/// Open file descriptors of this process.
pub fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// The soft limit on open file descriptors of this process.
pub fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The standard Prometheus process metrics, as exposition text.
pub fn prometheus_text(start_time_s: f64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(sample) = ProcSample::read(std::process::id()) {
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds."
        );
        let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
        let _ = writeln!(
            out,
            "process_cpu_seconds_total {}",
            sample.cpu.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes Resident memory size in bytes."
        );
        let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
        let _ = writeln!(
            out,
            "process_resident_memory_bytes {}",
            sample.rss_kib * 1024
        );
    }
    if let Some(fds) = open_fds() {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Number of open file descriptors."
        );
        let _ = writeln!(out, "# TYPE process_open_fds gauge");
        let _ = writeln!(out, "process_open_fds {fds}");
    }
    if let Some(max) = max_fds() {
        let _ = writeln!(
            out,
            "# HELP process_max_fds Maximum number of open file descriptors."
        );
        let _ = writeln!(out, "# TYPE process_max_fds gauge");
        let _ = writeln!(out, "process_max_fds {max}");
    }
    let _ = writeln!(
        out,
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds."
    );
    let _ = writeln!(out, "# TYPE process_start_time_seconds gauge");
    let _ = writeln!(out, "process_start_time_seconds {start_time_s}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let sample = ProcSample::read(std::process::id()).expect("/proc");
        assert!(sample.rss_kib > 0);
        assert!(open_fds().expect("fds") > 0);
        assert!(prometheus_text(1.0).contains("process_resident_memory_bytes "));
    }
}
