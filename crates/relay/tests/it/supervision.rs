//! Never a zombie node (issue #17): broken log output and panicking tasks
//! leave a node that serves, or one that drains and exits non-zero; never a
//! process with a dead part that only SIGKILL ends. Every test runs the
//! built `relay` binary against a real redis-server.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::Duration,
};

use futures_util::StreamExt;
use relay::auth::Role;

use crate::{
    engine::eventually,
    support::{
        API_KEY, NodeProcess, RedisServer, connect, expect_event, http, metric, scrape, token,
        unique_prefix,
    },
};

const ALERT: &str = r#"{"type":"admin.alert","data":{"level":"info","message":"still here"}}"#;
/// The exit status of a node whose task panic failed it (`relay::cli`).
const EXIT_TASK_PANICKED: i32 = relay::cli::EXIT_TASK_PANICKED as i32;

fn node_env(redis: &RedisServer, prefix: &str, log: &str) -> Vec<(String, String)> {
    vec![
        ("REDIS_URL".into(), redis.url()),
        ("RELAY_KEY_PREFIX".into(), prefix.into()),
        ("RELAY_API_KEY".into(), API_KEY.into()),
        ("RELAY_LOG".into(), log.into()),
    ]
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The node is ready with its consumer running, and an event appended
/// through it reaches a client connected to it.
async fn serves(url: &str) {
    let readyz = http()
        .get(format!("{url}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(readyz.status(), 200);
    let body: serde_json::Value = readyz.json().await.expect("readyz json");
    assert_eq!(body["consumer"], true, "{body}");
    let mut admin = connect(url, &token("a1", Role::Admin)).await;
    let published = http()
        .post(format!("{url}/api/events"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(ALERT)
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), 202);
    let body: serde_json::Value = published.json().await.expect("publish json");
    let alert = expect_event(&mut admin, "admin:alert").await;
    assert_eq!(alert.data()["event_id"], body["event_id"]);
    admin.disconnect().await;
}

/// SIGTERM: the node drains and exits 0 (within the harness's bound).
async fn drains_on_sigterm(mut node: NodeProcess) {
    node.terminate();
    assert_eq!(node.exit_code().await, Some(0));
}

/// Sum of `relay_task_panics_total` over every task.
async fn task_panics(url: &str) -> f64 {
    scrape(url)
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("relay_task_panics_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Serves until `series` has counted something (each round logs).
async fn serve_until_counted(url: &str, series: &str) {
    eventually(series, || async {
        serves(url).await;
        (metric(url, series).await > 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_stderr_reader_exits_keeps_serving_and_drains_on_sigterm() {
    let redis = RedisServer::start().await;
    let env = node_env(&redis, &unique_prefix("pipe"), "debug");
    let (reader, writer) = std::io::pipe().expect("pipe");
    let node = NodeProcess::spawn_ready_with_stderr(&borrowed(&env), Stdio::from(writer)).await;
    // As `relay serve 2> >(head -n 1 >/dev/null)`: one line, then the reader is gone.
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(reader).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("reader")
    .expect("a first log line");
    assert!(!line.is_empty());
    serve_until_counted(&node.url(), "relay_log_write_errors_total").await;
    serves(&node.url()).await;
    assert_eq!(task_panics(&node.url()).await, 0.0);
    drains_on_sigterm(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_logging_to_a_full_disk_keeps_serving_and_drains_on_sigterm() {
    let redis = RedisServer::start().await;
    let env = node_env(&redis, &unique_prefix("full"), "debug");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let node = NodeProcess::spawn_ready_with_stderr(&borrowed(&env), Stdio::from(full)).await;
    serve_until_counted(&node.url(), "relay_log_write_errors_total").await;
    serves(&node.url()).await;
    assert_eq!(task_panics(&node.url()).await, 0.0);
    drains_on_sigterm(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_stderr_nobody_reads_drops_lines_keeps_serving_and_drains_on_sigterm() {
    let redis = RedisServer::start().await;
    // Every crate's trace output: the pipe and the writer's queue fill fast.
    let env = node_env(&redis, &unique_prefix("stuck"), "trace");
    let (reader, writer) = std::io::pipe().expect("pipe");
    let node = NodeProcess::spawn_ready_with_stderr(&borrowed(&env), Stdio::from(writer)).await;
    // Open and never read: each write blocks once the pipe's buffer is full.
    let url = node.url();
    let flood = async {
        loop {
            serves(&url).await;
            if metric(&url, "relay_log_lines_dropped_total").await > 0.0 {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .expect("no log line dropped while serving");
    serves(&url).await;
    assert_eq!(metric(&url, "relay_log_write_errors_total").await, 0.0);
    drains_on_sigterm(node).await;
    drop(reader);
}

/// What a panic of a task leads to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    /// Restarted: the node serves on.
    Restarted,
    /// The node drains and exits with [`EXIT_TASK_PANICKED`].
    Exits,
}

/// Every long-lived task of a node (relay::tasks::names; a Redis node runs
/// them all), and what a panic of it leads to.
const PANICS: [(&str, After); 13] = [
    ("consumer", After::Exits),
    ("consumer maintenance", After::Restarted),
    ("delivery loop", After::Exits),
    ("health watch", After::Restarted),
    ("http server", After::Exits),
    ("limits keep-alive", After::Restarted),
    ("location cache writer", After::Exits),
    ("location prune", After::Restarted),
    ("moved channels", After::Restarted),
    ("presence", After::Exits),
    ("room sweep", After::Restarted),
    ("sequencing notices", After::Exits),
    ("token expiry sweeper", After::Restarted),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_any_task_restarts_it_or_drains_and_exits_non_zero() {
    let tracked: Vec<&str> = relay::tasks::names::ALL
        .into_iter()
        .filter(|n| *n != relay::tasks::names::SIGNAL_LISTENER)
        .collect();
    let mut tabled: Vec<&str> = PANICS.iter().map(|(task, _)| *task).collect();
    tabled.sort_unstable();
    let mut expected = tracked.clone();
    expected.sort_unstable();
    assert_eq!(tabled, expected, "every task on the tracker, once");

    let redis = RedisServer::start().await;
    // A few nodes at a time: the machine is shared.
    futures_util::stream::iter(PANICS)
        .map(|(task, after)| panic_in(&redis, task, after))
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
}

async fn panic_in(redis: &RedisServer, task: &'static str, after: After) {
    // One stream per node: the nodes run side by side on one Redis.
    let prefix = format!("{}{}:", unique_prefix("panic"), task.replace(' ', "-"));
    let mut env = node_env(redis, &prefix, "warn,relay=info");
    env.push(("RELAY_TEST_PANIC_TASK".into(), task.into()));
    let log = std::env::temp_dir().join(format!("{}.log", prefix.replace(':', "-")));
    let mut node = NodeProcess::spawn_logging_to(&borrowed(&env), &log).await;
    let url = node.url();
    serves(&url).await;
    node.signal("USR2");
    let series = format!(r#"relay_task_panics_total{{task="{task}"}}"#);
    match after {
        After::Restarted => {
            eventually(&series, || async {
                (metric(&url, &series).await == 1.0).then_some(())
            })
            .await;
            eventually("the restart", || async {
                let log = std::fs::read_to_string(&log).ok()?;
                log.lines()
                    .any(|l| l.contains("task restarted") && l.contains(task))
                    .then_some(())
            })
            .await;
            serves(&url).await;
            assert_eq!(task_panics(&url).await, 1.0, "{task}");
            drains_on_sigterm(node).await;
        }
        After::Exits => {
            assert_eq!(node.exit_code().await, Some(EXIT_TASK_PANICKED), "{task}");
            let log = std::fs::read_to_string(&log).expect("log");
            let failed = log
                .lines()
                .position(|l| l.contains("a task of this node failed") && l.contains(task));
            let stopped = log.lines().position(|l| l.contains("relay stopped"));
            assert!(
                matches!((failed, stopped), (Some(f), Some(s)) if f < s),
                "{task}: drained after the panic?\n{log}"
            );
        }
    }
    let _ = std::fs::remove_file(&log);
}

#[test]
fn the_test_panic_hook_is_compiled_into_debug_builds_only() {
    // The hook is compiled in with debug assertions only; this suite runs
    // the debug binary. Checked here so that the guard cannot vanish.
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/tasks.rs"))
        .expect("tasks.rs");
    let hook = source
        .find("mod injected")
        .expect("the test-only panic hook");
    let before = &source[..hook];
    assert!(
        before.trim_end().ends_with("#[cfg(debug_assertions)]"),
        "mod injected must be #[cfg(debug_assertions)]"
    );
}
