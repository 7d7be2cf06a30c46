//! One node: picks the engine, wires the gateway and HTTP onto one port,
//! and runs until told to stop, then drains within the grace period.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub mod signals;

use crate::{
    auth::Verifier,
    config::{Config, ConfigError},
    engine::{
        Engine, EngineError, Health,
        memory::MemoryEngine,
        redis::{RedisEngine, RedisSettings},
    },
    gateway::{BroadcastFailed, Gateway},
    http::{self, HttpState},
    location::LocationPipeline,
    metrics,
    stream::{Consumer, ConsumerSettings, Dispatcher},
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics recorder: {0}")]
    Metrics(String),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error("node task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Stream entries one node works on at once (offers waiting for acks included).
const MAX_IN_FLIGHT: usize = 1024;

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

type BroadcastFn = dyn Fn(
        Vec<String>,
        String,
        Value,
    ) -> Pin<Box<dyn Future<Output = Result<(), BroadcastFailed>> + Send>>
    + Send
    + Sync;

/// A node running in this process.
pub struct RunningNode {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
    broadcast: Arc<BroadcastFn>,
}

impl RunningNode {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cancelling it starts the drain, as SIGTERM does.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Emits `event` to `rooms` on every node of the cluster, as the event
    /// dispatcher does.
    pub async fn broadcast(
        &self,
        rooms: Vec<String>,
        event: &str,
        data: Value,
    ) -> Result<(), BroadcastFailed> {
        (self.broadcast)(rooms, event.to_owned(), data).await
    }

    /// Starts the drain and waits until the node has stopped.
    pub async fn stop(self) -> Result<(), ServeError> {
        self.stop.cancel();
        self.task.await?
    }

    pub async fn wait(self) -> Result<(), ServeError> {
        self.task.await?
    }
}

/// Runs a node until SIGTERM or SIGINT, then drains: the `relay serve` command.
pub async fn serve(prepared: Prepared) -> Result<(), ServeError> {
    let node = start(prepared).await?;
    signals::listen(node.stop_token()).map_err(ServeError::Signal)?;
    node.wait().await
}

/// Binds the configured address and starts a node in the background.
pub async fn start(prepared: Prepared) -> Result<RunningNode, ServeError> {
    let addr = prepared.config.addr;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    start_on(prepared, listener).await
}

/// Starts a node on an already bound listener (tests bind `127.0.0.1:0`).
pub async fn start_on(
    prepared: Prepared,
    listener: TcpListener,
) -> Result<RunningNode, ServeError> {
    match &prepared.config.redis_url {
        Some(url) => {
            let config = &prepared.config;
            let engine = RedisEngine::new(RedisSettings {
                url,
                key_prefix: &config.key_prefix,
                node_id: &config.node_id,
                claim_idle: config.stream.claim_idle,
                max_deliveries: config.stream.max_deliveries,
                location_ttl: config.location.ttl,
                history_size: config.history.size,
                history_ttl: config.history.ttl,
            })?;
            launch(engine, prepared, listener)
        }
        None => {
            let config = &prepared.config;
            let engine = MemoryEngine::new(
                &config.node_id,
                config.location.ttl,
                config.history.size,
                config.history.ttl,
            );
            launch(engine, prepared, listener)
        }
    }
}

/// The demo's signing settings when `RELAY_DEMO` is on (the configuration
/// guarantees an HS256 secret then).
fn demo_settings(config: &Config, engine: &'static str) -> Option<Arc<http::demo::DemoSettings>> {
    let crate::config::JwtKeySource::Secret(secret) = &config.jwt.key else {
        return None;
    };
    config.demo.then(|| {
        Arc::new(http::demo::DemoSettings::new(
            secret.clone(),
            config.jwt.issuer.clone(),
            config.jwt.audience.clone(),
            config.node_id.clone(),
            engine,
        ))
    })
}

fn launch<E: Engine>(
    engine: E,
    prepared: Prepared,
    listener: TcpListener,
) -> Result<RunningNode, ServeError> {
    let Prepared { config, verifier } = prepared;
    let prometheus =
        metrics::install(&config.node_id, engine.name()).map_err(ServeError::Metrics)?;
    let health = Health::default();
    let stop = CancellationToken::new();
    let engine = Arc::new(engine);
    let verifier = Arc::new(verifier);

    // Unique even when two nodes are misconfigured with one node id: a node
    // skips only the location batches it published itself.
    let instance = format!(
        "{}#{}#{}",
        config.node_id,
        std::process::id(),
        crate::events::now_ms()
    );
    let locations = Arc::new(LocationPipeline::start(
        engine.clone(),
        instance.clone(),
        config.location.min_interval,
        config.location.ttl,
        stop.clone(),
    ));
    let (replay, replay_requests) = crate::delivery::channel();
    let limits = Arc::new(
        crate::gateway::ConnectionLimits::new(
            config.limits.max_connections,
            config.limits.max_per_user,
            config.limits.new_per_s,
        )
        .across(engine.user_sessions(&instance))
        .gated_by(health.clone()),
    );
    tokio::spawn({
        let (limits, stop) = (limits.clone(), stop.clone());
        async move { limits.keep_alive(stop).await }
    });
    let expiries = Arc::new(crate::gateway::Expiries::default());
    let (gateway, layer) = Gateway::new(
        engine.clone(),
        &config.transport,
        crate::gateway::Shared {
            verifier: verifier.clone(),
            client_events_per_s: config.client_events_per_s,
            locations,
            replay,
            limits: limits.clone(),
            expiries: expiries.clone(),
        },
    );
    tokio::spawn({
        let (io, stop) = (gateway.io().clone(), stop.clone());
        async move { expiries.run(io, stop).await }
    });
    let (subscribed, history_subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(crate::delivery::run(
        engine.clone(),
        gateway.io().clone(),
        replay_requests,
        subscribed,
        stop.clone(),
    ));
    tokio::spawn(crate::location::receive(
        engine.clone(),
        gateway.io().clone(),
        instance,
        stop.clone(),
    ));
    let census = {
        let gateway = gateway.clone();
        Arc::new(move || gateway.record_census())
    };
    let app = http::router(HttpState {
        health: health.clone(),
        prometheus,
        census,
        engine: engine.clone(),
        verifier,
        api_key: config.api_key.clone(),
        started_at: crate::events::now_ms() as f64 / 1000.0,
        demo: demo_settings(&config, engine.name()),
    })
    .layer(layer)
    .layer(axum::middleware::from_fn_with_state(
        limits,
        crate::gateway::shed_new_sessions,
    ));
    // Preflights are answered before the Socket.IO layer sees them.
    let app = match http::cors::layer(&config.cors_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    // Outermost, so the Socket.IO layer only ever sees detached copies.
    let app = app.layer(axum::middleware::map_request(http::detach_from_read_buffer));

    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        node = %config.node_id,
        engine = engine.name(),
        version = env!("CARGO_PKG_VERSION"),
        "relay listening"
    );

    let health_task = tokio::spawn({
        let (engine, health, stop) = (engine.clone(), health.clone(), stop.clone());
        async move { engine.watch_health(health, stop).await }
    });
    let dispatcher = Arc::new(Dispatcher::new(
        engine.clone(),
        gateway.clone(),
        config.node_id.clone(),
        stop.clone(),
    ));
    let consumer = Consumer::new(
        engine.clone(),
        dispatcher,
        health.clone(),
        ConsumerSettings {
            max_in_flight: MAX_IN_FLIGHT,
            claim_idle: config.stream.claim_idle,
            drain: (config.shutdown_grace / 3).min(Duration::from_secs(5)),
        },
        stop.clone(),
    );
    // The consumer starts once clients can be reached: emits need the namespace.
    let consumer_task = tokio::spawn({
        let (gateway, health, stop) = (gateway.clone(), health.clone(), stop.clone());
        async move {
            // Clients come in once no recorded event can pass them by.
            if history_subscribed.await.is_err() {
                return;
            }
            gateway.open(&health, &stop).await;
            consumer.run().await;
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let stop = stop.clone();
        async move { stop.cancelled().await }
    });
    let server = tokio::spawn(async move { server.await });

    let broadcast: Arc<BroadcastFn> = {
        let gateway = gateway.clone();
        Arc::new(move |rooms, event, data| {
            let gateway = gateway.clone();
            Box::pin(async move { gateway.emit_to(rooms, &event, &data).await })
        })
    };

    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            health.set_draining();
            let drain = async {
                // Stream work first (finish or hand back), then the clients.
                let _ = consumer_task.await;
                gateway.close().await;
                let _ = health_task.await;
                server.await
            };
            match tokio::time::timeout(config.shutdown_grace, drain).await {
                Ok(result) => result??,
                Err(_) => {
                    tracing::warn!(grace = ?config.shutdown_grace, "grace period over, exiting")
                }
            }
            tracing::info!("relay stopped");
            Ok(())
        }
    });
    Ok(RunningNode {
        addr,
        stop,
        task,
        broadcast,
    })
}
