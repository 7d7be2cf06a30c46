//! `relay-sim loadgen`: drives running nodes through real WebSockets and
//! reports what they sustain. Scenarios: `location` (drivers -> customers
//! across nodes), `ceiling` (the highest location rate under a p99 bound),
//! `idle` (memory per idle connection, and after the clients leave), `orders`
//! (XADD -> client latency), `storm` (a node killed, its clients back on
//! the other), `chat` (customer -> driver and back across nodes) and
//! `presence` (connect and leave -> `{prefix}presence` entries).

mod ceiling;
mod chat;
mod idle;
mod location;
mod order_events;
mod presence;
mod stats;
mod storm;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand};
use futures_util::{StreamExt, stream};
use serde_json::json;

pub use stats::{Latencies, machine, metric_sum};

use relay::metrics::process::ProcSample;

use relay::{
    auth::{Role, mint_hs256},
    config::Secret,
};
use relay_client::{Client, ConnectOptions, Transport};

#[derive(Debug, Args)]
pub struct LoadgenArgs {
    #[command(subcommand)]
    scenario: Scenario,
    /// Base URLs of the nodes; clients are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:3000")]
    nodes: Vec<String>,
    /// Process ids of the nodes, in the same order, for CPU and RSS figures.
    #[arg(long, value_delimiter = ',')]
    node_pids: Vec<u32>,
    /// Number of the first node in the report (`node 2` when measuring the
    /// second node of a cluster on its own).
    #[arg(long, default_value_t = 1)]
    first_node: usize,
    /// Process ids of Redis, when it runs on this machine (every process of
    /// a cluster, comma-separated): their CPU and RSS are reported beside
    /// the nodes' (and this load generator's own), with their sum.
    #[arg(long, value_delimiter = ',')]
    redis_pid: Vec<u32>,
    /// The nodes' Redis, where the scenario's orders are appended.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<Secret>,
    /// The nodes' Redis Cluster instead (CONTRACT §6): every node's URL, so
    /// that Redis's bytes sent are summed over all of them.
    #[arg(
        long,
        env = "REDIS_CLUSTER_URLS",
        hide_env_values = true,
        conflicts_with = "redis_url"
    )]
    redis_cluster_urls: Option<Secret>,
    #[arg(long, env = "RELAY_KEY_PREFIX", default_value = "relay:")]
    key_prefix: String,
    /// The nodes' HS256 secret, to mint client tokens.
    #[arg(long, env = "RELAY_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Secret,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Appends the Markdown report to this file as well.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Drivers send locations at a set total rate; each customer (on another
    /// node than its driver) measures driver -> customer latency.
    Location {
        #[arg(long, default_value_t = 2000)]
        drivers: usize,
        /// Updates per second, all drivers together.
        #[arg(long, default_value_t = 10_000)]
        rate: u32,
        #[arg(long, default_value_t = 20)]
        duration_s: u64,
        #[arg(long, default_value_t = 3)]
        warmup_s: u64,
    },
    /// The location scenario at rising rates: the highest one whose
    /// driver -> customer p99 stays under --p99-limit-ms.
    Ceiling {
        #[arg(long, default_value_t = 2000)]
        drivers: usize,
        /// The first rate tried, updates/s.
        #[arg(long, default_value_t = 5000)]
        from: u32,
        /// No rate above this one is tried.
        #[arg(long, default_value_t = 40_000)]
        max: u32,
        #[arg(long, default_value_t = 50)]
        p99_limit_ms: u64,
        /// Bisection steps between the last rate that held and the first that did not.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        #[arg(long, default_value_t = 10)]
        duration_s: u64,
        #[arg(long, default_value_t = 3)]
        warmup_s: u64,
    },
    /// Opens idle connections and measures each node's RSS per connection.
    Idle {
        /// Connections per node.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Smaller counts per node measured on the way up.
        #[arg(long, value_delimiter = ',')]
        steps: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        settle_s: u64,
        /// Then every client leaves, and the node's RSS is read this many
        /// seconds later against its RSS at start.
        #[arg(long)]
        after_leave_s: Option<u64>,
    },
    /// Appends order statuses at a set rate; customers measure XADD -> client.
    Orders {
        #[arg(long, default_value_t = 500)]
        customers: usize,
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long, default_value_t = 20)]
        duration_s: u64,
    },
    /// Kills the first of two nodes (SIGKILL, needs --node-pids) while order
    /// events stream in; its clients reconnect to the second the way
    /// socket.io-client does, with `last_event_id`. Reports recovery times,
    /// lost and repeated events, CPU and the survivor's live latency.
    Storm {
        /// Customers on the node that is killed.
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Customers of the survivor's own, whose live latency is measured.
        #[arg(long, default_value_t = 1000)]
        survivor_clients: usize,
        /// Order events appended per second, round-robin over all orders.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Steady events before the kill.
        #[arg(long, default_value_t = 5)]
        warmup_s: u64,
        /// Bound on the storm: clients without sync:done by then are reported.
        #[arg(long, default_value_t = 60)]
        limit_s: u64,
    },
    /// Customer and driver of one order on different nodes chat at a set
    /// total rate, taking turns; each measures the other's `chat:send` ->
    /// its own `chat:message`, and counts messages that never arrive.
    Chat {
        /// Orders, each with its customer and its driver.
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Messages per second, all senders together.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        #[arg(long, default_value_t = 20)]
        duration_s: u64,
    },
    /// Drivers connect one after another, then leave; their online and
    /// offline entries in `{prefix}presence` are timed (needs --redis-url).
    Presence {
        #[arg(long, default_value_t = 200)]
        drivers: usize,
        /// The nodes' RELAY_PRESENCE_GRACE_MS: offline is due after it.
        #[arg(long, default_value_t = 10_000)]
        grace_ms: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0}")]
    Setup(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("client: {0}")]
    Client(#[from] relay_client::ClientError),
    #[error("report: {0}")]
    Io(#[from] std::io::Error),
}

/// The nodes' Redis: one server, or a cluster with a client per node (for
/// figures that each node reports of itself).
// One per run: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Redis {
    Server(redis::Client),
    Cluster(redis::cluster::ClusterClient, Vec<redis::Client>),
}

/// A connection to either.
#[derive(Clone)]
pub enum RedisConn {
    Server(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Server(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(c) => c.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

/// What every scenario works with.
/// Tries per client connection while setting up a scenario.
const CONNECT_ATTEMPTS: u64 = 5;
/// Bound on one client's setup while the node sheds it.
const SETUP_DEADLINE: Duration = Duration::from_secs(120);

pub struct Target {
    nodes: Vec<String>,
    /// Processes measured: the nodes first, then the others (Redis, this one).
    procs: Vec<(String, u32)>,
    redis: Option<Redis>,
    prefix: String,
    secret: Secret,
    concurrency: usize,
    /// Ids of this run, so that runs against one Redis never meet.
    run: String,
}

pub async fn run(args: LoadgenArgs) -> Result<(), LoadgenError> {
    let redis = match (&args.redis_url, &args.redis_cluster_urls) {
        (_, Some(urls)) => {
            let urls: Vec<String> = urls.expose().split(',').map(str::to_owned).collect();
            Some(Redis::Cluster(
                redis::cluster::ClusterClient::new(urls.clone())?,
                urls.iter()
                    .map(|u| redis::Client::open(u.as_str()))
                    .collect::<Result<_, _>>()?,
            ))
        }
        (Some(url), None) => Some(Redis::Server(redis::Client::open(url.expose())?)),
        (None, None) => None,
    };
    let redis_procs = args.redis_pid.len();
    let target = Target {
        nodes: args.nodes,
        procs: args
            .node_pids
            .iter()
            .enumerate()
            .map(|(i, pid)| (format!("node {}", i + args.first_node), *pid))
            .chain(args.redis_pid.iter().enumerate().map(|(i, pid)| {
                let label = if redis_procs == 1 {
                    "redis-server".to_owned()
                } else {
                    format!("redis-server {}", i + 1)
                };
                (label, *pid)
            }))
            .chain([("load generator".to_owned(), std::process::id())])
            .collect(),
        redis,
        prefix: args.key_prefix,
        secret: args.jwt_secret,
        concurrency: args.connect_concurrency.max(1),
        run: format!("lg{}", relay::events::now_ms() % 1_000_000_000),
    };
    let report = match args.scenario {
        Scenario::Location {
            drivers,
            rate,
            duration_s,
            warmup_s,
        } => {
            location::run(
                &target,
                drivers,
                rate,
                Duration::from_secs(duration_s),
                Duration::from_secs(warmup_s),
            )
            .await?
        }
        Scenario::Ceiling {
            drivers,
            from,
            max,
            p99_limit_ms,
            rounds,
            duration_s,
            warmup_s,
        } => {
            ceiling::run(
                &target,
                ceiling::CeilingArgs {
                    drivers,
                    from,
                    max,
                    p99_limit: Duration::from_millis(p99_limit_ms),
                    rounds,
                    duration: Duration::from_secs(duration_s),
                    warmup: Duration::from_secs(warmup_s),
                },
            )
            .await?
        }
        Scenario::Idle {
            connections,
            steps,
            settle_s,
            after_leave_s,
        } => {
            idle::run(
                &target,
                idle::IdleArgs {
                    per_node: connections,
                    steps,
                    settle: Duration::from_secs(settle_s),
                    after_leave: after_leave_s.map(Duration::from_secs),
                },
            )
            .await?
        }
        Scenario::Orders {
            customers,
            rate,
            duration_s,
        } => order_events::run(&target, customers, rate, Duration::from_secs(duration_s)).await?,
        Scenario::Storm {
            clients,
            survivor_clients,
            rate,
            warmup_s,
            limit_s,
        } => {
            storm::run(
                &target,
                storm::StormArgs {
                    clients,
                    survivor_clients,
                    rate,
                    warmup: Duration::from_secs(warmup_s),
                    limit: Duration::from_secs(limit_s),
                },
            )
            .await?
        }
        Scenario::Chat {
            pairs,
            rate,
            duration_s,
        } => chat::run(&target, pairs, rate, Duration::from_secs(duration_s)).await?,
        Scenario::Presence { drivers, grace_ms } => {
            presence::run(&target, drivers, Duration::from_millis(grace_ms)).await?
        }
    };
    println!("{report}");
    if let Some(path) = args.report {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(file, "{report}")?;
    }
    Ok(())
}

impl Target {
    fn token(&self, sub: &str, role: Role) -> String {
        mint_hs256(
            &self.secret,
            sub,
            role,
            &[],
            Duration::from_secs(24 * 3600),
            None,
            None,
        )
        .expect("an HS256 token can always be signed")
    }

    fn node(&self, i: usize) -> &str {
        &self.nodes[i % self.nodes.len()]
    }

    fn redis(&self) -> Result<&Redis, LoadgenError> {
        self.redis.as_ref().ok_or_else(|| {
            LoadgenError::Setup(
                "this scenario needs --redis-url (REDIS_URL) or REDIS_CLUSTER_URLS".into(),
            )
        })
    }

    async fn connection(&self) -> Result<RedisConn, LoadgenError> {
        Ok(match self.redis()? {
            Redis::Server(client) => {
                let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
                RedisConn::Server(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Redis::Cluster(client, _) => RedisConn::Cluster(client.get_async_connection().await?),
        })
    }

    /// Redis's bytes sent to its clients, when Redis is known: INFO stats'
    /// `total_net_output_bytes` less `total_net_repl_output_bytes` (Redis 7
    /// counts what a primary sends its replicas in the first too); on a
    /// cluster summed over every node given.
    async fn redis_bytes_sent(&self) -> Option<u64> {
        let servers = match self.redis.as_ref()? {
            Redis::Server(client) => std::slice::from_ref(client),
            Redis::Cluster(_, nodes) => nodes.as_slice(),
        };
        let mut sum = 0;
        for server in servers {
            let mut conn = server.get_multiplexed_async_connection().await.ok()?;
            let info: String = redis::cmd("INFO")
                .arg("stats")
                .query_async(&mut conn)
                .await
                .ok()?;
            let stat = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            let replication = stat("total_net_repl_output_bytes:").unwrap_or(0);
            sum += stat("total_net_output_bytes:")?.saturating_sub(replication);
        }
        Some(sum)
    }

    /// Opens `count` WebSocket clients of `role`: client `i` is user
    /// `sub(i)` on node `i + node_offset` (round-robin).
    async fn connect_as(
        &self,
        role: Role,
        count: usize,
        node_offset: usize,
        sub: impl Fn(usize) -> String,
    ) -> Result<Vec<Client>, LoadgenError> {
        self.connect_all(
            (0..count)
                .map(|i| {
                    (
                        self.node(i + node_offset).to_owned(),
                        self.token(&sub(i), role),
                    )
                })
                .collect(),
        )
        .await
    }

    /// Opens WebSocket clients, `concurrency` handshakes at a time.
    async fn connect_all(
        &self,
        clients: Vec<(String, String)>,
    ) -> Result<Vec<Client>, LoadgenError> {
        let connected: Vec<_> = stream::iter(clients)
            .map(|(url, token)| async move {
                // Like a real client: a failed handshake is retried after a
                // pause, and a node shedding load (503) is given the pause
                // its Retry-After asks for; being shed uses up no attempt,
                // so that setting up behind a connection rate limit works.
                let mut attempt = 0;
                let deadline = tokio::time::Instant::now() + SETUP_DEADLINE;
                loop {
                    let connected = Client::connect(
                        ConnectOptions::new(url.clone())
                            .transport(Transport::WebSocket)
                            .auth(json!({ "token": token }))
                            .timeout(Duration::from_secs(30)),
                    )
                    .await;
                    match connected {
                        Err(e)
                            if e.retry_after().is_some()
                                && tokio::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(e.retry_after().unwrap_or_default()).await;
                        }
                        Err(_) if attempt + 1 < CONNECT_ATTEMPTS => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        result => break result,
                    }
                }
            })
            .buffered(self.concurrency)
            .collect()
            .await;
        connected
            .into_iter()
            .map(|c| c.map_err(Into::into))
            .collect()
    }

    /// Appends `events` and waits until the group has handled all of them.
    async fn append_and_settle(
        &self,
        events: Vec<(&'static str, serde_json::Value)>,
    ) -> Result<(), LoadgenError> {
        let mut conn = self.connection().await?;
        let stream = format!("{}events", self.prefix);
        for chunk in events.chunks(1000) {
            let mut pipe = redis::pipe();
            for (kind, data) in chunk {
                pipe.cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("type")
                    .arg(*kind)
                    .arg("data")
                    .arg(data.to_string())
                    .ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
        }
        self.settle(&mut conn, Duration::from_secs(120)).await
    }

    /// Waits until the consumer group has handled (acknowledged) every
    /// entry of the stream, within `limit`.
    async fn settle(&self, conn: &mut RedisConn, limit: Duration) -> Result<(), LoadgenError> {
        let stream = format!("{}events", self.prefix);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async(conn)
                .await?;
            let settled = groups.iter().any(|g| {
                let num = |k: &str| {
                    g.get(k)
                        .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
                };
                num("pending") == Some(0) && num("lag") == Some(0)
            });
            if settled {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(LoadgenError::Setup(format!(
                    "the relay did not handle every event within {limit:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn node_procs(&self) -> Vec<&str> {
        self.procs
            .iter()
            .map(|(label, _)| label.as_str())
            .filter(|label| label.starts_with("node"))
            .collect()
    }

    fn samples(&self) -> Vec<Option<ProcSample>> {
        self.procs
            .iter()
            .map(|(_, pid)| ProcSample::read(*pid))
            .collect()
    }

    async fn scrape(&self) -> Vec<String> {
        let http = reqwest::Client::new();
        let mut texts = Vec::new();
        for node in &self.nodes {
            let text = match http.get(format!("{node}/metrics")).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            texts.push(text);
        }
        texts
    }
}

/// Per node: cores used over `elapsed` and RSS at the end, as table rows.
/// A row of CPU and RSS per process, and the CPU of the nodes together.
fn node_rows(
    target: &Target,
    before: &[Option<ProcSample>],
    after: &[Option<ProcSample>],
    elapsed: Duration,
) -> (String, Duration) {
    let mut rows = String::new();
    let mut total_cpu = Duration::ZERO;
    // A cluster's processes, summed: what Redis costs in all.
    let (mut redis_cpu, mut redis_rss, mut redis_procs) = (Duration::ZERO, 0, 0);
    for ((label, _), (b, a)) in target.procs.iter().zip(before.iter().zip(after)) {
        if let (Some(b), Some(a)) = (b, a) {
            let cpu = a.cpu.saturating_sub(b.cpu);
            if label.starts_with("node") {
                total_cpu += cpu;
            }
            if label.starts_with("redis-server") {
                redis_cpu += cpu;
                redis_rss += a.rss_kib;
                redis_procs += 1;
            }
            rows.push_str(&format!(
                "| {label} | {:.2} cores | {:.1} MiB |\n",
                cpu.as_secs_f64() / elapsed.as_secs_f64(),
                a.rss_kib as f64 / 1024.0
            ));
        }
    }
    if redis_procs > 1 {
        rows.push_str(&format!(
            "| redis-server, all {redis_procs} | {:.2} cores | {:.1} MiB |\n",
            redis_cpu.as_secs_f64() / elapsed.as_secs_f64(),
            redis_rss as f64 / 1024.0
        ));
    }
    (rows, total_cpu)
}
