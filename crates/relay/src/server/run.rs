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
    tasks::{Tasks, names},
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
        interest,
        history_subscribed: (subscribed, history_subscribed),
        consumer,
        app,
    } = node;
    // Restarted after a panic: loops that keep nothing between rounds.
    tasks.spawn_restarting(names::LIMITS_KEEP_ALIVE, {
        let stop = stop.clone();
        move || {
            let (limits, stop) = (limits.clone(), stop.clone());
            async move { limits.keep_alive(stop).await }
        }
    });
    tasks.spawn_restarting(names::TOKEN_EXPIRY_SWEEPER, {
        let (io, stop) = (gateway.io().clone(), stop.clone());
        move || {
            let (expiries, io, stop) = (expiries.clone(), io.clone(), stop.clone());
            async move { expiries.run(io, stop).await }
        }
    });
    // Not restarted: it owns the replay requests' only receiver.
    tasks.spawn(
        names::DELIVERY_LOOP,
        crate::delivery::run(
            engine.clone(),
            interest.clone(),
            gateway.io().clone(),
            instance.clone(),
            replay_requests,
            subscribed,
            stop.clone(),
        ),
    );
    // Restarted: the subscribed rooms and their idle times live in `interest`.
    tasks.spawn_restarting(names::ROOM_SWEEP, {
        let (io, stop) = (gateway.io().clone(), stop.clone());
        move || crate::interest::sweep(interest.clone(), io.clone(), stop.clone())
    });
    // Presence outlives `stop` until the clients are closed: the sockets it
    // hands over at its end must be gone, or their grace would start while
    // they are still connected (during the consumer's drain). Not restarted:
    // it owns the only receiver of this node's socket counts.
    let presence_stop = CancellationToken::new();
    tasks.spawn(
        names::PRESENCE,
        crate::presence::run(presence, engine.clone(), instance, presence_stop.clone()),
    );
    tracing::info!(
        %addr,
        node = %config.node_id,
        engine = engine.name(),
        version = env!("CARGO_PKG_VERSION"),
        "relay listening"
    );
    let health_watch = tasks.spawn_restarting(names::HEALTH_WATCH, {
        let (engine, health, stop) = (engine.clone(), health.clone(), stop.clone());
        move || {
            let (engine, health, stop) = (engine.clone(), health.clone(), stop.clone());
            async move { engine.watch_health(health, stop).await }
        }
    });
    // The consumer starts once clients can be reached: emits need the namespace.
    // Not restarted: it holds stream entries and hands them back as it ends.
    let consumer = tasks.spawn(names::CONSUMER, {
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
    // Not restarted: it owns the listener.
    let http = tasks.spawn(
        names::HTTP_SERVER,
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
