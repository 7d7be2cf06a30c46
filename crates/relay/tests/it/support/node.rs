use std::{net::SocketAddr, process::Stdio};

use clap::Parser;
use relay::{
    config::{Config, ServeArgs},
    server::{self, Prepared, RunningNode},
};
use tokio::process::{Child, Command};

use super::{SECRET, WAIT, free_port, wait_for_status};

/// Settings shared by both kinds of node: the test secret, and no readiness
/// drain (the tests that stop nodes would each wait for it otherwise).
fn base_env() -> Vec<(String, String)> {
    vec![
        ("RELAY_JWT_SECRET".into(), SECRET.into()),
        ("RELAY_LOG".into(), "warn,relay=info".into()),
        ("RELAY_SHUTDOWN_DELAY_MS".into(), "0".into()),
    ]
}

/// The `relay` binary as a child process: what operators run.
pub struct NodeProcess {
    addr: SocketAddr,
    child: Option<Child>,
}

impl NodeProcess {
    /// Spawns `relay serve` with the test defaults plus `env`, and waits
    /// until `/healthz` answers.
    pub async fn spawn(env: &[(&str, &str)]) -> Self {
        let node = Self::spawn_unchecked(env);
        wait_for_status(&format!("{}/healthz", node.url()), 200).await;
        node
    }

    pub async fn spawn_ready(env: &[(&str, &str)]) -> Self {
        let node = Self::spawn(env).await;
        node.wait_ready().await;
        node
    }

    /// Like [`Self::spawn_ready`], with the node's log (stderr) in `log`.
    pub async fn spawn_logging_to(env: &[(&str, &str)], log: &std::path::Path) -> Self {
        let file = std::fs::File::create(log).expect("log file");
        let node = Self::spawn_with_stderr(env, Stdio::from(file));
        wait_for_status(&format!("{}/healthz", node.url()), 200).await;
        node.wait_ready().await;
        node
    }

    /// Like [`Self::spawn`] (up, not necessarily ready), with the node's log
    /// (stderr) in `log`.
    pub async fn spawn_up_logging_to(env: &[(&str, &str)], log: &std::path::Path) -> Self {
        let file = std::fs::File::create(log).expect("log file");
        let node = Self::spawn_with_stderr(env, Stdio::from(file));
        wait_for_status(&format!("{}/healthz", node.url()), 200).await;
        node
    }

    /// Like [`Self::spawn_ready`], with the node's stderr given.
    pub async fn spawn_ready_with_stderr(env: &[(&str, &str)], stderr: Stdio) -> Self {
        let node = Self::spawn_with_stderr(env, stderr);
        wait_for_status(&format!("{}/healthz", node.url()), 200).await;
        node.wait_ready().await;
        node
    }

    /// Sends `signal` (a name `kill` knows: `TERM`, `USR2`, ...).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn spawn_unchecked(env: &[(&str, &str)]) -> Self {
        let stderr = if std::env::var_os("RELAY_TEST_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        Self::spawn_with_stderr(env, stderr)
    }

    fn spawn_with_stderr(env: &[(&str, &str)], stderr: Stdio) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(base_env())
            .env("RELAY_ADDR", addr.to_string())
            .envs(
                env.iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (*k, *v)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        // An empty value unsets a default (e.g. the secret, to use a public key).
        for (k, _) in env.iter().filter(|(_, v)| v.is_empty()) {
            cmd.env_remove(k);
        }
        let child = cmd.spawn().expect("spawn relay");
        Self {
            addr,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn wait_ready(&self) {
        wait_for_status(&format!("{}/readyz", self.url()), 200).await;
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("node is running")
    }

    /// SIGKILL: the node dies without a chance to hand anything back.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Sends SIGTERM, as Kubernetes does.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        let child = self.child.as_mut().expect("node is running");
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("node did not exit in time")
            .expect("wait");
        self.child = None;
        status.code()
    }
}

/// A node inside the test process, for tests that must act as the relay
/// itself (emit to a room from a chosen node).
pub struct InProcessNode {
    node: Option<RunningNode>,
}

impl InProcessNode {
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let mut argv = vec!["relay".to_owned()];
        for (k, v) in base_env()
            .into_iter()
            .chain(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
        {
            argv.push(format!("--{}", flag_of(&k)));
            // Boolean settings are flags without a value.
            if k != "RELAY_WEBSOCKET_ONLY" {
                argv.push(v);
            }
        }
        argv.push("--addr".into());
        argv.push("127.0.0.1:0".into());
        let args = Args::try_parse_from(argv).expect("settings").serve;
        let prepared = Prepared::new(Config::from_args(args).expect("config")).expect("prepared");
        let node = server::start(prepared).await.expect("start node");
        Self { node: Some(node) }
    }

    pub async fn start_ready(env: &[(&str, &str)]) -> Self {
        let node = Self::start(env).await;
        wait_for_status(&format!("{}/readyz", node.url()), 200).await;
        node
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.node().addr())
    }

    pub fn node(&self) -> &RunningNode {
        self.node.as_ref().expect("node running")
    }

    pub async fn broadcast(&self, rooms: &[&str], event: &str, data: serde_json::Value) {
        let rooms = rooms.iter().map(|r| (*r).to_owned()).collect();
        self.node()
            .broadcast(rooms, event, data)
            .await
            .expect("broadcast");
    }

    pub async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await.expect("clean stop");
        }
    }
}

impl Drop for InProcessNode {
    fn drop(&mut self) {
        if let Some(node) = &self.node {
            node.stop_token().cancel();
        }
    }
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

/// `RELAY_JWT_SECRET` -> `jwt-secret`, `REDIS_URL` -> `redis-url`.
fn flag_of(env: &str) -> String {
    env.trim_start_matches("RELAY_")
        .to_lowercase()
        .replace('_', "-")
}
