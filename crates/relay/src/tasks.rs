//! A node's long-lived tasks. One tracker owns them all, so that a drain can
//! wait until every one has ended; each has a name, so that a panic is
//! logged with it (not lost with a dropped `JoinHandle`) and a drain past its
//! grace period can say which ones were still running.

use std::{
    any::Any,
    collections::BTreeMap,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard},
};

use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// The tracker of a node's long-lived tasks. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    names: Arc<Mutex<Names>>,
}

#[derive(Debug, Default)]
struct Names {
    next: u64,
    /// By spawn order: a name may run more than once.
    running: BTreeMap<u64, &'static str>,
    panicked: Vec<&'static str>,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `task` under `name`. Its handle resolves to `None` when it
    /// panicked; the panic is logged with the name either way.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let running = {
            let mut names = self.names();
            names.next += 1;
            let id = names.next;
            names.running.insert(id, name);
            Running {
                names: self.names.clone(),
                id,
            }
        };
        self.tracker.spawn(async move {
            // Dropped when the task ends, however it ends (aborted too).
            let _running = running;
            match AssertUnwindSafe(task).catch_unwind().await {
                Ok(output) => Some(output),
                Err(panic) => {
                    tracing::error!(task = name, panic = panic_message(&*panic), "task panicked");
                    _running.names().panicked.push(name);
                    None
                }
            }
        })
    }

    /// Names of the tasks still running, in the order they were spawned.
    pub fn running(&self) -> Vec<&'static str> {
        self.names().running.values().copied().collect()
    }

    /// Names of the tasks that ended in a panic.
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
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A task's entry among the running ones, removed when it ends.
struct Running {
    names: Arc<Mutex<Names>>,
    id: u64,
}

impl Running {
    fn names(&self) -> MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.names().running.remove(&self.id);
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
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
        tasks.close();
        release.send(()).expect("waiter alive");
        tasks.wait().await;
        assert!(tasks.is_empty());
        assert!(tasks.running().is_empty());
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
