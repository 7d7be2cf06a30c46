//! The Redis engine: what every node of a cluster shares.

mod chat;
mod history;
mod idempotency;
mod keys;
mod link;
mod locations;
mod node_pipelines;
mod nodes;
mod order_store;
mod presence;
mod pubsub;
mod rooms;
mod sessions;
mod slots;
mod stream;
mod values;
mod watches;

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion,
    TlsCertificates,
    aio::ConnectionManagerConfig,
    cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig},
};
use socketioxide::adapter::Emitter;
use socketioxide_redis::{
    CustomRedisAdapter, InitError, InitRes, RedisAdapterConfig, RedisAdapterCtr,
    drivers::{ChanItem, Driver, MessageStream},
};
use tokio_util::sync::CancellationToken;

pub use chat::RedisChat;
pub use history::RedisHistory;
use keys::KeySpace;
/// Public for the integration tests of the per-node pipelines only.
#[doc(hidden)]
pub use link::Link;
pub use locations::RedisLocations;
use node_pipelines::NodePipelines;
use nodes::NodeClient;
pub use order_store::RedisOrders;
pub use presence::RedisPresence;
pub use pubsub::{PubSubDriver, PubSubError};
pub use rooms::RedisRooms;
use slots::NodeAddr;
pub use stream::{RedisStream, StreamSettings};
pub use watches::RedisWatches;

use super::{Engine, EngineError, Health, log_redis_failure, redis_failure};
use crate::config::{RedisTarget, RedisTls};
use crate::metrics::RedisFailure;
use crate::tasks::{Tasks, names};

/// How often the link to Redis is checked for `/readyz`.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// From subscribing every channel again to the probe that confirms it.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(50);

/// The channel of the health probe. On a cluster it lies in the slot of
/// the adapter's broadcast channel (`base` with a numbered suffix; its name
/// still starts with the prefix, so an ACL channel pattern covers it): a
/// probe that comes back then proves that this node's subscription on the
/// shard every cross-node broadcast goes through is live, on the current
/// owner, after a failover too. Another slot proved only its own shard.
fn probe_channel(base: &str, beside: &str, cluster: bool) -> String {
    use redis::cluster_routing::Slot;
    if !cluster {
        return base.to_owned();
    }
    let target = Slot::for_key(beside);
    // 16,384 slots: about as many tries on average; none fits when `base`
    // holds a hash tag of its own (a brace in the node id).
    (0..1_000_000u32)
        .map(|n| format!("{base}#{n}"))
        .find(|name| Slot::for_key(name) == target)
        .unwrap_or_else(|| base.to_owned())
}

/// Failed health probes in a row after which every connection is dropped
/// and dialed again: a link that went silent never fails on its own.
const REDIAL_AFTER_FAILED_PROBES: u32 = 3;

pub struct RedisEngine {
    driver: PubSubDriver,
    /// Every command connection, for redialing a silent link.
    links: Vec<Link>,
    commands: Link,
    space: KeySpace,
    channel_prefix: String,
    probe_channel: String,
    stream: RedisStream,
    orders: RedisOrders,
    locations: RedisLocations,
    history: RedisHistory,
    presence: RedisPresence,
    rooms: RedisRooms,
    watches: RedisWatches,
    chat: RedisChat,
}

/// What the Redis engine needs from the configuration.
pub struct RedisSettings<'a> {
    /// One server or the seeds of a cluster.
    pub target: &'a RedisTarget,
    /// CA and client certificate for `rediss://` URLs.
    pub tls: &'a RedisTls,
    pub key_prefix: &'a str,
    pub node_id: &'a str,
    pub claim_idle: Duration,
    pub max_deliveries: u32,
    /// Stream entries beyond this size go to the dead letters unread.
    pub max_event_bytes: usize,
    pub location_ttl: Duration,
    pub history_size: usize,
    pub history_ttl: Duration,
}

impl RedisEngine {
    /// Prepares the connections without dialing: a node starts (unready)
    /// while Redis is still unreachable. Must run inside the runtime. The
    /// engine's own tasks run detached, for as long as the process.
    pub fn new(settings: RedisSettings<'_>) -> Result<Self, EngineError> {
        Self::with_tasks(settings, &Tasks::new(), CancellationToken::new())
    }

    /// As [`Self::new`], with the engine's own long-lived tasks (sequencing
    /// notices) in the node's `tasks`. They end at `stop`,
    /// which a node cancels last, once nothing uses the engine any more.
    pub fn with_tasks(
        settings: RedisSettings<'_>,
        tasks: &Tasks,
        stop: CancellationToken,
    ) -> Result<Self, EngineError> {
        let links = Links::open(settings.target, settings.tls)?;
        let Links {
            driver,
            commands,
            blocking,
        } = links;
        let links = vec![commands.clone(), blocking.clone()];
        // Restarted after a panic: the queue of moved channels outlives it.
        tasks.spawn_restarting(names::MOVED_CHANNELS, {
            let (driver, stop) = (driver.clone(), stop.clone());
            move || {
                let (driver, stop) = (driver.clone(), stop.clone());
                async move { driver.follow_moves(stop).await }
            }
        });
        let prefix = settings.key_prefix;
        let space = KeySpace::new(prefix, settings.target.is_cluster());
        let stream = RedisStream::new(
            commands.clone(),
            blocking,
            driver.clone(),
            StreamSettings {
                prefix,
                node: settings.node_id,
                claim_idle: settings.claim_idle,
                max_deliveries: settings.max_deliveries,
                max_event_bytes: settings.max_event_bytes,
            },
            tasks,
            stop,
        );
        let rooms = RedisRooms::new(driver.clone(), prefix);
        Ok(Self {
            driver: driver.clone(),
            links,
            commands: commands.clone(),
            space: space.clone(),
            // The stock `socket.io` prefix would collide with Node's adapter.
            channel_prefix: format!("{prefix}sio"),
            probe_channel: probe_channel(
                &format!("{prefix}health#{}#{}", settings.node_id, std::process::id()),
                &format!("{prefix}sio-request#/#"),
                commands.is_cluster(),
            ),
            stream,
            presence: RedisPresence::new(commands.clone(), prefix),
            orders: RedisOrders::new(commands.clone(), &space),
            watches: RedisWatches::new(commands.clone(), prefix),
            chat: RedisChat::new(commands.clone(), prefix),
            history: RedisHistory::new(
                commands.clone(),
                rooms.clone(),
                &space,
                settings.history_size,
                settings.history_ttl,
            ),
            locations: RedisLocations::new(commands, &space, settings.location_ttl),
            rooms,
        })
    }
}

/// The engine's connections: pub/sub (RESP3, for push messages), commands,
/// and one for the consumer's blocking read.
struct Links {
    driver: PubSubDriver,
    commands: Link,
    blocking: Link,
}

impl Links {
    fn open(target: &RedisTarget, tls: &RedisTls) -> Result<Self, EngineError> {
        // XREAD BLOCK needs its own connection and a response timeout above
        // the block time: the default 500 ms would fail every blocking read.
        let blocking_timeout = Duration::from_secs(10);
        match target {
            RedisTarget::Server(url) => {
                let info = url
                    .expose()
                    .into_connection_info()
                    .map_err(|e| EngineError::BadUrl(e.kind()))?;
                let resp2 = open_client(info.clone(), tls).map_err(EngineError::Client)?;
                // The adapter's pub/sub rides on RESP3 push messages, whatever the URL says.
                let redis_settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let resp3 = open_client(info.set_redis_settings(redis_settings), tls)
                    .map_err(EngineError::Client)?;
                let driver = PubSubDriver::new(|router| {
                    let config = connection_config()
                        .set_push_sender(router)
                        .set_automatic_resubscription();
                    Link::server(resp3, config)
                })
                .map_err(EngineError::Client)?;
                let lazy =
                    |config| Link::server(resp2.clone(), config).map_err(EngineError::Client);
                Ok(Self {
                    driver,
                    commands: lazy(connection_config())?,
                    blocking: lazy(
                        connection_config().set_response_timeout(Some(blocking_timeout)),
                    )?,
                })
            }
            RedisTarget::Cluster(seeds) => {
                let infos = seeds
                    .iter()
                    .map(|seed| seed.expose().into_connection_info())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| EngineError::BadClusterUrls(e.kind()))?;
                let resp2 = open_cluster(&infos, tls, ProtocolVersion::RESP2)
                    .map_err(EngineError::Client)?;
                let resp3 = open_cluster(&infos, tls, ProtocolVersion::RESP3)
                    .map_err(EngineError::Client)?;
                let seed = &infos[0];
                let driver = PubSubDriver::new(|router| {
                    Link::cluster(
                        resp3,
                        cluster_config().set_push_sender(router),
                        node_pipelines(seed, tls, ProtocolVersion::RESP3, RESPONSE_TIMEOUT),
                    )
                })
                .map_err(EngineError::Client)?;
                let lazy = |config, timeout| {
                    let pipelines = node_pipelines(seed, tls, ProtocolVersion::RESP2, timeout);
                    Link::cluster(resp2.clone(), config, pipelines).map_err(EngineError::Client)
                };
                Ok(Self {
                    driver,
                    commands: lazy(cluster_config(), RESPONSE_TIMEOUT)?,
                    blocking: lazy(
                        cluster_config().set_response_timeout(blocking_timeout),
                        blocking_timeout,
                    )?,
                })
            }
        }
    }
}

/// A Redis Cluster client on the seeds, with the same TLS files as one
/// server gets; it finds the other nodes from the seeds' slot map.
fn open_cluster(
    seeds: &[ConnectionInfo],
    tls: &RedisTls,
    protocol: ProtocolVersion,
) -> redis::RedisResult<ClusterClient> {
    let is_tls = seeds
        .iter()
        .any(|info| matches!(info.addr(), ConnectionAddr::TcpTls { .. }));
    let mut builder = ClusterClientBuilder::new(seeds.to_vec())
        .use_protocol(protocol)
        // Fail fast, as on one server: callers retry on their own schedule.
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(500);
    if is_tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if !tls.is_empty() {
            builder = builder.certs(TlsCertificates {
                client_tls: tls.client.as_ref().map(|c| ClientTlsConfig {
                    client_cert: c.cert_pem.clone(),
                    client_key: c.key_pem.clone(),
                }),
                root_cert: tls.ca_pem.clone(),
            });
        }
    }
    builder.build()
}

/// How long dialing a Redis connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a command may wait for its reply (blocking reads aside).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// As [`connection_config`], for a cluster connection.
fn cluster_config() -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
}

/// The per-node pipelines of a cluster link. Each primary's client is made
/// as the seeds' are (scheme, TLS files, ACL user and password, protocol),
/// on the host and port `CLUSTER SLOTS` gives for it.
fn node_pipelines(
    seed: &ConnectionInfo,
    tls: &RedisTls,
    protocol: ProtocolVersion,
    response_timeout: Duration,
) -> NodePipelines {
    let (seed, tls) = (seed.clone(), tls.clone());
    let settings = seed.redis_settings().clone().set_protocol(protocol);
    let client: NodeClient = Arc::new(move |node: &NodeAddr| {
        let addr = match seed.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host: node.host.clone(),
                port: node.port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(node.host.clone(), node.port),
        };
        let info = seed
            .clone()
            .set_addr(addr)
            .set_redis_settings(settings.clone());
        open_client(info, &tls)
    });
    NodePipelines::new(client, CONNECT_TIMEOUT, response_timeout)
}

/// Every Redis client of the engine is made here, so that every connection
/// (commands, blocking reads, pub/sub) speaks TLS with the same files.
fn open_client(info: ConnectionInfo, tls: &RedisTls) -> redis::RedisResult<redis::Client> {
    if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        return redis::Client::open(info);
    }
    // rustls needs one process-wide crypto provider; a second install (another
    // node in the same process) is refused, harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if tls.is_empty() {
        // The system's roots.
        return redis::Client::open(info);
    }
    redis::Client::build_with_tls(
        info,
        TlsCertificates {
            client_tls: tls.client.as_ref().map(|c| ClientTlsConfig {
                client_cert: c.cert_pem.clone(),
                client_key: c.key_pem.clone(),
            }),
            root_cert: tls.ca_pem.clone(),
        },
    )
}

/// Fail fast while Redis is away (callers retry on their own schedule)
/// rather than park every emit behind a long reconnect back-off.
fn connection_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

impl Engine for RedisEngine {
    type Adapter = CustomRedisAdapter<Emitter, PubSubDriver>;
    type Stream = RedisStream;
    type Orders = RedisOrders;
    type Locations = RedisLocations;
    type History = RedisHistory;
    type Presence = RedisPresence;
    type Rooms = RedisRooms;
    type Watches = RedisWatches;
    type Chat = RedisChat;

    fn stream(&self) -> &RedisStream {
        &self.stream
    }

    fn orders(&self) -> &RedisOrders {
        &self.orders
    }

    fn locations(&self) -> &RedisLocations {
        &self.locations
    }

    fn history(&self) -> &RedisHistory {
        &self.history
    }

    fn presence(&self) -> &RedisPresence {
        &self.presence
    }

    fn rooms(&self) -> &RedisRooms {
        &self.rooms
    }

    fn watches(&self) -> &RedisWatches {
        &self.watches
    }

    fn chat(&self) -> &RedisChat {
        &self.chat
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn adapter_state(&self) -> RedisAdapterCtr<PubSubDriver> {
        RedisAdapterCtr::new_with_driver(
            self.driver.clone(),
            RedisAdapterConfig::new().with_prefix(self.channel_prefix.clone()),
        )
    }

    fn user_sessions(&self, instance: &str) -> Option<std::sync::Arc<dyn super::UserSessions>> {
        Some(std::sync::Arc::new(sessions::RedisUserSessions::new(
            self.commands.clone(),
            &self.space,
            instance.to_owned(),
        )))
    }

    async fn finish_init(init: InitRes<PubSubDriver>) -> Result<(), EngineError> {
        init.await.map_err(|e| match e {
            InitError::Driver(e) => EngineError::Adapter(e.into()),
            InitError::MalformedNamespace => EngineError::MalformedNamespace,
        })
    }

    /// Redis counts as up when a message published through the adapter's
    /// connection comes back on a channel subscribed through it (a bare PING
    /// would pass while the subscriptions are still being restored) and, on
    /// a cluster, every primary says the cluster is ok.
    async fn watch_health(&self, health: Health, shutdown: CancellationToken) {
        let mut probe: Option<MessageStream<ChanItem>> = None;
        let mut seq: u64 = 0;
        let mut failed: u32 = 0;
        // The pub/sub connection was dialed again since the cluster came back.
        let mut resubscribed = false;
        // The cause last logged, so that a lasting failure is one line.
        let mut logged: Option<RedisFailure> = None;
        loop {
            // Dialing again helps a silent link, not a refused certificate or password.
            let mut redial_helps = true;
            let mut error = None;
            if probe.is_none() {
                match self.driver.subscribe(self.probe_channel.clone(), 4).await {
                    Ok(stream) => probe = Some(stream),
                    Err(e) => error = Some(e),
                }
            }
            seq += 1;
            let up = match probe.as_mut() {
                Some(stream) => match self.round_trip(stream, seq).await {
                    Ok(up) => up,
                    Err(e) => {
                        error = Some(e);
                        false
                    }
                },
                None => false,
            };
            // On a cluster the probe's channel lies in one shard: the
            // cluster must serve every slot too, or a shard's keys are out
            // of reach.
            let up = up
                && match self.commands.cluster_ok().await {
                    Ok(ok) => ok,
                    Err(e) => {
                        error = Some(e.into());
                        false
                    }
                };
            // Back on a cluster (at start, or after a failover): the
            // pub/sub connection may still hold the old slot map, with the
            // subscriptions of a failed-over shard on its dead primary (it
            // refreshes the map only when a command of its own meets the
            // move). Dialed again, it subscribes every channel where its
            // slot lives now; ready only once that is done and a probe has
            // come back on the new connection.
            if up && !health.store_up() && self.commands.is_cluster() && !resubscribed {
                probe = None;
                match self.driver.redial().await {
                    Ok(()) => resubscribed = true,
                    Err(e) => tracing::debug!(error = %e, "subscribing again on the cluster"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RESUBSCRIBE_PAUSE) => {}
                }
                continue;
            }
            if up {
                resubscribed = false;
            }
            if up {
                if !health.store_up() {
                    tracing::info!("redis reachable");
                }
                logged = None;
            } else {
                let cause = error
                    .as_ref()
                    .map_or(RedisFailure::Unreachable, |e| redis_failure(e.redis()));
                crate::metrics::redis_connect_error(cause);
                redial_helps = cause == RedisFailure::Unreachable;
                // An outage is told once as it begins; a cause only an
                // operator can fix, once as soon as it is seen.
                let tell = match cause {
                    RedisFailure::Unreachable => health.store_up(),
                    _ => logged != Some(cause),
                };
                if tell {
                    match &error {
                        Some(e) => log_redis_failure(cause, e.redis()),
                        None => tracing::warn!(cause = cause.as_str(), "redis unreachable"),
                    }
                    logged = Some(cause);
                }
            }
            health.set_store_up(up);
            failed = if up || !redial_helps { 0 } else { failed + 1 };
            if failed == REDIAL_AFTER_FAILED_PROBES {
                failed = 0;
                self.redial().await;
            }
            if up {
                // Nodes listening on the adapter's broadcast channel.
                let channel = format!("{}-request#/#", self.channel_prefix);
                if let Ok(nodes) = self.driver.num_serv(&channel).await {
                    crate::metrics::set_cluster_nodes(usize::from(nodes));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            }
        }
    }
}

impl RedisEngine {
    /// The link the stores' commands go through: public for the integration
    /// tests of pipelines on a cluster (`tests/it/redis_cluster_pipelines.rs`).
    #[doc(hidden)]
    pub fn command_link(&self) -> Link {
        self.commands.clone()
    }

    /// Drops every connection for a new one. Harmless when Redis is simply
    /// down (the new connections dial lazily, with the usual back-off).
    async fn redial(&self) {
        tracing::warn!("redis link silent; dialing every connection again");
        crate::metrics::redis_redial();
        for link in &self.links {
            if let Err(e) = link.redial() {
                tracing::warn!(error = %e, "redial");
            }
        }
        if let Err(e) = self.driver.redial().await {
            tracing::warn!(error = %e, "redial of the pub/sub connection");
        }
    }

    /// Whether a probe came back; an error when it could not even be sent.
    async fn round_trip(
        &self,
        stream: &mut MessageStream<ChanItem>,
        seq: u64,
    ) -> Result<bool, PubSubError> {
        let nonce = seq.to_string().into_bytes();
        self.driver
            .publish(self.probe_channel.clone(), nonce.clone())
            .await?;
        // Earlier probes that came back late are skipped.
        let echoed = async {
            while let Some((_, payload)) = stream.next().await {
                if payload == nonce {
                    return true;
                }
            }
            false
        };
        Ok(tokio::time::timeout(HEALTH_INTERVAL, echoed)
            .await
            .unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;

    use super::probe_channel;

    #[test]
    fn on_a_cluster_the_probe_shares_the_broadcast_channels_slot_and_keeps_the_prefix() {
        let beside = "relay:sio-request#/#";
        let probe = probe_channel("relay:health#node-1#42", beside, true);
        assert!(probe.starts_with("relay:health#node-1#42#"), "{probe}");
        assert_eq!(Slot::for_key(&probe), Slot::for_key(beside));
        assert_eq!(
            probe_channel("relay:health#node-1#42", beside, false),
            "relay:health#node-1#42"
        );
    }
}
