//! Tokens that expire while connected end their connection: a socket is
//! disconnected by the server once its token's `exp` (plus the configured
//! leeway) has passed. One map and one task per node, not a timer per
//! socket: idle sockets stay cheap.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use socketioxide::{SocketIo, adapter::Adapter, socket::Sid};
use tokio_util::sync::CancellationToken;

use crate::{events::now_ms, metrics};

/// How often due sockets are looked for: a token outlives its `exp` by at
/// most this much.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Expiries {
    /// Connected sockets and when their token expires (unix ms).
    due: Mutex<HashMap<Sid, u64>>,
}

impl Expiries {
    pub fn watch(&self, sid: Sid, expires_at_ms: u64) {
        self.due().insert(sid, expires_at_ms);
    }

    /// A socket that left needs no watching.
    pub fn forget(&self, sid: Sid) {
        self.due().remove(&sid);
    }

    fn due(&self) -> std::sync::MutexGuard<'_, HashMap<Sid, u64>> {
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes and returns the sockets whose token expired by `now_ms`; a
    /// scan of the node's sockets, about a microsecond per thousand.
    fn take_due(&self, now_ms: u64) -> Vec<Sid> {
        let mut sids = Vec::new();
        self.due().retain(|sid, at| {
            let expired = *at <= now_ms;
            if expired {
                sids.push(*sid);
            }
            !expired
        });
        sids
    }

    /// Disconnects sockets whose token expired, until `stop`. A socket that
    /// left earlier is simply not found.
    pub async fn run<A: Adapter>(&self, io: SocketIo<A>, stop: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = sweep.tick() => {}
            }
            let Some(ns) = io.of("/") else { continue };
            for sid in self.take_due(now_ms()) {
                if let Some(socket) = ns.get_socket(sid) {
                    metrics::token_expired();
                    tracing::debug!(%sid, "token expired: disconnected");
                    let _ = socket.disconnect();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_what_is_due() {
        let e = Expiries::default();
        let (a, b, c) = (Sid::new(), Sid::new(), Sid::new());
        e.watch(a, 300);
        e.watch(b, 100);
        e.watch(c, 200);
        e.forget(c);
        assert_eq!(e.take_due(250), vec![b]);
        assert_eq!(e.take_due(250), Vec::<Sid>::new());
        assert_eq!(e.take_due(300), vec![a]);
    }
}
