//! Building a node: the engine the configuration asks for, and everything
//! wired onto it (location pipeline, connection limits, gateway, HTTP router,
//! dispatcher and consumer). Nothing here binds a port or serves a client;
//! only the location pipeline's workers start as it is built.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::ServeError;
use crate::interest::Interest;
use crate::{
    auth::Verifier,
    config::{Config, ConfigError},
    delivery::Resume,
    engine::{
        Engine, Health,
        memory::MemoryEngine,
        redis::{RedisEngine, RedisSettings},
    },
    gateway::{ConnectionLimits, Expiries, Gateway},
    http::{self, HttpState},
    location::LocationPipeline,
    metrics,
    presence::Presence,
    stream::{Consumer, ConsumerSettings, Dispatcher},
    tasks::Tasks,
};

/// The test suite's hook to crash a node between an entry's effect and its
/// ack (see `ConsumerSettings::crash_before_ack`). Not a setting; read by
/// debug builds only.
pub const CRASH_HOOK: &str = "RELAY_TEST_CRASH_BEFORE_ACK";

/// Stream entries one node works on at once (an offer waiting for its
/// merchant gives its slot back and holds one of `MAX_OPEN_OFFERS`).
const MAX_IN_FLIGHT: usize = 1024;
/// Offers waiting for their merchant at once, per node: 16 times the read
/// slots, a few KiB each (an outcome task, its timer and the entry).
const MAX_OPEN_OFFERS: usize = 16 * MAX_IN_FLIGHT;

/// Everything that can be checked before binding a port.
pub struct Prepared {
    pub(super) config: Config,
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

/// The Redis engine when `REDIS_URL` or `REDIS_CLUSTER_URLS` is set. Its own tasks go in `tasks`
/// and end at `engine_stop`.
pub(super) fn redis_engine(
    config: &Config,
    tasks: &Tasks,
    engine_stop: &CancellationToken,
) -> Result<Option<RedisEngine>, ServeError> {
    let Some(target) = &config.redis else {
        return Ok(None);
    };
    let engine = RedisEngine::with_tasks(
        RedisSettings {
            target,
            tls: &config.redis_tls,
            key_prefix: &config.key_prefix,
            node_id: &config.node_id,
            claim_idle: config.stream.claim_idle,
            max_deliveries: config.stream.max_deliveries,
            max_event_bytes: config.stream.max_event_bytes,
            location_ttl: config.location.ttl,
            history_size: config.history.size,
            history_ttl: config.history.ttl,
        },
        tasks,
        engine_stop.clone(),
    )?;
    Ok(Some(engine))
}

/// The embedded engine: this node is the whole cluster.
pub(super) fn memory_engine(config: &Config) -> MemoryEngine {
    MemoryEngine::new(
        &config.node_id,
        config.location.ttl,
        config.history.size,
        config.history.ttl,
    )
}

/// A node wired onto its engine, its tasks not yet spawned.
pub(super) struct Node<E: Engine> {
    pub config: Config,
    pub engine: Arc<E>,
    pub health: Health,
    /// Cancelled to start the drain.
    pub stop: CancellationToken,
    /// This process among the nodes (see [`wire`]).
    pub instance: String,
    pub gateway: Gateway<E>,
    pub limits: Arc<ConnectionLimits>,
    pub expiries: Arc<Expiries>,
    pub presence: Arc<Presence>,
    pub replay_requests: mpsc::Receiver<Resume<E::Adapter>>,
    /// The room channels this node subscribes to.
    pub interest: Arc<Interest<E>>,
    /// Resolved by the delivery loop once it runs.
    pub history_subscribed: (oneshot::Sender<()>, oneshot::Receiver<()>),
    pub consumer: Consumer<E>,
    pub app: axum::Router,
}

pub(super) fn wire<E: Engine>(
    engine: E,
    prepared: Prepared,
    tasks: &Tasks,
) -> Result<Node<E>, ServeError> {
    let Prepared { config, verifier } = prepared;
    let prometheus =
        metrics::install(&config.node_id, engine.name()).map_err(ServeError::Metrics)?;
    let health = Health::default();
    let stop = CancellationToken::new();
    let engine = Arc::new(engine);
    let verifier = Arc::new(verifier);

    // Unique even when two nodes are misconfigured with one node id: a node
    // skips only the locations it published itself.
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
        tasks,
    ));
    let (replay, replay_requests) = crate::delivery::channel();
    let interest = Arc::new(Interest::new(engine.clone()));
    let limits = Arc::new(
        ConnectionLimits::new(
            config.limits.max_connections,
            config.limits.max_per_user,
            config.limits.new_per_s,
        )
        .per_address(
            config.limits.new_per_addr_per_s,
            config.limits.trusted_proxies.clone(),
        )
        .across(engine.user_sessions(&instance))
        .gated_by(health.clone()),
    );
    let expiries = Arc::new(Expiries::new(config.token_refresh_notice));
    let presence = Arc::new(Presence::new(config.presence_grace));
    let (gateway, layer) = Gateway::new(
        engine.clone(),
        &config.transport,
        crate::gateway::Shared {
            verifier: verifier.clone(),
            client_events_per_s: config.client_events_per_s,
            chat_max_chars: config.chat.max_chars,
            locations,
            replay,
            interest: interest.clone(),
            limits: limits.clone(),
            expiries: expiries.clone(),
            presence: presence.clone(),
        },
    );
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
        max_event_bytes: config.stream.max_event_bytes,
        started_at: crate::events::now_ms() as f64 / 1000.0,
        demo: demo_settings(&config, engine.name()),
    })
    .layer(layer)
    .layer(axum::middleware::from_fn_with_state(
        limits.clone(),
        crate::gateway::shed_new_sessions,
    ));
    // Preflights are answered before the Socket.IO layer sees them.
    let app = match http::cors::layer(&config.cors_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    // Outermost, so the Socket.IO layer only ever sees detached copies.
    let app = app.layer(axum::middleware::map_request(http::detach_from_read_buffer));

    let dispatcher = Arc::new(
        Dispatcher::new(
            engine.clone(),
            gateway.clone(),
            config.node_id.clone(),
            stop.clone(),
        )
        .with_chat_history(config.chat.history),
    );
    let consumer = Consumer::new(
        engine.clone(),
        dispatcher,
        health.clone(),
        ConsumerSettings {
            max_in_flight: MAX_IN_FLIGHT,
            max_open_offers: MAX_OPEN_OFFERS,
            claim_idle: config.stream.claim_idle,
            max_event_bytes: config.stream.max_event_bytes,
            drain: (config.shutdown_grace / 3).min(Duration::from_secs(5)),
            // Debug builds only, like the panic hook: a release node never
            // reads it, whatever its environment holds.
            crash_before_ack: cfg!(debug_assertions)
                .then(|| std::env::var(CRASH_HOOK).ok())
                .flatten()
                .filter(|t| !t.is_empty()),
        },
        stop.clone(),
    );
    Ok(Node {
        config,
        engine,
        health,
        stop,
        instance,
        gateway,
        limits,
        expiries,
        presence,
        replay_requests,
        interest,
        history_subscribed: oneshot::channel(),
        consumer,
        app,
    })
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
