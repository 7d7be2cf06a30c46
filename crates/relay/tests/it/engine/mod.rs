//! One conformance suite for both engines: every behaviour of the engine
//! traits is a generic async function, and [`conformance!`] runs each one
//! against the memory engine (`memory::<name>`), against the Redis engine
//! on a real redis-server (`redis::<name>`) and on a real Redis Cluster of
//! three primaries with a replica each (`redis_cluster::<name>`), so that
//! neither the embedded mode nor a cluster can drift from one server. On
//! the cluster every script runs against tagged keys: a script whose keys
//! span two slots fails there with CROSSSLOT.
//!
//! A few behaviours exist only where several nodes share one store (claiming
//! a stopped peer's entries, handing entries back, a restart that keeps its
//! pending entries): the memory engine is one node by construction. Those
//! run on Redis only ([`cluster!`]), as `redis_only::<name>` and
//! `redis_cluster_only::<name>`.

mod chat;
mod history;
mod locations;
mod orders;
mod presence;
mod stream;

use std::{future::Future, time::Duration};

use relay::engine::{
    Engine, EventStream,
    memory::MemoryEngine,
    redis::{RedisEngine, RedisSettings},
};

use crate::support::{Backend, Kind, WAIT, unique_prefix};

/// Upper bound for a whole behaviour, whatever it waits for.
const TEST_BOUND: Duration = Duration::from_secs(30);

/// The engine settings a behaviour may shorten (TTLs, claim time).
#[derive(Debug, Clone)]
pub struct Settings {
    pub location_ttl: Duration,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub claim_idle: Duration,
    pub max_deliveries: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            location_ttl: Duration::from_secs(120),
            history_size: 100,
            history_ttl: Duration::from_secs(600),
            claim_idle: Duration::from_secs(60),
            max_deliveries: 5,
        }
    }
}

/// An engine ready for a behaviour, its consumer group prepared, and for
/// Redis the server it talks to and a peer node on the same keys.
pub struct Fixture<E> {
    pub engine: E,
    /// Another node of the same store (Redis only): node id `n2`.
    pub peer: Option<E>,
    redis: Option<Backend>,
    prefix: String,
    settings: Settings,
}

impl Fixture<MemoryEngine> {
    pub async fn memory(settings: Settings) -> Self {
        let engine = MemoryEngine::new(
            "n1",
            settings.location_ttl,
            settings.history_size,
            settings.history_ttl,
        );
        engine.stream().prepare().await.expect("prepare");
        Self {
            engine,
            peer: None,
            redis: None,
            prefix: String::new(),
            settings,
        }
    }
}

impl Fixture<RedisEngine> {
    pub async fn redis(test: &str, settings: Settings) -> Self {
        Self::on(Kind::Server, test, settings).await
    }

    pub async fn redis_cluster(test: &str, settings: Settings) -> Self {
        Self::on(Kind::Cluster, test, settings).await
    }

    async fn on(kind: Kind, test: &str, settings: Settings) -> Self {
        let server = Backend::start(kind).await;
        let prefix = unique_prefix(test);
        let mut fixture = Self {
            engine: redis_node(&server, &prefix, "n1", &settings),
            peer: None,
            redis: None,
            prefix,
            settings,
        };
        fixture.peer = Some(fixture.node_on(&server, "n2"));
        fixture.redis = Some(server);
        fixture.engine.stream().prepare().await.expect("prepare");
        fixture
    }

    /// A new engine on the same keys: `n1` again is node 1 restarted.
    pub fn node(&self, node_id: &str) -> RedisEngine {
        self.node_on(self.redis.as_ref().expect("redis fixture"), node_id)
    }

    fn node_on(&self, server: &Backend, node_id: &str) -> RedisEngine {
        redis_node(server, &self.prefix, node_id, &self.settings)
    }

    pub fn peer(&self) -> &RedisEngine {
        self.peer.as_ref().expect("redis fixture has a peer")
    }
}

fn redis_node(server: &Backend, prefix: &str, node_id: &str, s: &Settings) -> RedisEngine {
    RedisEngine::new(RedisSettings {
        target: &server.target(),
        tls: &Default::default(),
        key_prefix: prefix,
        node_id,
        claim_idle: s.claim_idle,
        max_deliveries: s.max_deliveries,
        max_event_bytes: 64 * 1024,
        location_ttl: s.location_ttl,
        history_size: s.history_size,
        history_ttl: s.history_ttl,
    })
    .expect("redis engine")
}

/// Runs a behaviour within [`TEST_BOUND`].
pub async fn bounded(behaviour: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_BOUND, behaviour)
        .await
        .expect("behaviour finished within its bound");
}

/// `f` within [`WAIT`]: for everything a behaviour awaits that may block.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

/// Polls `check` until it returns `Some`, within [`WAIT`]: for behaviour
/// that comes with time (TTLs, claim times), never as synchronisation.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Expands each behaviour `name` (an `async fn name<E: Engine>(engine: &E)`
/// of the calling module) into `memory::name` and `redis::name`; `name(expr)`
/// runs it with the [`Settings`] `expr` instead of the defaults.
macro_rules! conformance {
    ($($name:ident $(($settings:expr))?),* $(,)?) => {
        mod memory {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    #[allow(unused_mut, unused_assignments)]
                    let mut settings = $crate::engine::Settings::default();
                    $( settings = $settings; )?
                    let fixture = $crate::engine::Fixture::memory(settings).await;
                    $crate::engine::bounded(super::$name(&fixture.engine)).await;
                }
            )*
        }
        mod redis {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    #[allow(unused_mut, unused_assignments)]
                    let mut settings = $crate::engine::Settings::default();
                    $( settings = $settings; )?
                    let fixture =
                        $crate::engine::Fixture::redis(stringify!($name), settings).await;
                    $crate::engine::bounded(super::$name(&fixture.engine)).await;
                }
            )*
        }
        mod redis_cluster {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    #[allow(unused_mut, unused_assignments)]
                    let mut settings = $crate::engine::Settings::default();
                    $( settings = $settings; )?
                    let fixture =
                        $crate::engine::Fixture::redis_cluster(stringify!($name), settings).await;
                    $crate::engine::bounded(super::$name(&fixture.engine)).await;
                }
            )*
        }
    };
}
pub(crate) use conformance;

/// Behaviours of a shared store only (several nodes, restarts): each an
/// `async fn name(fixture: &Fixture<RedisEngine>)`, run as `redis_only::name`.
macro_rules! cluster {
    ($($name:ident $(($settings:expr))?),* $(,)?) => {
        mod redis_only {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    #[allow(unused_mut, unused_assignments)]
                    let mut settings = $crate::engine::Settings::default();
                    $( settings = $settings; )?
                    let fixture =
                        $crate::engine::Fixture::redis(stringify!($name), settings).await;
                    $crate::engine::bounded(super::$name(&fixture)).await;
                }
            )*
        }
        mod redis_cluster_only {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    #[allow(unused_mut, unused_assignments)]
                    let mut settings = $crate::engine::Settings::default();
                    $( settings = $settings; )?
                    let fixture =
                        $crate::engine::Fixture::redis_cluster(stringify!($name), settings).await;
                    $crate::engine::bounded(super::$name(&fixture)).await;
                }
            )*
        }
    };
}
pub(crate) use cluster;
