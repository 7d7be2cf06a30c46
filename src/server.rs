//! One node: picks the engine, wires the gateway and HTTP onto one port,
//! and runs until a signal, then drains within the grace period.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Verifier,
    config::{Config, ConfigError},
    engine::{Engine, EngineError, Health, memory::MemoryEngine, redis::RedisEngine},
    gateway::Gateway,
    http::{self, HttpState},
    metrics, shutdown,
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics recorder: {0}")]
    Metrics(String),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything that can be checked before binding a port.
pub struct Prepared {
    config: Config,
    verifier: Verifier,
}

impl Prepared {
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let verifier = Verifier::new(&config.jwt)
            .map_err(|e| ConfigError::new("RELAY_JWT_PUBLIC_KEY", e.to_string()))?;
        Ok(Self { config, verifier })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
}

pub async fn serve(prepared: Prepared) -> Result<(), ServeError> {
    match &prepared.config.redis_url {
        Some(url) => {
            let engine = RedisEngine::new(url, &prepared.config.key_prefix)?;
            run(engine, prepared).await
        }
        None => run(MemoryEngine, prepared).await,
    }
}

async fn run<E: Engine>(engine: E, prepared: Prepared) -> Result<(), ServeError> {
    let Prepared { config, verifier } = prepared;
    let prometheus =
        metrics::install(&config.node_id, engine.name()).map_err(ServeError::Metrics)?;
    let health = Health::default();
    let shutdown = CancellationToken::new();
    shutdown::listen(shutdown.clone()).map_err(ServeError::Signal)?;

    let (gateway, layer) = Gateway::new(&engine, &config.transport, verifier);
    let census = {
        let gateway = gateway.clone();
        Arc::new(move || gateway.record_census())
    };
    let app = http::router(HttpState {
        health: health.clone(),
        prometheus,
        census,
    })
    .layer(layer);

    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    tracing::info!(
        addr = %listener.local_addr()?,
        node = %config.node_id,
        engine = engine.name(),
        version = env!("CARGO_PKG_VERSION"),
        "relay listening"
    );

    let engine = Arc::new(engine);
    let health_task = tokio::spawn({
        let (engine, health, shutdown) = (engine.clone(), health.clone(), shutdown.clone());
        async move { engine.watch_health(health, shutdown).await }
    });
    tokio::spawn({
        let (gateway, health, shutdown) = (gateway.clone(), health.clone(), shutdown.clone());
        async move { gateway.open(&health, &shutdown).await }
    });

    let server = axum::serve(listener, app).with_graceful_shutdown({
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    });
    let server = tokio::spawn(async move { server.await });

    shutdown.cancelled().await;
    health.set_draining();
    let drain = async {
        gateway.close().await;
        let _ = health_task.await;
        server.await
    };
    match tokio::time::timeout(config.shutdown_grace, drain).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::error!(error = %join, "server task failed"),
        Err(_) => tracing::warn!(grace = ?config.shutdown_grace, "grace period over, exiting"),
    }
    tracing::info!("relay stopped");
    Ok(())
}
