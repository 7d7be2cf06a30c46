//! A node's long-lived tasks, supervised. One tracker owns them all, so that
//! a drain can wait until every one has ended; each has a name, so that a
//! panic is logged and counted with it (not lost with a dropped
//! `JoinHandle`) and a drain past its grace period can say which ones were
//! still running.
//!
//! A node never lives on with a dead part. A task spawned with
//! [`Tasks::spawn`] holds state nobody could rebuild (a listener, a channel's
//! only receiver, the stream entries it holds): its panic *fails* the node
//! ([`Tasks::failed`]), which drains and exits non-zero for the orchestrator
//! to restart it. A task spawned with [`Tasks::spawn_restarting`] is a loop
//! that keeps nothing between its rounds: its panic restarts it after
//! [`RESTART_DELAY`], and only more than [`MAX_PANICS`] panics within
//! [`PANIC_WINDOW`] fail the node.

use std::{
    any::Any,
    collections::{BTreeMap, VecDeque},
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures_util::FutureExt;
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The names of a node's long-lived tasks (the `task` label of
/// `relay_task_panics_total`).
pub mod names {
    pub const CONSUMER: &str = "consumer";
    pub const CONSUMER_MAINTENANCE: &str = "consumer maintenance";
    pub const DELIVERY_LOOP: &str = "delivery loop";
    pub const HEALTH_WATCH: &str = "health watch";
    pub const HTTP_SERVER: &str = "http server";
    pub const LIMITS_KEEP_ALIVE: &str = "limits keep-alive";
    pub const LOCATION_CACHE_WRITER: &str = "location cache writer";
    pub const LOCATION_PRUNE: &str = "location prune";
    /// Redis engine: sharded channels whose slot moved, subscribed again.
    pub const MOVED_CHANNELS: &str = "moved channels";
    pub const PRESENCE: &str = "presence";
    pub const ROOM_SWEEP: &str = "room sweep";
    pub const SEQUENCING_NOTICES: &str = "sequencing notices";
    pub const TOKEN_EXPIRY_SWEEPER: &str = "token expiry sweeper";
    /// The process's signal listener, outside the tracker (it outlives the
    /// drain, for a second signal).
    pub const SIGNAL_LISTENER: &str = "signal listener";

    pub const ALL: [&str; 14] = [
        CONSUMER,
        CONSUMER_MAINTENANCE,
        DELIVERY_LOOP,
        HEALTH_WATCH,
        HTTP_SERVER,
        LIMITS_KEEP_ALIVE,
        LOCATION_CACHE_WRITER,
        LOCATION_PRUNE,
        MOVED_CHANNELS,
        PRESENCE,
        ROOM_SWEEP,
        SEQUENCING_NOTICES,
        TOKEN_EXPIRY_SWEEPER,
        SIGNAL_LISTENER,
    ];
}

/// Pause before a restart, so that a task that panics at once does not spin.
pub const RESTART_DELAY: Duration = Duration::from_millis(500);
/// Panics of one restartable task tolerated within [`PANIC_WINDOW`].
pub const MAX_PANICS: usize = 3;
pub const PANIC_WINDOW: Duration = Duration::from_secs(60);

/// Panics by task name, for the whole process (`/metrics` reads them).
static PANICS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Panics so far of every task name, the known ones included at zero.
pub fn panic_counts() -> BTreeMap<&'static str, u64> {
    let mut counts: BTreeMap<&'static str, u64> = names::ALL.iter().map(|n| (*n, 0)).collect();
    counts.extend(lock(&PANICS).iter().map(|(n, c)| (*n, *c)));
    counts
}

/// Counts and logs a panic of `name` (also for tasks outside a tracker).
pub fn record_panic(name: &'static str, panic: &(dyn Any + Send)) {
    *lock(&PANICS).entry(name).or_default() += 1;
    tracing::error!(task = name, panic = panic_message(panic), "task panicked");
}

/// The tracker of a node's long-lived tasks. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    names: Arc<Mutex<Names>>,
    failed: CancellationToken,
}

#[derive(Debug, Default)]
struct Names {
    next: u64,
    /// By spawn order: a name may run more than once.
    running: BTreeMap<u64, &'static str>,
    panicked: Vec<&'static str>,
    /// The first task whose panic failed the node.
    failure: Option<&'static str>,
}

impl Tasks {
    pub fn new() -> Self {
        #[cfg(debug_assertions)]
        injected::listen();
        Self::default()
    }

    /// Spawns `task` under `name`; a panic fails the node. Its handle
    /// resolves to `None` when it panicked.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let running = self.register(name);
        let this = self.clone();
        self.tracker.spawn(async move {
            // Dropped when the task ends, however it ends (aborted too).
            let _running = running;
            let output = this.supervised(name, task).await;
            if output.is_none() {
                this.fail(name);
            }
            output
        })
    }

    /// Spawns the task `make` makes under `name`, and makes it again after
    /// a panic (see the module's docs). Its handle resolves to `None` when
    /// it panicked too often.
    pub fn spawn_restarting<F, M>(
        &self,
        name: &'static str,
        mut make: M,
    ) -> JoinHandle<Option<F::Output>>
    where
        M: FnMut() -> F + Send + 'static,
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let running = self.register(name);
        let this = self.clone();
        self.tracker.spawn(async move {
            let _running = running;
            let mut recent: VecDeque<Instant> = VecDeque::new();
            loop {
                if let Some(output) = this.supervised(name, make()).await {
                    return Some(output);
                }
                let now = Instant::now();
                recent.retain(|at| now.duration_since(*at) < PANIC_WINDOW);
                recent.push_back(now);
                if recent.len() > MAX_PANICS {
                    tracing::error!(task = name, "task panicked too often: not restarted");
                    this.fail(name);
                    return None;
                }
                tracing::warn!(task = name, delay = ?RESTART_DELAY, "restarting task");
                tokio::time::sleep(RESTART_DELAY).await;
                tracing::info!(task = name, "task restarted");
            }
        })
    }

    /// Runs `task`, catching (and counting) its panic.
    async fn supervised<F: Future>(&self, name: &'static str, task: F) -> Option<F::Output> {
        #[cfg(debug_assertions)]
        let task = injected::wrap(name, task);
        match AssertUnwindSafe(task).catch_unwind().await {
            Ok(output) => Some(output),
            Err(panic) => {
                record_panic(name, &*panic);
                self.names().panicked.push(name);
                None
            }
        }
    }

    fn register(&self, name: &'static str) -> Running {
        let mut names = self.names();
        names.next += 1;
        let id = names.next;
        names.running.insert(id, name);
        Running {
            names: self.names.clone(),
            id,
        }
    }

    fn fail(&self, name: &'static str) {
        self.names().failure.get_or_insert(name);
        self.failed.cancel();
    }

    /// Resolves once a task's panic has failed the node.
    pub async fn failed(&self) {
        self.failed.cancelled().await;
    }

    /// The task whose panic failed the node, if one did.
    pub fn failure(&self) -> Option<&'static str> {
        self.names().failure
    }

    /// Names of the tasks still running, in the order they were spawned.
    pub fn running(&self) -> Vec<&'static str> {
        self.names().running.values().copied().collect()
    }

    /// Names of the tasks that panicked (once per panic).
    pub fn panicked(&self) -> Vec<&'static str> {
        self.names().panicked.clone()
    }

    /// Tasks not yet ended (the tracker's own count).
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// No more tasks are expected: [`Self::wait`] can finish.
    pub fn close(&self) {
        self.tracker.close();
    }

    /// Waits until the tracker is closed and every task has ended.
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }

    fn names(&self) -> MutexGuard<'_, Names> {
        lock(&self.names)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A task's entry among the running ones, removed when it ends.
struct Running {
    names: Arc<Mutex<Names>>,
    id: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&self.names).running.remove(&self.id);
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// The test-only panic hook: with `RELAY_TEST_PANIC_TASK=<task name>` set,
/// the first SIGUSR2 makes that task panic where it stands (once: a
/// restarted task runs on). Compiled into debug builds only, so a release
/// binary neither reads the variable nor listens for SIGUSR2 (whose default
/// action then ends the process, as for any program): no deployment can
/// trigger it by accident.
#[cfg(debug_assertions)]
mod injected {
    use std::{
        future::Future,
        sync::{
            OnceLock,
            atomic::{AtomicBool, Ordering},
        },
    };

    use tokio::signal::unix::{SignalKind, signal};
    use tokio_util::sync::CancellationToken;

    pub const VARIABLE: &str = "RELAY_TEST_PANIC_TASK";

    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    static FIRED: OnceLock<CancellationToken> = OnceLock::new();
    static TAKEN: AtomicBool = AtomicBool::new(false);

    fn target() -> Option<&'static str> {
        TARGET
            .get_or_init(|| std::env::var(VARIABLE).ok())
            .as_deref()
    }

    fn fired() -> &'static CancellationToken {
        FIRED.get_or_init(CancellationToken::new)
    }

    /// Listens for SIGUSR2 (once per process, within a runtime) when the
    /// variable names a task. Early, so that a signal sent once the node is
    /// ready never meets the default action.
    pub fn listen() {
        static LISTENING: AtomicBool = AtomicBool::new(false);
        if target().is_none() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if LISTENING.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(mut usr2) = signal(SignalKind::user_defined2()) else {
            return;
        };
        tokio::spawn(async move {
            usr2.recv().await;
            fired().cancel();
        });
    }

    pub async fn wrap<F: Future>(name: &'static str, task: F) -> F::Output {
        if target() != Some(name) || TAKEN.load(Ordering::SeqCst) {
            return task.await;
        }
        // Another instance of the name may have taken the panic already.
        let fire = async {
            fired().cancelled().await;
            if TAKEN.swap(true, Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            () = fire => panic!("{VARIABLE}: injected panic"),
            output = task => output,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_waits_for_every_task_and_names_the_panicked_ones() {
        let tasks = Tasks::new();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("waiter", async move {
            let _ = released.await;
        });
        let panicking = tasks.spawn("doomed", async { panic!("boom") });
        assert_eq!(panicking.await.expect("not aborted"), None);
        assert_eq!(tasks.running(), ["waiter"]);
        assert_eq!(tasks.panicked(), ["doomed"]);
        assert_eq!(tasks.failure(), Some("doomed"));
        tokio::time::timeout(Duration::from_secs(5), tasks.failed())
            .await
            .expect("the panic failed the node");
        tasks.close();
        release.send(()).expect("waiter alive");
        tasks.wait().await;
        assert!(tasks.is_empty());
        assert!(tasks.running().is_empty());
    }

    #[tokio::test]
    async fn a_restartable_task_is_made_again_after_a_panic_until_it_panics_too_often() {
        let tasks = Tasks::new();
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Panics on its first two runs, then ends normally.
        let handle = tasks.spawn_restarting("flaky", {
            let made = made.clone();
            move || {
                let run = made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    assert!(run >= 2, "run {run} panics");
                    run
                }
            }
        });
        assert_eq!(handle.await.expect("not aborted"), Some(2));
        assert_eq!(tasks.panicked(), ["flaky", "flaky"]);
        assert_eq!(tasks.failure(), None);
        assert_eq!(panic_counts()["flaky"], 2);

        let always = tasks.spawn_restarting("hopeless", || async { panic!("always") });
        assert_eq!(always.await.expect("not aborted"), None::<()>);
        assert_eq!(
            tasks
                .panicked()
                .iter()
                .filter(|n| **n == "hopeless")
                .count(),
            MAX_PANICS + 1
        );
        assert_eq!(tasks.failure(), Some("hopeless"));
    }

    #[tokio::test]
    async fn an_aborted_task_is_no_longer_running() {
        let tasks = Tasks::new();
        let handle = tasks.spawn("forever", std::future::pending::<()>());
        handle.abort();
        assert!(handle.await.is_err());
        assert!(tasks.running().is_empty());
    }
}
