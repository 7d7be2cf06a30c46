//! Idle connections: what one costs a node in resident memory, at a few
//! counts (so that the growth shows), and whether the memory goes back
//! once every client has left (issue #19).

use std::time::Duration;

use super::{LoadgenError, Target, machine};
use relay::auth::Role;

pub struct IdleArgs {
    /// Connections per node at the end.
    pub per_node: usize,
    /// Smaller counts per node measured on the way up (each below `per_node`).
    pub steps: Vec<usize>,
    /// Pause before each reading, for allocators and buffers to settle.
    pub settle: Duration,
    /// When set, every client leaves and the node's RSS is read this long
    /// after, against its RSS at start.
    pub after_leave: Option<Duration>,
}

pub async fn run(target: &Target, args: IdleArgs) -> Result<String, LoadgenError> {
    let nodes = target.nodes.len();
    let mut steps: Vec<usize> = args
        .steps
        .iter()
        .copied()
        .filter(|&s| s > 0 && s < args.per_node)
        .collect();
    steps.sort_unstable();
    steps.dedup();
    steps.push(args.per_node);

    let start = target.samples();
    let mut peak = start.clone();
    let mut clients = Vec::new();
    let mut rows = String::new();
    let labels = target.node_procs();
    for &count in &steps {
        let from = clients.len() / nodes;
        clients.extend(
            target
                .connect_all(
                    (from * nodes..count * nodes)
                        .map(|i| {
                            (
                                target.node(i).to_owned(),
                                target.token(&format!("{}-idle{i}", target.run), Role::Customer),
                            )
                        })
                        .collect(),
                )
                .await?,
        );
        // Let allocators and buffers reach their idle state (a benchmark, not a test).
        tokio::time::sleep(args.settle).await;
        let now = target.samples();
        for (label, (b, a)) in labels.iter().zip(start.iter().zip(&now)) {
            if let (Some(b), Some(a)) = (b, a) {
                let per_conn = a.rss_kib.saturating_sub(b.rss_kib) as f64 / count as f64;
                rows.push_str(&format!(
                    "| {label} | {count} | {:.1} MiB -> {:.1} MiB | {per_conn:.1} KiB |\n",
                    b.rss_kib as f64 / 1024.0,
                    a.rss_kib as f64 / 1024.0
                ));
            }
        }
        peak = now;
    }
    drop(clients);
    let mut report = format!(
        "### Idle connections\n\n\
         {counts} idle WebSocket clients per node, opened in that order (authenticated customers, in their rooms, answering pings); \
         each reading {settle:.0} s after the last connection. Machine: {machine}.\n\n\
         | node | connections | RSS before -> after | RSS per connection |\n| --- | --- | --- | --- |\n{rows}",
        counts = steps
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", then "),
        settle = args.settle.as_secs_f64(),
        machine = machine()
    );
    if let Some(wait) = args.after_leave {
        tokio::time::sleep(wait).await;
        let end = target.samples();
        let mut rows = String::new();
        for (label, ((s, p), e)) in labels.iter().zip(start.iter().zip(&peak).zip(&end)) {
            if let (Some(s), Some(p), Some(e)) = (s, p, e) {
                let mib = |kib: u64| kib as f64 / 1024.0;
                rows.push_str(&format!(
                    "| {label} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:+.1} MiB |\n",
                    mib(s.rss_kib),
                    mib(p.rss_kib),
                    mib(e.rss_kib),
                    mib(e.rss_kib) - mib(s.rss_kib)
                ));
            }
        }
        report.push_str(&format!(
            "\n### Memory after the clients leave\n\n\
             The {per_node} clients per node above all leave at once; the node's RSS {wait:.0} s later against its RSS at start \
             (target: within 20 MB).\n\n\
             | node | RSS at start | with {per_node} clients | {wait:.0} s after they left | after - start |\n\
             | --- | --- | --- | --- | --- |\n{rows}",
            per_node = args.per_node,
            wait = wait.as_secs_f64(),
        ));
    }
    Ok(report)
}
