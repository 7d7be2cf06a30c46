//! Running a node: every long-lived task, spawned by name in the node's one
//! [`Tasks`]. Each ends at the node's stop signal (the consumer after its
//! own drain); the drain then waits for them all.

use std::net::SocketAddr;

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::build::Node;
use crate::{
    engine::{Engine, Health},
    gateway::Gateway,
    tasks::Tasks,
};

/// What the drain needs of a running node: the handles of the tasks it
/// stops in order; the others it waits for through the tracker.
pub(super) struct Running<E: Engine> {
    pub stop: CancellationToken,
    pub health: Health,
    pub gateway: Gateway<E>,
    pub consumer: JoinHandle<Option<()>>,
    /// Ends the presence worker, once the clients are closed.
    pub presence_stop: CancellationToken,
    pub health_watch: JoinHandle<Option<()>>,
    pub http: JoinHandle<Option<std::io::Result<()>>>,
}

/// Spawns the node's tasks; the location workers were spawned as it was
/// built, the engine's own ones as it was made.
pub(super) fn spawn<E: Engine>(
    node: Node<E>,
    listener: TcpListener,
    addr: SocketAddr,
    tasks: &Tasks,
) -> Running<E> {
    let Node {
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
        history_subscribed: (subscribed, history_subscribed),
        consumer,
        app,
    } = node;
    tasks.spawn("limits keep-alive", {
        let stop = stop.clone();
        async move { limits.keep_alive(stop).await }
    });
    tasks.spawn("token expiry sweeper", {
        let (io, stop) = (gateway.io().clone(), stop.clone());
        async move { expiries.run(io, stop).await }
    });
    tasks.spawn(
        "delivery loop",
        crate::delivery::run(
            engine.clone(),
            gateway.io().clone(),
            replay_requests,
            subscribed,
            stop.clone(),
        ),
    );
    // Presence outlives `stop` until the clients are closed: the sockets it
    // hands over at its end must be gone, or their grace would start while
    // they are still connected (during the consumer's drain).
    let presence_stop = CancellationToken::new();
    tasks.spawn(
        "presence",
        crate::presence::run(
            presence,
            engine.clone(),
            instance.clone(),
            presence_stop.clone(),
        ),
    );
    tasks.spawn(
        "location receiver",
        crate::location::receive(engine.clone(), gateway.io().clone(), instance, stop.clone()),
    );
    tracing::info!(
        %addr,
        node = %config.node_id,
        engine = engine.name(),
        version = env!("CARGO_PKG_VERSION"),
        "relay listening"
    );
    let health_watch = tasks.spawn("health watch", {
        let (engine, health, stop) = (engine.clone(), health.clone(), stop.clone());
        async move { engine.watch_health(health, stop).await }
    });
    // The consumer starts once clients can be reached: emits need the namespace.
    let consumer = tasks.spawn("consumer", {
        let (gateway, health, stop) = (gateway.clone(), health.clone(), stop.clone());
        let tasks = tasks.clone();
        async move {
            // Clients come in once no recorded event can pass them by.
            if history_subscribed.await.is_err() {
                return;
            }
            gateway.open(&health, &stop).await;
            consumer.run(&tasks).await;
        }
    });
    // The peer address reaches the gateway's per-address budget as
    // `ConnectInfo<SocketAddr>` in each request's extensions (accept.rs).
    let http = tasks.spawn(
        "http server",
        super::accept::serve(listener, app, config.http, stop.clone()),
    );
    Running {
        stop,
        health,
        gateway,
        consumer,
        presence_stop,
        health_watch,
        http,
    }
}
