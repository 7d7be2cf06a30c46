//! Turning SIGTERM and SIGINT into one cancellation every task listens to.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::tasks::{self, names};

/// Exit status after a second signal (128 + SIGINT, as a shell reports it).
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// Cancels `token` on the first SIGTERM or SIGINT; a second one ends the
/// process at once, for an operator who does not want to wait for the drain.
pub fn listen(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let listener = {
        let token = token.clone();
        async move {
            let first = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            // The drain first: nothing that logging does can hold it up.
            token.cancel();
            tracing::info!(signal = first, "draining");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal: exiting now");
            std::process::exit(EXIT_SECOND_SIGNAL);
        }
    };
    tokio::spawn(async move {
        // Nobody would hear a signal any more: drain now rather than become
        // a process that only SIGKILL ends.
        let Err(panic) = AssertUnwindSafe(listener).catch_unwind().await;
        tasks::record_panic(names::SIGNAL_LISTENER, &*panic);
        token.cancel();
    });
    Ok(())
}
