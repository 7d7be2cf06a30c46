//! Tokens that expire while connected end their connection: a socket is
//! disconnected by the server once its token's `exp` (plus the configured
//! leeway) has passed, and is told `auth:expiring` a notice period before
//! `exp` so that it can send `auth:refresh` first. One map and one task per
//! node, not a timer per socket: idle sockets stay cheap.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use serde_json::json;
use socketioxide::{SocketIo, adapter::Adapter, socket::Sid};
use tokio_util::sync::CancellationToken;

use crate::sparse::ShrinkWhenSparse;
use crate::{
    auth::Principal,
    events::{ServerEvent, now_ms},
    metrics,
};

/// How often due sockets are looked for: a token outlives its `exp` by at
/// most this much, and a notice comes at most this much late.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One socket's token, as the sweeper sees it.
#[derive(Debug, Clone, Copy)]
struct Watch {
    /// Disconnect from then on (unix ms).
    ends_at_ms: u64,
    /// The token's `exp` claim, which the notice carries.
    exp_s: u64,
    /// When to send `auth:expiring` (unix ms); `None` once sent, or when
    /// notices are off. A refresh sets it again for the new token.
    notice_at_ms: Option<u64>,
}

#[derive(Default)]
pub struct Expiries {
    /// Connected sockets and their token's end.
    due: Mutex<HashMap<Sid, Watch>>,
    /// `auth:expiring` this long before `exp`; zero: never.
    notice: Duration,
}

/// What one sweep found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Due {
    expired: Vec<Sid>,
    /// Sockets to notify, with their token's `exp`.
    expiring: Vec<(Sid, u64)>,
}

impl Expiries {
    /// `notice` before a token's `exp` its socket is told (zero: never).
    pub fn new(notice: Duration) -> Self {
        Self {
            due: Mutex::default(),
            notice,
        }
    }

    /// Watches `sid` until the end of `principal`'s token, replacing what
    /// was watched for it before (a refreshed token starts afresh, notice
    /// included). A principal without an expiry is not watched.
    pub fn watch(&self, sid: Sid, principal: &Principal) {
        let (Some(ends_at_ms), Some(exp_s)) = (principal.expires_at_ms(), principal.exp()) else {
            self.forget(sid);
            return;
        };
        let notice_at_ms = (!self.notice.is_zero()).then(|| {
            exp_s
                .saturating_mul(1000)
                .saturating_sub(self.notice.as_millis() as u64)
        });
        self.due().insert(
            sid,
            Watch {
                ends_at_ms,
                exp_s,
                notice_at_ms,
            },
        );
    }

    /// A socket that left needs no watching.
    pub fn forget(&self, sid: Sid) {
        let mut due = self.due();
        due.remove(&sid);
        due.shrink_when_sparse();
    }

    fn due(&self) -> std::sync::MutexGuard<'_, HashMap<Sid, Watch>> {
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the sockets whose token expired by `now_ms` and takes the
    /// notices due (each once); a scan of the node's sockets, about a
    /// microsecond per thousand.
    fn take_due(&self, now_ms: u64) -> Due {
        let mut due = Due::default();
        self.due().retain(|sid, watch| {
            if watch.ends_at_ms <= now_ms {
                due.expired.push(*sid);
                return false;
            }
            if watch.notice_at_ms.is_some_and(|at| at <= now_ms) {
                watch.notice_at_ms = None;
                due.expiring.push((*sid, watch.exp_s));
            }
            true
        });
        due
    }

    /// Disconnects sockets whose token expired and notifies those whose
    /// token soon will, until `stop`. A socket that left earlier is simply
    /// not found.
    pub async fn run<A: Adapter>(&self, io: SocketIo<A>, stop: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = sweep.tick() => {}
            }
            let Some(ns) = io.of("/") else { continue };
            let now = now_ms();
            let Due { expired, expiring } = self.take_due(now);
            for sid in expired {
                let Some(socket) = ns.get_socket(sid) else {
                    continue;
                };
                // A refresh that landed between the scan and here wins.
                if let Some(principal) = socket.extensions.get::<Principal>()
                    && principal.expires_at_ms().is_some_and(|at| at > now)
                {
                    self.watch(sid, &principal);
                    continue;
                }
                metrics::token_expired();
                tracing::debug!(%sid, "token expired: disconnected");
                let _ = socket.disconnect();
            }
            for (sid, exp) in expiring {
                if let Some(socket) = ns.get_socket(sid) {
                    // A full buffer drops the notice: the disconnect still comes.
                    if socket
                        .emit(ServerEvent::AuthExpiring.as_str(), &json!({ "exp": exp }))
                        .is_ok()
                    {
                        metrics::token_expiry_notice();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    /// A principal whose token's `exp` is `exp_s`, honoured 5 s longer.
    fn token(exp_s: u64) -> Principal {
        Principal::new("c1", Role::Customer, vec![]).expiring_at(exp_s, 5)
    }

    #[test]
    fn takes_only_what_is_due() {
        let e = Expiries::default();
        let (a, b, c) = (Sid::new(), Sid::new(), Sid::new());
        e.watch(a, &token(300));
        e.watch(b, &token(100));
        e.watch(c, &token(200));
        e.forget(c);
        assert_eq!(e.take_due(250_000).expired, vec![b]);
        assert_eq!(e.take_due(250_000), Due::default());
        assert_eq!(e.take_due(305_000).expired, vec![a]);
    }

    #[test]
    fn notices_come_once_per_token_and_again_after_a_refresh() {
        let e = Expiries::new(Duration::from_secs(60));
        let s = Sid::new();
        e.watch(s, &token(1000));
        assert_eq!(e.take_due(939_999), Due::default());
        assert_eq!(e.take_due(940_000).expiring, vec![(s, 1000)]);
        assert_eq!(e.take_due(950_000), Due::default());
        // Refreshed: the old exp passes quietly, the new one is noticed.
        e.watch(s, &token(2000));
        assert_eq!(e.take_due(1_005_000), Due::default());
        assert_eq!(e.take_due(1_940_000).expiring, vec![(s, 2000)]);
        assert_eq!(e.take_due(2_005_000).expired, vec![s]);
    }

    #[test]
    fn a_token_shorter_than_the_notice_is_noticed_at_once_and_zero_is_off() {
        let e = Expiries::new(Duration::from_secs(60));
        let s = Sid::new();
        e.watch(s, &token(1010));
        assert_eq!(e.take_due(1_000_000).expiring, vec![(s, 1010)]);
        let off = Expiries::new(Duration::ZERO);
        off.watch(s, &token(1010));
        assert_eq!(off.take_due(1_014_999), Due::default());
        assert_eq!(off.take_due(1_015_000).expired, vec![s]);
    }
}
