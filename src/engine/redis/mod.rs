//! The Redis engine: what every node of a cluster shares.

mod pubsub;

use std::time::Duration;

use redis::{IntoConnectionInfo, ProtocolVersion, aio::ConnectionManagerConfig};
use socketioxide::adapter::Emitter;
use socketioxide_redis::{CustomRedisAdapter, InitRes, RedisAdapterConfig, RedisAdapterCtr};
use tokio_util::sync::CancellationToken;

pub use pubsub::PubSubDriver;

use super::{Engine, EngineError, Health};
use crate::config::Secret;

/// How often the link to Redis is checked for `/readyz`.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

pub struct RedisEngine {
    driver: PubSubDriver,
    channel_prefix: String,
}

impl RedisEngine {
    /// Prepares the connections without dialing: a node starts (unready)
    /// while Redis is still unreachable.
    pub fn new(url: &Secret, key_prefix: &str) -> Result<Self, EngineError> {
        let info = url
            .expose()
            .into_connection_info()
            .map_err(|e| EngineError(format!("REDIS_URL: {:?}", e.kind())))?;
        // The adapter's pub/sub rides on RESP3 push messages, whatever the URL says.
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis_settings);
        let client = redis::Client::open(info).map_err(|e| EngineError(e.to_string()))?;
        let driver = PubSubDriver::new(client, connection_config())
            .map_err(|e| EngineError(e.to_string()))?;
        Ok(Self {
            driver,
            // The stock `socket.io` prefix would collide with Node's adapter.
            channel_prefix: format!("{key_prefix}sio"),
        })
    }
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

    fn name(&self) -> &'static str {
        "redis"
    }

    fn adapter_state(&self) -> RedisAdapterCtr<PubSubDriver> {
        RedisAdapterCtr::new_with_driver(
            self.driver.clone(),
            RedisAdapterConfig::new().with_prefix(self.channel_prefix.clone()),
        )
    }

    async fn finish_init(init: InitRes<PubSubDriver>) -> Result<(), EngineError> {
        init.await.map_err(|e| EngineError(e.to_string()))
    }

    async fn watch_health(&self, health: Health, shutdown: CancellationToken) {
        let mut conn = self.driver.connection();
        loop {
            let ping = tokio::time::timeout(
                HEALTH_INTERVAL,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            let up = matches!(ping, Ok(Ok(_)));
            if up != health.store_up() {
                if up {
                    tracing::info!("redis reachable");
                } else {
                    tracing::warn!("redis unreachable");
                }
            }
            health.set_store_up(up);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            }
        }
    }
}
