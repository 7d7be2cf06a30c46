//! Connection limits: sockets per node and per user, and new sessions a
//! second per node.
//!
//! The node-wide limits shed load before a session exists: the Engine.IO
//! handshake gets HTTP 503 with `Retry-After`, which Socket.IO clients treat
//! as a transport error and retry with their back-off. The per-user limit
//! needs the token, so it refuses the Socket.IO connect with
//! `too many connections`. With a shared engine it counts the user's
//! sockets on every node; when that count cannot be read, the node's own
//! count still applies (a Redis hiccup must not lock users out).

use std::{
    collections::HashMap,
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

use super::budget::EventBudget;
use crate::metrics::{ShedReason, StoreOp};
use crate::{
    auth::Rejection,
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
    total: AtomicUsize,
    per_user: Mutex<HashMap<String, usize>>,
    /// Every node's sockets, for the per-user limit across the cluster.
    cluster: Option<Arc<dyn UserSessions>>,
    /// New sessions wait for the namespace to open and stop at drain.
    health: Option<Health>,
}

/// Held in a socket's extensions: the socket counts against the limits
/// until it is dropped, whichever way it ends.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    user: String,
    counted_in_cluster: bool,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_user: usize, new_per_s: u32) -> Self {
        Self {
            max_total,
            max_per_user,
            new_sessions: EventBudget::new(new_per_s),
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
                if e.is_transient() {
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

    /// Whether a new Engine.IO session may start on this node.
    fn admit_session(&self) -> Result<(), ShedReason> {
        if let Some(health) = &self.health
            && (!health.adapter_ready() || health.draining())
        {
            return Err(ShedReason::NotReady);
        }
        if self.max_total > 0 && self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(ShedReason::NodeFull);
        }
        if !self.new_sessions.admit(tokio::time::Instant::now()) {
            return Err(ShedReason::ConnectRate);
        }
        Ok(())
    }

    /// Counts an authenticated socket of `user`, unless the user has
    /// `max_per_user` already, on this node or on all nodes together.
    pub async fn admit(self: &Arc<Self>, user: &str) -> Result<Arc<ConnectionPermit>, Rejection> {
        let mut permit = self.admit_here(user)?;
        if let Some(cluster) = self.cluster.as_ref().filter(|_| self.max_per_user > 0) {
            match cluster.admit(user, self.max_per_user).await {
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

    fn admit_here(self: &Arc<Self>, user: &str) -> Result<ConnectionPermit, Rejection> {
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_user.entry(user.to_owned()).or_default();
        if self.max_per_user > 0 && *count >= self.max_per_user {
            return Err(Rejection::TooManyConnections);
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionPermit {
            limits: self.clone(),
            user: user.to_owned(),
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
        if let Some(count) = per_user.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                per_user.remove(&self.user);
            }
        }
        drop(per_user);
        if let (true, Some(cluster)) = (self.counted_in_cluster, &self.limits.cluster)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (cluster, user) = (cluster.clone(), std::mem::take(&mut self.user));
            runtime.spawn(async move {
                if cluster.release(user).await.is_err() {
                    metrics::store_error(StoreOp::Sessions);
                }
            });
        }
    }
}

/// Refuses new Engine.IO sessions (requests to the Socket.IO path without a
/// `sid`) beyond the node's limits; requests of existing sessions pass.
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
    if new_session && let Err(reason) = limits.admit_session() {
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
        let limits = Arc::new(ConnectionLimits::new(3, 2, 0));
        let a = limits.admit("u1").await.unwrap();
        let b = limits.admit("u1").await.unwrap();
        assert!(matches!(
            limits.admit("u1").await,
            Err(Rejection::TooManyConnections)
        ));
        let c = limits.admit("u2").await.unwrap();
        assert_eq!(limits.admit_session(), Err(ShedReason::NodeFull));
        drop(a);
        assert!(limits.admit_session().is_ok());
        assert!(limits.admit("u1").await.is_ok());
        drop((b, c));
    }
}
