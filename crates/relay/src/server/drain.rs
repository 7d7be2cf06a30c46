//! The drain, in the order docs/design.md gives ("Shutdown"), within the
//! grace period: first the readiness drain (unready, new sessions refused,
//! everything else served, the listener open so that load balancers probing
//! /readyz see 503 rather than a refused connection), then stream work (stop
//! reading, let in-progress emits finish, hand back what is left), then the
//! clients, then every other task of the node, joined through its tracker.
//! A task whose panic fails the node ([`Tasks::failed`]) starts the same
//! drain, and the node then ends with [`ServeError::Panicked`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ServeError, run::Running};
use crate::{engine::Engine, tasks::Tasks};

/// How long the drain takes at most, both counted from the shutdown signal.
pub(super) struct Timing {
    /// The readiness drain, before the node's tasks are told to stop.
    pub delay: Duration,
    /// Everything.
    pub grace: Duration,
}

/// Waits for `shutdown`, then drains the node. Returns once every task of
/// `tasks` has ended, or once the grace period is over, naming the tasks
/// still running then.
pub(super) async fn drain<E: Engine>(
    running: Running<E>,
    tasks: Tasks,
    engine_stop: CancellationToken,
    shutdown: CancellationToken,
    Timing { delay, grace }: Timing,
) -> Result<(), ServeError> {
    let Running {
        stop,
        health,
        gateway,
        consumer,
        presence_stop,
        health_watch,
        http,
    } = running;
    // A task whose panic failed the node drains it as SIGTERM would: the
    // process then exits non-zero instead of living on with a dead part.
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tasks.failed() => {}
    }
    let deadline = tokio::time::Instant::now() + grace;
    health.set_draining();
    if let Some(task) = tasks.failure() {
        tracing::error!(task, "a task of this node failed: draining, then exiting");
    }
    if !delay.is_zero() {
        tracing::info!(?delay, "unready; serving on until the readiness drain ends");
        tokio::time::sleep(delay).await;
    }
    stop.cancel();
    let ordered = async {
        // The consumer stops reading, gives in-progress emits their time
        // and hands back the entries it still holds.
        let _ = consumer.await;
        // Then the clients; then presence hands this node's sockets over.
        gateway.close().await;
        presence_stop.cancel();
        let _ = health_watch.await;
        let served = http.await;
        // The engine's own tasks go last: everything above uses them.
        engine_stop.cancel();
        tasks.close();
        tasks.wait().await;
        served
    };
    let outcome = tokio::time::timeout_at(deadline, ordered).await;
    let panicked = tasks.panicked();
    if !panicked.is_empty() {
        tracing::error!(tasks = ?panicked, "tasks of this node panicked");
    }
    let served = match outcome {
        Ok(Ok(Some(served))) => served.map_err(ServeError::from),
        // A panic of the server failed the node: told below.
        Ok(Ok(None)) => Ok(()),
        Ok(Err(aborted)) => Err(ServeError::Task(aborted)),
        Err(_) => {
            presence_stop.cancel();
            engine_stop.cancel();
            tracing::warn!(
                ?grace,
                still_running = ?tasks.running(),
                "grace period over, exiting"
            );
            Ok(())
        }
    };
    tracing::info!("relay stopped");
    match tasks.failure() {
        Some(task) => Err(ServeError::Panicked(task)),
        None => served,
    }
}
