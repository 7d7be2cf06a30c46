//! Log output: human lines by default, JSON for log shippers.
//!
//! Logging must never take the node down or hold it up. Lines go through a
//! bounded queue to one writer thread (tracing-appender's non-blocking
//! writer, lossy): a slow or stuck reader of stderr costs dropped lines,
//! never a stalled task. The writer thread swallows write errors (a closed
//! pipe, a full disk): tracing-subscriber would otherwise report them with
//! `eprintln!`, which panics when stderr itself is what broke, killing
//! whichever task was logging. Both losses are counted for `/metrics`.

use std::{
    io::{self, Write},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Lines queued for the writer thread before new ones are dropped: a few
/// seconds of a busy node's debug output.
const QUEUED_LINES: usize = 16_384;

static WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the writer thread; dropping it flushes what is queued (waiting at
/// most about a second for a stuck reader).
#[must_use = "dropping the guard stops log output"]
pub struct LogGuard(#[allow(dead_code)] WorkerGuard);

/// What logging lost so far, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogLosses {
    /// Writes to stderr that failed (the line, or the batch, is lost).
    pub write_errors: u64,
    /// Lines dropped because the queue to the writer thread was full.
    pub dropped_lines: u64,
}

pub fn losses() -> LogLosses {
    LogLosses {
        write_errors: WRITE_ERRORS.load(Ordering::Relaxed),
        dropped_lines: DROPPED.get().map_or(0, |c| c.dropped_lines() as u64),
    }
}

/// Installs the global subscriber and the panic hook; `filter` was
/// validated with the config. `None` when a subscriber was already
/// installed (tests, embedding): the first one stays.
pub fn init(format: LogFormat, filter: &str) -> Option<LogGuard> {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("relay-log")
        .finish(Unfailing(io::stderr()));
    let dropped = writer.error_counter();
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .log_internal_errors(false);
    let installed = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.ok()?;
    let _ = DROPPED.set(dropped);
    install_panic_hook();
    Some(LogGuard(guard))
}

/// The default hook writes to stderr directly, from the panicking thread: a
/// stuck reader would block a runtime worker. Through the log it cannot.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        // Captured only when RUST_BACKTRACE asks for it.
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(thread, panic = %info, %backtrace, "panic");
        } else {
            tracing::error!(thread, panic = %info, "panic");
        }
    }));
}

/// A writer whose writes never fail: a failed one is counted and the bytes
/// given up. `Interrupted` passes through (`write_all` retries it).
struct Unfailing<W>(W);

impl<W: Write> Write for Unfailing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
                Ok(buf.len())
            }
            written => written,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// A line for stderr outside the log (start-up errors): a broken stderr
/// loses it rather than panicking as `eprintln!` would.
pub fn print_error(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_failed_write_is_counted_and_given_up() {
        let before = WRITE_ERRORS.load(Ordering::Relaxed);
        let mut writer = Unfailing(Broken);
        writer.write_all(b"a line\n").expect("never fails");
        writer.flush().expect("never fails");
        assert_eq!(WRITE_ERRORS.load(Ordering::Relaxed), before + 1);
    }
}
