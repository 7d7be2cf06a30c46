//! The official clients against real nodes: the JavaScript (`socket.io-client`
//! 4.x in Node.js) and Python (`python-socketio` 5.x) interop suites in
//! `interop/`, once straight at three nodes (clients spread over them, events
//! crossing nodes), once straight at two nodes on a Redis Cluster, and once
//! through nginx with the example config of
//! `deploy/nginx.conf` (rendered and run by `scripts/nginx.sh`). Then a node
//! drains under JavaScript clients behind that nginx.
//!
//! The suites report each case by name; their output is in the failure
//! message. Nothing here is skipped: node, the npm modules, the Python venv
//! and nginx come from `make deps`, and their absence fails the test.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};

use super::support::{API_KEY, Cluster, Kind, SECRET, free_port, scrape, wait_for_status};

/// A whole suite run; a run takes about 5 s on an idle machine.
const SUITE_TIMEOUT: Duration = Duration::from_secs(60);
/// `RELAY_MAX_CONNECTIONS_PER_USER` of the extra node the suites provoke
/// `too many connections` on.
const LIMITED_MAX: &str = "2";
const DEPS_HINT: &str = "run `make deps` (it installs nodejs, npm, nginx-light and, through \
     scripts/interop-deps.sh, the npm modules and target/interop-venv)";

fn root() -> &'static Path {
    crate::support::repo_root()
}

#[derive(Clone, Copy)]
enum Suite {
    JavaScript,
    Python,
}

impl Suite {
    /// Panics with `DEPS_HINT` when the suite's runtime or client is not
    /// installed.
    fn check_installed(self) {
        match self {
            Suite::JavaScript => {
                let module = root().join("interop/node_modules/socket.io-client/package.json");
                assert!(
                    module.exists(),
                    "interop: {} is missing: {DEPS_HINT}",
                    module.display()
                );
                let ok = std::process::Command::new("node")
                    .arg("--version")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "interop: `node` is not on PATH: {DEPS_HINT}");
            }
            Suite::Python => {
                let python = Self::python();
                assert!(
                    python.exists(),
                    "interop: {} is missing: {DEPS_HINT}",
                    python.display()
                );
            }
        }
    }

    fn python() -> PathBuf {
        root().join("target/interop-venv/bin/python")
    }

    /// The command that runs `script` of the suite's directory.
    fn command(self, script: &str) -> Command {
        self.check_installed();
        let (program, dir) = match self {
            Suite::JavaScript => (PathBuf::from("node"), "interop/js"),
            Suite::Python => (Self::python(), "interop/py"),
        };
        let mut cmd = Command::new(program);
        cmd.arg(root().join(dir).join(script));
        cmd
    }

    /// The command for `script` with the settings every suite reads.
    fn configured(
        self,
        script: &str,
        urls: &[String],
        api_url: &str,
        limited_url: &str,
    ) -> Command {
        let mut cmd = self.command(script);
        cmd.current_dir(root())
            .env("RELAY_URLS", urls.join(","))
            .env("RELAY_API_URL", api_url)
            .env("RELAY_JWT_SECRET", SECRET)
            .env("RELAY_API_KEY", API_KEY)
            .env("RELAY_LIMITED_URL", limited_url)
            .env("RELAY_LIMITED_MAX", LIMITED_MAX)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run(self, urls: &[String], api_url: &str, limited_url: &str) -> String {
        let script = match self {
            Suite::JavaScript => "suite.mjs",
            Suite::Python => "suite.py",
        };
        let mut cmd = self.configured(script, urls, api_url, limited_url);
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().expect("spawn the interop suite");
        let output = tokio::time::timeout(SUITE_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("interop suite still running after {SUITE_TIMEOUT:?}"))
            .expect("interop suite");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "interop suite failed ({}):\n{text}",
            output.status
        );
        println!("{text}");
        text
    }
}

/// Redis, `nodes` nodes, and one more that admits two sockets per user.
struct Setup {
    cluster: Cluster,
    nodes: usize,
    limited: usize,
}

impl Setup {
    /// Three nodes on one Redis server.
    async fn start(test: &str) -> Self {
        Self::start_on(Kind::Server, test, 3).await
    }

    async fn start_on(kind: Kind, test: &str, nodes: usize) -> Self {
        let mut cluster = Cluster::start_on(kind, test, nodes, &[]).await;
        let limited = cluster
            .add_node_with(&[("RELAY_MAX_CONNECTIONS_PER_USER", LIMITED_MAX)])
            .await;
        Self {
            cluster,
            nodes,
            limited,
        }
    }

    fn node_urls(&self) -> Vec<String> {
        (0..self.nodes).map(|i| self.cluster.url(i)).collect()
    }

    fn limited_url(&self) -> String {
        self.cluster.url(self.limited)
    }
}

/// nginx from `scripts/nginx.sh` in front of nodes, in a scratch directory
/// of its own; killed (one process) and removed on drop.
struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
    url: String,
}

impl Nginx {
    async fn start(nodes: &[String]) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let dir =
            std::env::temp_dir().join(format!("relay-it-nginx-{}-{port}", std::process::id()));
        let upstreams: Vec<&str> = nodes
            .iter()
            .map(|u| u.trim_start_matches("http://"))
            .collect();
        let script = root().join("scripts/nginx.sh");
        let mut args = vec![
            "--dir".to_owned(),
            dir.display().to_string(),
            listen.clone(),
        ];
        args.extend(upstreams.iter().map(|u| (*u).to_owned()));

        let check = Command::new(&script)
            .arg("--check")
            .args(&args)
            .output()
            .await
            .expect("run scripts/nginx.sh");
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert!(
            check.status.code() != Some(127),
            "interop: nginx is not installed: {DEPS_HINT}\n{stderr}"
        );
        assert!(
            check.status.success(),
            "scripts/nginx.sh --check:\n{stderr}"
        );

        let child = Command::new(&script)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn scripts/nginx.sh");
        let nginx = Self {
            child: Some(child),
            dir,
            url: format!("http://{listen}"),
        };
        wait_for_status(&format!("{}/healthz", nginx.url), 200).await;
        nginx
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// The node (`node=` field of the access log) of each Socket.IO request,
    /// split into polling requests and direct WebSocket connections.
    fn socketio_nodes(&self) -> (Vec<String>, Vec<String>) {
        let mut polling = Vec::new();
        let mut websocket = Vec::new();
        for line in self.log("access.log").lines() {
            let Some(node) = line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("node="))
            else {
                continue;
            };
            if line.contains("transport=polling") {
                polling.push(node.to_owned());
            } else if line.contains("transport=websocket") && !line.contains("sid=") {
                websocket.push(node.to_owned());
            }
        }
        (polling, websocket)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn distinct(nodes: &[String]) -> Vec<&str> {
    let mut set: Vec<&str> = nodes.iter().map(String::as_str).collect();
    set.sort_unstable();
    set.dedup();
    set
}

/// The sum of every series of a node's scrape that starts with `prefix`.
async fn metric_sum(url: &str, prefix: &str) -> f64 {
    scrape(url)
        .await
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Handshakes a node completed, all roles together.
async fn connects(url: &str) -> f64 {
    metric_sum(url, "relay_connects_total{").await
}

/// The suite straight at `nodes` nodes on a Redis of `kind`.
async fn direct(suite: Suite, kind: Kind, test: &str, nodes: usize) {
    suite.check_installed();
    let setup = Setup::start_on(kind, test, nodes).await;
    let urls = setup.node_urls();
    let output = suite.run(&urls, &urls[0], &setup.limited_url()).await;
    // Every node had clients: events crossed nodes.
    for url in &urls {
        assert!(
            connects(url).await > 0.0,
            "no client connected to {url}\n{output}"
        );
    }
}

async fn through_nginx(suite: Suite, test: &str) {
    suite.check_installed();
    let setup = Setup::start(test).await;
    let nodes = setup.node_urls();
    let nginx = Nginx::start(&nodes).await;
    // Clients, the publish API and GET /orders/active all through nginx.
    let urls = [nginx.url.clone()];
    let output = suite.run(&urls, &nginx.url, &setup.limited_url()).await;

    // Polling sessions stick to a node by client address (all of these come
    // from 127.0.0.1, so one node), and direct WebSockets spread over nodes.
    // nginx logs a WebSocket when it closes: the last ones may take a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (polling, websocket) = loop {
        let (polling, websocket) = nginx.socketio_nodes();
        if distinct(&websocket).len() >= 2 || tokio::time::Instant::now() > deadline {
            break (polling, websocket);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let context = || {
        format!(
            "{output}\naccess.log:\n{}\nerror.log:\n{}",
            nginx.log("access.log"),
            nginx.log("error.log")
        )
    };
    assert!(
        !polling.is_empty() && !websocket.is_empty(),
        "no Socket.IO requests in nginx's access log\n{}",
        context()
    );
    assert_eq!(
        distinct(&polling).len(),
        1,
        "polling requests of one client address went to several nodes\n{}",
        context()
    );
    assert!(
        distinct(&websocket).len() >= 2,
        "direct WebSockets all went to one node: {:?}\n{}",
        distinct(&websocket),
        context()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_client_direct() {
    direct(Suite::JavaScript, Kind::Server, "interop_js", 3).await;
}

/// The same suite against two nodes on a Redis Cluster: events cross nodes
/// through sharded channels, and every key the suite touches lives on the
/// cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_client_direct_on_a_redis_cluster() {
    direct(Suite::JavaScript, Kind::Cluster, "interop_js_cluster", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_client_through_nginx() {
    through_nginx(Suite::JavaScript, "interop_js_nginx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_direct() {
    direct(Suite::Python, Kind::Server, "interop_py", 3).await;
}

/// The Python suite, order chat and token refresh included, against two
/// nodes on a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_direct_on_a_redis_cluster() {
    direct(Suite::Python, Kind::Cluster, "interop_py_cluster", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_through_nginx() {
    through_nginx(Suite::Python, "interop_py_nginx").await;
}

/// Sockets a node holds now, all roles and transports together.
async fn connected_sockets(url: &str) -> f64 {
    metric_sum(url, "relay_connected_sockets{").await
}

/// A node drains (SIGTERM) under official JavaScript clients that reach the
/// nodes through nginx: they reconnect by themselves, through nginx, to the
/// other nodes, and resync what they missed (`interop/js/drain.mjs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_clients_follow_a_draining_node_through_nginx() {
    Suite::JavaScript.check_installed();
    let mut setup = Setup::start("interop_drain").await;
    let nodes = setup.node_urls();
    let nginx = Nginx::start(&nodes).await;
    let urls = [nginx.url.clone()];
    let mut child = Suite::JavaScript
        .configured("drain.mjs", &urls, &nodes[0], &setup.limited_url())
        .env("RELAY_NODES", nodes.join(","))
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn interop/js/drain.mjs");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut output = String::new();

    let ready = tokio::time::timeout(SUITE_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("read drain.mjs") {
            output.push_str(&line);
            output.push('\n');
            if line == "READY" {
                return true;
            }
        }
        false
    })
    .await;
    if ready != Ok(true) {
        let rest = child.wait_with_output().await.expect("drain.mjs");
        panic!(
            "drain.mjs never got ready:\n{output}{}",
            String::from_utf8_lossy(&rest.stderr)
        );
    }

    // The node holding most of the clients (all polling sessions are on one).
    let mut busiest = 0;
    let mut most = -1.0;
    for (i, url) in nodes.iter().enumerate() {
        let n = connected_sockets(url).await;
        if n > most {
            (busiest, most) = (i, n);
        }
    }
    let node = &mut setup.cluster.nodes[busiest];
    node.terminate();
    assert_eq!(
        node.exit_code().await,
        Some(0),
        "the drained node's exit code"
    );
    stdin
        .write_all(format!("GO {}\n", nodes[busiest]).as_bytes())
        .await
        .expect("write GO");

    let finished = tokio::time::timeout(SUITE_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("read drain.mjs") {
            output.push_str(&line);
            output.push('\n');
        }
        child.wait_with_output().await.expect("drain.mjs")
    })
    .await
    .unwrap_or_else(|_| panic!("drain.mjs still running after {SUITE_TIMEOUT:?}:\n{output}"));
    let output = format!("{output}{}", String::from_utf8_lossy(&finished.stderr));
    assert!(
        finished.status.success(),
        "drain.mjs failed ({}):\n{output}\nnginx error.log:\n{}",
        finished.status,
        nginx.log("error.log")
    );
    println!("{output}");
}
