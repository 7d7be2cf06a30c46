//! Idle connections: what one costs a node in resident memory.

use std::time::Duration;

use super::{LoadgenError, Target, machine};
use relay::auth::Role;

pub async fn run(
    target: &Target,
    per_node: usize,
    settle: Duration,
) -> Result<String, LoadgenError> {
    let before = target.samples();
    let nodes = target.nodes.len();
    let clients = target
        .connect_all(
            (0..per_node * nodes)
                .map(|i| {
                    (
                        target.node(i).to_owned(),
                        target.token(&format!("{}-idle{i}", target.run), Role::Customer),
                    )
                })
                .collect(),
        )
        .await?;
    // Let allocators and buffers reach their idle state (a benchmark, not a test).
    tokio::time::sleep(settle).await;
    let after = target.samples();
    let mut rows = String::new();
    let nodes = target.node_procs();
    for (label, (b, a)) in nodes.iter().zip(before.iter().zip(&after)) {
        if let (Some(b), Some(a)) = (b, a) {
            let per_conn = a.rss_kib.saturating_sub(b.rss_kib) as f64 / per_node as f64;
            rows.push_str(&format!(
                "| {label} | {per_node} | {:.1} MiB -> {:.1} MiB | {per_conn:.1} KiB |\n",
                b.rss_kib as f64 / 1024.0,
                a.rss_kib as f64 / 1024.0
            ));
        }
    }
    drop(clients);
    Ok(format!(
        "### Idle connections\n\n\
         {per_node} idle WebSocket clients per node (authenticated customers, in their rooms, answering pings). Machine: {machine}.\n\n\
         | node | connections | RSS before -> after | RSS per connection |\n| --- | --- | --- | --- |\n{rows}",
        machine = machine()
    ))
}
