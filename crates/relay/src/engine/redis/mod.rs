//! The Redis engine: what every node of a cluster shares.

mod history;
mod link;
mod locations;
mod order_store;
mod presence;
mod pubsub;
mod sessions;
mod stream;
mod values;

use std::time::Duration;

use futures_util::StreamExt;
use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion,
    TlsCertificates, aio::ConnectionManagerConfig,
};
use socketioxide::adapter::Emitter;
use socketioxide_redis::{
    CustomRedisAdapter, InitError, InitRes, RedisAdapterConfig, RedisAdapterCtr,
    drivers::{ChanItem, Driver, MessageStream},
};
use tokio_util::sync::CancellationToken;

pub use history::RedisHistory;
use link::Link;
pub use locations::RedisLocations;
pub use order_store::RedisOrders;
pub use presence::RedisPresence;
pub use pubsub::{PubSubDriver, PubSubError};
pub use stream::{RedisStream, StreamSettings};

use super::{
    Engine, EngineError, Health, StoreError, StoreResult, log_redis_failure, redis_failure,
};
use crate::config::{RedisTls, Secret};
use crate::metrics::RedisFailure;
use crate::tasks::Tasks;

/// How often the link to Redis is checked for `/readyz`.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Failed health probes in a row after which every connection is dropped
/// and dialed again: a link that went silent never fails on its own.
const REDIAL_AFTER_FAILED_PROBES: u32 = 3;

/// Location batches waiting for this node's fan-out task; one arrives per
/// peer every few milliseconds under load.
const LOCATION_FEED_BUFFER: usize = 4096;

pub struct RedisEngine {
    driver: PubSubDriver,
    /// Every command connection, for redialing a silent link.
    links: Vec<Link>,
    commands: Link,
    prefix: String,
    channel_prefix: String,
    probe_channel: String,
    stream: RedisStream,
    orders: RedisOrders,
    locations: RedisLocations,
    history: RedisHistory,
    presence: RedisPresence,
}

/// What the Redis engine needs from the configuration.
pub struct RedisSettings<'a> {
    pub url: &'a Secret,
    /// CA and client certificate for a `rediss://` URL.
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
    /// notices, the history feed) in the node's `tasks`. They end at `stop`,
    /// which a node cancels last, once nothing uses the engine any more.
    pub fn with_tasks(
        settings: RedisSettings<'_>,
        tasks: &Tasks,
        stop: CancellationToken,
    ) -> Result<Self, EngineError> {
        let info = settings
            .url
            .expose()
            .into_connection_info()
            .map_err(|e| EngineError::BadUrl(e.kind()))?;
        let resp2 = open_client(info.clone(), settings.tls).map_err(EngineError::Client)?;
        // The adapter's pub/sub rides on RESP3 push messages, whatever the URL says.
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let resp3 = open_client(info.set_redis_settings(redis_settings), settings.tls)
            .map_err(EngineError::Client)?;
        let driver = PubSubDriver::new(resp3, connection_config()).map_err(EngineError::Client)?;
        let lazy = |config| Link::new(resp2.clone(), config).map_err(EngineError::Client);
        let commands = lazy(connection_config())?;
        // XREAD BLOCK needs its own connection and a response timeout above
        // the block time: the default 500 ms would fail every blocking read.
        let blocking =
            lazy(connection_config().set_response_timeout(Some(Duration::from_secs(10))))?;
        let history_blocking =
            lazy(connection_config().set_response_timeout(Some(Duration::from_secs(10))))?;
        let links = vec![commands.clone(), blocking.clone(), history_blocking.clone()];
        let prefix = settings.key_prefix;
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
        Ok(Self {
            driver: driver.clone(),
            links,
            commands: commands.clone(),
            prefix: prefix.to_owned(),
            // The stock `socket.io` prefix would collide with Node's adapter.
            channel_prefix: format!("{prefix}sio"),
            probe_channel: format!("{prefix}health#{}#{}", settings.node_id, std::process::id()),
            stream,
            orders: RedisOrders::new(commands.clone(), prefix),
            presence: RedisPresence::new(commands.clone(), prefix),
            history: RedisHistory::new(
                commands.clone(),
                history_blocking,
                prefix,
                settings.history_size,
                settings.history_ttl,
                tasks.clone(),
            ),
            locations: RedisLocations::new(
                commands,
                prefix,
                format!("{prefix}sio-locations"),
                settings.location_ttl,
            ),
        })
    }
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
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
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

    fn name(&self) -> &'static str {
        "redis"
    }

    fn adapter_state(&self) -> RedisAdapterCtr<PubSubDriver> {
        RedisAdapterCtr::new_with_driver(
            self.driver.clone(),
            RedisAdapterConfig::new().with_prefix(self.channel_prefix.clone()),
        )
    }

    async fn location_feed(&self) -> StoreResult<Option<MessageStream<ChanItem>>> {
        let feed = self
            .driver
            .subscribe(self.locations.channel().to_owned(), LOCATION_FEED_BUFFER)
            .await
            .map_err(StoreError::from)?;
        Ok(Some(feed))
    }

    fn user_sessions(&self, instance: &str) -> Option<std::sync::Arc<dyn super::UserSessions>> {
        Some(std::sync::Arc::new(sessions::RedisUserSessions::new(
            self.commands.clone(),
            &self.prefix,
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
    /// connection comes back on a channel subscribed through it: a bare PING
    /// would pass while the subscriptions are still being restored.
    async fn watch_health(&self, health: Health, shutdown: CancellationToken) {
        let mut probe: Option<MessageStream<ChanItem>> = None;
        let mut seq: u64 = 0;
        let mut failed: u32 = 0;
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
