//! One node: [`build`] picks the engine and wires the gateway and HTTP onto
//! one port, [`run`] spawns every long-lived task on the node's one
//! [`Tasks`] tracker, and [`drain`] stops them in order within the grace
//! period, then waits until every one has ended.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

mod accept;
mod build;
mod drain;
mod run;
pub mod signals;

pub use build::Prepared;

use crate::{
    config::ConfigError,
    engine::{Engine, EngineError},
    gateway::{BroadcastFailed, Gateway},
    tasks::Tasks,
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
    #[error("node task {0} panicked")]
    Panicked(&'static str),
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
    /// Cancelled by SIGTERM (or [`Self::stop`]); the drain then cancels the
    /// tasks' own stop signal after the readiness drain.
    shutdown: CancellationToken,
    tasks: Tasks,
    task: JoinHandle<Result<(), ServeError>>,
    broadcast: Arc<BroadcastFn>,
}

impl RunningNode {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cancelling it starts the drain, as SIGTERM does.
    pub fn stop_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The node's long-lived tasks: which are running, which panicked.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
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

    /// Starts the drain and waits until the node has stopped: every task
    /// ended, or the grace period over.
    pub async fn stop(self) -> Result<(), ServeError> {
        self.shutdown.cancel();
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
    let listener = bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
    start_on(prepared, listener).await
}

/// Connections the kernel queues until the accept loop takes them (capped
/// by `net.core.somaxconn`, 4096 on current kernels). tokio's default of
/// 1024 overflowed in a reconnect storm: the clients of a lost node arrive
/// within a second or two, and each one the full queue dropped came back
/// only after its SYN retransmit (1, 3, 7, 15 s), so recovery took a
/// minute on a survivor that was mostly idle.
const ACCEPT_BACKLOG: u32 = 65_535;

fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As TcpListener::bind does: a restarted node rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Starts a node on an already bound listener (tests bind `127.0.0.1:0`).
pub async fn start_on(
    prepared: Prepared,
    listener: TcpListener,
) -> Result<RunningNode, ServeError> {
    let tasks = Tasks::new();
    // The engine's own tasks end last, after everything that uses them.
    let engine_stop = CancellationToken::new();
    let launched = match build::redis_engine(&prepared.config, &tasks, &engine_stop)? {
        Some(redis) => launch(redis, prepared, listener, tasks, engine_stop.clone()),
        None => {
            let memory = build::memory_engine(&prepared.config);
            launch(memory, prepared, listener, tasks, engine_stop.clone())
        }
    };
    // A node that failed to start leaves no engine task behind.
    launched.inspect_err(|_| engine_stop.cancel())
}

fn launch<E: Engine>(
    engine: E,
    prepared: Prepared,
    listener: TcpListener,
    tasks: Tasks,
    engine_stop: CancellationToken,
) -> Result<RunningNode, ServeError> {
    let addr = listener.local_addr()?;
    let node = build::wire(engine, prepared, &tasks)?;
    let timing = drain::Timing {
        delay: node.config.shutdown_delay,
        grace: node.config.shutdown_grace,
    };
    let broadcast = broadcast_through(node.gateway.clone());
    let running = run::spawn(node, listener, addr, &tasks);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(drain::drain(
        running,
        tasks.clone(),
        engine_stop,
        shutdown.clone(),
        timing,
    ));
    Ok(RunningNode {
        addr,
        shutdown,
        tasks,
        task,
        broadcast,
    })
}

fn broadcast_through<E: Engine>(gateway: Gateway<E>) -> Arc<BroadcastFn> {
    Arc::new(move |rooms, event, data| {
        let gateway = gateway.clone();
        Box::pin(async move { gateway.emit_to(rooms, &event, &data).await })
    })
}
