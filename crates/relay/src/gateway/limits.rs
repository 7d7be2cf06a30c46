//! Connection limits: sockets per node and per user, and new sessions a
//! second per node and per client address.
//!
//! The node-wide limits shed load before a session exists: the Engine.IO
//! handshake gets HTTP 503 with `Retry-After`, which Socket.IO clients treat
//! as a transport error and retry with their back-off. So do new sessions
//! while the store does not answer: a client let in then could not join its
//! order rooms (see `connection`). The per-address budget is taken before the
//! node-wide one, so that a flood from one address, refused, leaves the
//! node's budget to everyone else. The per-user limit needs the token, so
//! it refuses the Socket.IO connect with `too many connections`; a user is
//! a role and a `sub`, as rooms are. With a shared engine it counts the
//! user's sockets on every node; when that count cannot be read, the node's
//! own count still applies (a Redis hiccup must not lock users out).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use tokio_util::sync::CancellationToken;

use super::{addresses::AddressBudgets, budget::EventBudget, peer};
use crate::metrics::{ShedReason, StoreOp};
use crate::sparse::ShrinkWhenSparse;
use crate::{
    auth::{Rejection, Role},
    config::IpNet,
    engine::{Health, UserSessions},
    metrics,
};

/// How often this node tells the others it is alive (its sockets count
/// for 10 s after each).
const KEEP_ALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

pub struct ConnectionLimits {
    /// Sockets per node (0 = no limit).
    max_total: usize,
    /// Sockets per user on this node (0 = no limit).
    max_per_user: usize,
    new_sessions: EventBudget,
    /// New sessions per client address.
    per_address: AddressBudgets,
    /// Peers whose X-Forwarded-For names the client.
    trusted_proxies: Vec<IpNet>,
    total: AtomicUsize,
    per_user: Mutex<HashMap<(Role, String), usize>>,
    /// Every node's sockets, for the per-user limit across the cluster.
    cluster: Option<Arc<dyn UserSessions>>,
    /// New sessions wait for the namespace to open and stop at drain.
    health: Option<Health>,
}

/// Held in a socket's extensions: the socket counts against the limits
/// until it is dropped, whichever way it ends.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    role: Role,
    sub: String,
    counted_in_cluster: bool,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_user: usize, new_per_s: u32) -> Self {
        Self {
            max_total,
            max_per_user,
            new_sessions: EventBudget::new(new_per_s),
            per_address: AddressBudgets::new(0),
            trusted_proxies: Vec::new(),
            total: AtomicUsize::new(0),
            per_user: Mutex::default(),
            cluster: None,
            health: None,
        }
    }

    /// Refuses new sessions while the namespace is not open (a client
    /// would get a bare `Invalid namespace`) and once the node drains:
    /// with 503 the official clients retry, elsewhere or a bit later.
    pub fn gated_by(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// New sessions per client address a second (0 = no limit), the
    /// address read behind `trusted_proxies` (see `peer`).
    pub fn per_address(mut self, rate: u32, trusted_proxies: Vec<IpNet>) -> Self {
        self.per_address = AddressBudgets::new(rate);
        self.trusted_proxies = trusted_proxies;
        self
    }

    /// Counts each user's sockets on every node as well.
    pub fn across(mut self, cluster: Option<Arc<dyn UserSessions>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Keeps this node's sockets counting for the other nodes, until `stop`.
    pub async fn keep_alive(&self, stop: CancellationToken) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        loop {
            if let Err(e) = cluster.keep_alive().await {
                metrics::store_error(StoreOp::Sessions);
                // Tried again next round either way; a refusal needs an operator.
                if e.is_transient() || e.told_by_health() {
                    tracing::debug!(error = %e, "session keep-alive failed");
                } else {
                    tracing::error!(error = %e, "session keep-alive refused: other nodes may stop counting this node's sockets");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(KEEP_ALIVE_EVERY) => {}
            }
        }
    }

    /// Whether a new Engine.IO session from `client` (None: unknown) may
    /// start on this node.
    fn admit_session(&self, client: Option<IpAddr>) -> Result<(), ShedReason> {
        if let Some(health) = &self.health
            && (!health.adapter_ready() || !health.store_up() || health.draining())
        {
            return Err(ShedReason::NotReady);
        }
        if self.max_total > 0 && self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(ShedReason::NodeFull);
        }
        let now = tokio::time::Instant::now();
        if let Some(client) = client
            && !self.per_address.admit(peer::budget_key(client), now)
        {
            return Err(ShedReason::AddrRate);
        }
        if !self.new_sessions.admit(now) {
            return Err(ShedReason::ConnectRate);
        }
        Ok(())
    }

    /// Counts an authenticated socket of user `sub` in `role`, unless the
    /// user has `max_per_user` already, on this node or on all nodes together.
    pub async fn admit(
        self: &Arc<Self>,
        role: Role,
        sub: &str,
    ) -> Result<Arc<ConnectionPermit>, Rejection> {
        let mut permit = self.admit_here(role, sub)?;
        if let Some(cluster) = self.cluster.as_ref().filter(|_| self.max_per_user > 0) {
            match cluster.admit(role, sub, self.max_per_user).await {
                Ok(true) => permit.counted_in_cluster = true,
                Ok(false) => return Err(Rejection::TooManyConnections),
                Err(e) => {
                    metrics::store_error(StoreOp::Sessions);
                    tracing::warn!(error = %e, "per-user count across nodes unavailable; this node's count applies");
                }
            }
        }
        Ok(Arc::new(permit))
    }

    fn admit_here(self: &Arc<Self>, role: Role, sub: &str) -> Result<ConnectionPermit, Rejection> {
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_user.entry((role, sub.to_owned())).or_default();
        if self.max_per_user > 0 && *count >= self.max_per_user {
            return Err(Rejection::TooManyConnections);
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionPermit {
            limits: self.clone(),
            role,
            sub: sub.to_owned(),
            counted_in_cluster: false,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        let mut per_user = self
            .limits
            .per_user
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let user = (self.role, std::mem::take(&mut self.sub));
        if let Some(count) = per_user.get_mut(&user) {
            *count -= 1;
            if *count == 0 {
                per_user.remove(&user);
                per_user.shrink_when_sparse();
            }
        }
        drop(per_user);
        if let (true, Some(cluster)) = (self.counted_in_cluster, &self.limits.cluster)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (cluster, (role, sub)) = (cluster.clone(), user);
            runtime.spawn(async move {
                if cluster.release(role, sub).await.is_err() {
                    metrics::store_error(StoreOp::Sessions);
                }
            });
        }
    }
}

/// Refuses new Engine.IO sessions (requests to the Socket.IO path without a
/// `sid`) beyond the node's limits; requests of existing sessions pass.
///
/// The client address comes from the request's `ConnectInfo<SocketAddr>`
/// extension, which the server must insert (see `peer`); without it only
/// the node-wide budget applies.
pub async fn shed_new_sessions(
    State(limits): State<Arc<ConnectionLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let new_session = request.uri().path().starts_with("/socket.io")
        && !request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("sid=")));
    let admitted = if new_session {
        let client = peer::client_addr(
            request.extensions(),
            request.headers(),
            &limits.trusted_proxies,
        );
        limits.admit_session(client)
    } else {
        Ok(())
    };
    if let Err(reason) = admitted {
        metrics::connection_shed(reason);
        let mut response =
            (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_count_per_user_and_return_on_drop() {
        let limits = Arc::new(ConnectionLimits::new(4, 2, 0));
        let a = limits.admit(Role::Customer, "u1").await.unwrap();
        let b = limits.admit(Role::Customer, "u1").await.unwrap();
        assert!(matches!(
            limits.admit(Role::Customer, "u1").await,
            Err(Rejection::TooManyConnections)
        ));
        // A driver with the same sub is another user, as its rooms are.
        let d = limits.admit(Role::Driver, "u1").await.unwrap();
        let c = limits.admit(Role::Customer, "u2").await.unwrap();
        assert_eq!(limits.admit_session(None), Err(ShedReason::NodeFull));
        drop(a);
        assert!(limits.admit_session(None).is_ok());
        assert!(limits.admit(Role::Customer, "u1").await.is_ok());
        drop((b, c, d));
    }

    #[tokio::test]
    async fn one_address_cannot_take_the_node_budget() {
        let limits = ConnectionLimits::new(0, 0, 5).per_address(2, Vec::new());
        let flood: IpAddr = "198.51.100.1".parse().unwrap();
        let refused: Vec<_> = (0..20)
            .filter_map(|_| limits.admit_session(Some(flood)).err())
            .collect();
        assert_eq!(refused.len(), 18);
        assert!(refused.iter().all(|r| *r == ShedReason::AddrRate));
        // The flood's refusals took nothing from the node's budget.
        for i in 2..5 {
            let other: IpAddr = format!("198.51.100.{i}").parse().unwrap();
            assert!(limits.admit_session(Some(other)).is_ok());
        }
        assert_eq!(limits.admit_session(None), Err(ShedReason::ConnectRate));
    }
}
