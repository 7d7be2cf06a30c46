//! A private Redis Cluster: three primaries with one replica each, six
//! `redis-server --cluster-enabled yes` processes on loopback joined by
//! `redis-cli --cluster create`, in a directory of their own; killed and
//! removed on drop. It starts in about a second. [`RedisCluster::start_tls`]
//! starts one that speaks TLS only, on its client ports, its cluster bus and
//! its replication links, as managed clusters with in-transit encryption do.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use redis::{
    ClientTlsConfig, TlsCertificates,
    cluster::{ClusterClientBuilder, ClusterConfig},
    cluster_async::ClusterConnection,
};
use tokio::process::{Child, Command};

use super::{TestCerts, WAIT};

/// Node timeout of a cluster started with [`RedisCluster::start`]: how
/// long a primary must be silent before its replica takes over.
pub const NODE_TIMEOUT_MS: u64 = 2000;

pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<ClusterNode>,
    dial: Dial,
}

/// How the test process reaches a node: plain TCP, or TLS with the test CA
/// (and the client certificate, which a mutual-TLS cluster requires).
#[derive(Clone)]
enum Dial {
    Plain,
    Tls(Arc<TlsFiles>),
}

struct TlsFiles {
    /// Paths, for `redis-server` and `redis-cli`.
    ca: String,
    cert: String,
    key: String,
    server_cert: String,
    server_key: String,
    mutual: bool,
    /// The same files' contents, for the redis crate.
    certificates: TlsCertificates,
}

impl Dial {
    fn url(&self, port: u16) -> String {
        match self {
            Self::Plain => format!("redis://127.0.0.1:{port}"),
            Self::Tls(_) => format!("rediss://127.0.0.1:{port}"),
        }
    }

    async fn node(&self, port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_connection_timeout(Some(Duration::from_secs(1)));
        let client = match self {
            Self::Plain => redis::Client::open(self.url(port))?,
            Self::Tls(files) => {
                redis::Client::build_with_tls(self.url(port), files.certificates.clone())?
            }
        };
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

struct ClusterNode {
    port: u16,
    child: Option<Child>,
}

/// One node's view of a slot range: who serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub primary: u16,
}

impl RedisCluster {
    pub async fn start() -> Self {
        Self::start_with_node_timeout(NODE_TIMEOUT_MS).await
    }

    /// With a node timeout of its own (shorter in failover tests).
    pub async fn start_with_node_timeout(node_timeout_ms: u64) -> Self {
        Self::start_dialing(Dial::Plain, node_timeout_ms).await
    }

    /// A cluster that speaks TLS only, with certificates `certs` signed;
    /// `mutual`: it requires a client certificate of every client.
    pub async fn start_tls(certs: &TestCerts, mutual: bool) -> Self {
        let read = |file: &str| std::fs::read(certs.path(file)).expect("certificate file");
        let files = TlsFiles {
            ca: certs.path("ca.crt"),
            cert: certs.path("client.crt"),
            key: certs.path("client.key"),
            server_cert: certs.path("server.crt"),
            server_key: certs.path("server.key"),
            mutual,
            certificates: TlsCertificates {
                client_tls: mutual.then(|| ClientTlsConfig {
                    client_cert: read("client.crt"),
                    client_key: read("client.key"),
                }),
                root_cert: Some(read("ca.crt")),
            },
        };
        // The redis crate's rustls needs the process-wide provider the
        // relay's engine installs too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self::start_dialing(Dial::Tls(Arc::new(files)), NODE_TIMEOUT_MS).await
    }

    async fn start_dialing(dial: Dial, node_timeout_ms: u64) -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "redis-cluster-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut cluster = Self {
            dir,
            nodes: Vec::new(),
            dial,
        };
        for port in cluster_ports(6) {
            let child = cluster.spawn_node(port, node_timeout_ms);
            cluster.nodes.push(ClusterNode {
                port,
                child: Some(child),
            });
        }
        for node in &cluster.nodes {
            wait_for_ping(&cluster.dial, node.port).await;
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("redis-cli");
        if let Dial::Tls(files) = &cluster.dial {
            create.args(["--tls", "--cacert", &files.ca]).args([
                "--cert",
                &files.cert,
                "--key",
                &files.key,
            ]);
        }
        let created = create
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .await
            .expect("redis-cli must be installed (Debian package redis-tools, with redis-server)");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_until(true).await;
        cluster
    }

    fn spawn_node(&self, port: u16, node_timeout_ms: u64) -> Child {
        let conf = self.dir.join(format!("nodes-{port}.conf"));
        let mut server = Command::new("redis-server");
        match &self.dial {
            Dial::Plain => server.args(["--port", &port.to_string()]),
            // The bus (port + 10000) and replication speak TLS too; a node
            // shows the client certificate to the others, which a server
            // certificate (serverAuth only) could not be.
            Dial::Tls(files) => server
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                .args(["--tls-cert-file", &files.server_cert])
                .args(["--tls-key-file", &files.server_key])
                .args(["--tls-client-cert-file", &files.cert])
                .args(["--tls-client-key-file", &files.key])
                .args(["--tls-ca-cert-file", &files.ca])
                .args([
                    "--tls-auth-clients",
                    if files.mutual { "yes" } else { "no" },
                ]),
        };
        server
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(&conf)
            .args(["--cluster-node-timeout", &node_timeout_ms.to_string()])
            // A replica takes over however long ago it last heard its primary.
            .args(["--cluster-replica-validity-factor", "0"])
            // A replica's first sync starts at once, not after the default 5 s
            // wait for other replicas.
            .args(["--repl-diskless-sync-delay", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)")
    }

    /// Every seed, comma-separated: REDIS_CLUSTER_URLS.
    pub fn seeds(&self) -> String {
        self.seed_urls().join(",")
    }

    /// `redis://` or, on a TLS cluster, `rediss://` URLs of every node.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| self.dial.url(n.port)).collect()
    }

    /// A cluster connection without a response timeout, so that tests can
    /// wait with XREAD BLOCK.
    pub async fn connection(&self) -> ClusterConnection {
        let mut builder = ClusterClientBuilder::new(self.seed_urls());
        if let Dial::Tls(files) = &self.dial {
            builder = builder.certs(files.certificates.clone());
        }
        builder
            .build()
            .expect("cluster client")
            .get_async_connection_with_config(ClusterConfig::new())
            .await
            .expect("connect to test cluster")
    }

    /// Waits until every live node says `cluster_state:ok` and they all
    /// agree on who serves every slot.
    pub async fn wait_ok(&self) {
        self.wait_until(false).await;
    }

    /// As [`Self::wait_ok`]; with `replicas`, also until every shard has a
    /// replica in sync (Redis lists a replica in CLUSTER SLOTS only once its
    /// first sync is done: a failover before that loses the shard's data).
    async fn wait_until(&self, replicas: bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.is_ok(replicas).await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis cluster not ok within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn is_ok(&self, replicas: bool) -> bool {
        let mut views = Vec::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Ok(mut conn) = self.dial.node(node.port).await else {
                return false;
            };
            let info: String = match redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
            {
                Ok(info) => info,
                Err(_) => return false,
            };
            if !info.contains("cluster_state:ok") {
                return false;
            }
            match shards_seen_by(&self.dial, node.port).await {
                Some(view) => views.push(view),
                None => return false,
            }
        }
        if replicas && let Some(view) = views.first() {
            for (_, shard) in view {
                if !replicas_in_sync(&self.dial, shard.primary).await {
                    return false;
                }
            }
        }
        views.windows(2).all(|w| w[0] == w[1])
    }

    /// Who serves the slot of `key`, as the live nodes see it.
    pub async fn shard_of(&self, key: &str) -> Shard {
        let slot = slot_of(key);
        let port = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node")
            .port;
        let shards = shards_seen_by(&self.dial, port)
            .await
            .expect("CLUSTER SHARDS");
        shards
            .into_iter()
            .find(|(range, _)| range.0 <= slot && slot <= range.1)
            .map(|(_, shard)| shard)
            .unwrap_or_else(|| panic!("no shard serves slot {slot}"))
    }

    /// SIGKILL of the primary that serves `key`; returns its port.
    pub async fn kill_primary_of(&mut self, key: &str) -> u16 {
        let shard = self.shard_of(key).await;
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == shard.primary)
            .expect("primary is ours");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill().await;
        }
        shard.primary
    }

    /// Waits until a replica has taken over the slot of `key` from `old`.
    pub async fn wait_promoted(&self, key: &str, old: u16) -> u16 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let shard = self.shard_of(key).await;
            if shard.primary != old {
                self.wait_ok().await;
                return shard.primary;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no replica promoted within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the shard of `key` has a replica that finished its sync.
    pub async fn wait_replicas_synced(&self, key: &str) {
        let shard = self.shard_of(key).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while !replicas_in_sync(&self.dial, shard.primary).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no replica of {key}'s shard in sync within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Moves the slot of `key` to another primary with `redis-cli --cluster
    /// reshard`, keys and all, while clients keep using it (they follow the
    /// ASK and MOVED redirections). Returns the primaries (from, to).
    pub async fn reshard_slot_of(&self, key: &str) -> (u16, u16) {
        let migration = self.begin_migration(key).await;
        while migration.migrate_some(100).await > 0 {}
        migration.finish().await;
        self.wait_ok().await;
        (migration.from, migration.to)
    }

    /// Starts moving the slot of `key` to another primary: IMPORTING on the
    /// target, MIGRATING on the source. Keys stay on the source until
    /// [`Migration::migrate_some`] moves them; meanwhile the source answers
    /// ASK for a key it no longer has (or never had).
    pub async fn begin_migration(&self, key: &str) -> Migration {
        let slot = slot_of(key);
        let from = self.shard_of(key).await.primary;
        let shards = shards_seen_by(&self.dial, from)
            .await
            .expect("CLUSTER SHARDS");
        let to = shards
            .iter()
            .map(|(_, s)| s.primary)
            .find(|p| *p != from)
            .expect("another primary");
        let id = |port: u16| async move {
            let mut conn = self.dial.node(port).await.expect("node");
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async::<String>(&mut conn)
                .await
                .expect("CLUSTER MYID")
        };
        let (from_id, to_id) = (id(from).await, id(to).await);
        let mut others: Vec<u16> = shards
            .iter()
            .map(|(_, s)| s.primary)
            .filter(|p| *p != to && *p != from)
            .collect();
        others.dedup();
        let migration = Migration {
            slot,
            from,
            to,
            from_id,
            to_id,
            others,
            dial: self.dial.clone(),
        };
        // `--cluster reshard` moves a number of slots from a node; the
        // exact one, step by step, is the documented SETSLOT/MIGRATE dance.
        let () = migration
            .setslot("IMPORTING", &migration.from_id)
            .query_async(&mut self.dial.node(to).await.expect("to"))
            .await
            .expect("IMPORTING");
        let () = migration
            .setslot("MIGRATING", &migration.to_id)
            .query_async(&mut self.dial.node(from).await.expect("from"))
            .await
            .expect("MIGRATING");
        migration
    }

    /// Runs `cmd` on every live node, replicas included (SCRIPT FLUSH).
    pub async fn on_every_node(&self, cmd: &redis::Cmd) {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let mut conn = self.dial.node(node.port).await.expect("node");
            let _: redis::Value = cmd.query_async(&mut conn).await.expect("command on a node");
        }
    }
}

/// A slot on its way from one primary to another ([`RedisCluster::begin_migration`]).
pub struct Migration {
    pub slot: u16,
    pub from: u16,
    pub to: u16,
    from_id: String,
    to_id: String,
    others: Vec<u16>,
    dial: Dial,
}

impl Migration {
    fn setslot(&self, what: &str, node: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(self.slot).arg(what).arg(node);
        cmd
    }

    /// MIGRATE of up to `count` of the slot's keys still on the source;
    /// returns how many moved.
    pub async fn migrate_some(&self, count: usize) -> usize {
        let mut src = self.dial.node(self.from).await.expect("from");
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(self.slot)
            .arg(count)
            .query_async(&mut src)
            .await
            .expect("GETKEYSINSLOT");
        if keys.is_empty() {
            return 0;
        }
        let () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(self.to)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query_async(&mut src)
            .await
            .expect("MIGRATE");
        keys.len()
    }

    /// Gives the slot to the target: the new owner first, then the old one,
    /// then the other primaries (replicas learn it from their primaries).
    /// The source answers MOVED from here on. Keys still on the source are
    /// moved first.
    pub async fn finish(&self) {
        while self.migrate_some(100).await > 0 {}
        let mut primaries = vec![self.to, self.from];
        primaries.extend(self.others.iter().copied());
        for port in primaries {
            let mut conn = self.dial.node(port).await.expect("node");
            let _: redis::Value = self
                .setslot("NODE", &self.to_id)
                .query_async(&mut conn)
                .await
                .expect("SETSLOT NODE");
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The hash slot of a key, as Redis computes it (first `{...}` only).
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|b| *b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|b| *b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

/// Six ports whose cluster bus ports (port + 10000) are free too: the
/// ephemeral range (from 32768) is kept clear of both.
fn cluster_ports(n: usize) -> Vec<u16> {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new();
    let mut ports = Vec::new();
    let mut attempt: u64 = 0;
    while ports.len() < n {
        attempt += 1;
        assert!(attempt < 10_000, "no free cluster ports");
        let port = 20_000 + (random.hash_one(attempt) % 2_700) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !ports.contains(&port) && free(port) && free(port + 10_000) {
            ports.push(port);
        }
    }
    ports
}

/// A plain connection to one node of a cluster made with
/// [`RedisCluster::start`].
pub async fn node_connection(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    Dial::Plain.node(port).await
}

async fn wait_for_ping(dial: &Dial, port: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(mut conn) = dial.node(port).await
            && redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster node {port} did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `primary` has replicas and each finished its first sync. Redis
/// lists a replica in CLUSTER SLOTS only seconds later (once its offset
/// has gone round the cluster bus), so they are found in CLUSTER NODES.
async fn replicas_in_sync(dial: &Dial, primary: u16) -> bool {
    let Ok(mut conn) = dial.node(primary).await else {
        return false;
    };
    let Ok(nodes) = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async::<String>(&mut conn)
        .await
    else {
        return false;
    };
    let port_of =
        |addr: &str| -> Option<u16> { addr.split('@').next()?.rsplit(':').next()?.parse().ok() };
    let lines: Vec<Vec<&str>> = nodes.lines().map(|l| l.split(' ').collect()).collect();
    let Some(id) = lines
        .iter()
        .find(|f| f.len() > 3 && port_of(f[1]) == Some(primary))
        .map(|f| f[0])
    else {
        return false;
    };
    let replicas: Vec<u16> = lines
        .iter()
        .filter(|f| f.len() > 3 && f[3] == id && f[2].contains("slave") && !f[2].contains("fail"))
        .filter_map(|f| port_of(f[1]))
        .collect();
    if replicas.is_empty() {
        return false;
    }
    for replica in replicas {
        let Ok(mut conn) = dial.node(replica).await else {
            return false;
        };
        let info: String = match redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
        {
            Ok(info) => info,
            Err(_) => return false,
        };
        if !info.contains("master_link_status:up") {
            return false;
        }
    }
    true
}

/// `CLUSTER SLOTS` as one node sees it: slot ranges and their shards,
/// sorted. None when the node does not answer.
async fn shards_seen_by(dial: &Dial, port: u16) -> Option<Vec<((u16, u16), Shard)>> {
    let mut conn = dial.node(port).await.ok()?;
    let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await
        .ok()?;
    let mut out = Vec::new();
    for range in slots {
        let redis::Value::Array(parts) = range else {
            return None;
        };
        let int = |v: &redis::Value| match v {
            redis::Value::Int(n) => Some(*n),
            _ => None,
        };
        let (start, end) = (int(parts.first()?)? as u16, int(parts.get(1)?)? as u16);
        let primary = parts[2..].iter().find_map(|node| match node {
            redis::Value::Array(n) => n.get(1).and_then(int).map(|p| p as u16),
            _ => None,
        });
        let primary = primary?;
        out.push(((start, end), Shard { primary }));
    }
    out.sort_by_key(|(range, _)| *range);
    Some(out)
}
