//! What can go wrong behind the engine seam, by kind: callers retry the
//! transient kinds and report the others, instead of retrying everything.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::metrics::RedisFailure;

/// A failure of the backing store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached: connection refused or dropped, I/O.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] RedisError),
    /// The store did not answer in time.
    #[error("store timed out: {0}")]
    Timeout(#[source] RedisError),
    /// The store answered with an error (wrong type, no permission, a script
    /// error, or a passing state such as LOADING or a cluster failover).
    #[error("store refused: {0}")]
    Reply(#[source] RedisError),
    /// The operation was given up because this node is shutting down.
    #[error("shutting down")]
    Cancelled,
    /// The store answered something that cannot be read back: a reply of
    /// another shape than the command's, or a value this node cannot encode.
    #[error("unreadable store data: {0}")]
    BadData(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// The Redis error behind this one, if any.
    pub fn redis(&self) -> Option<&RedisError> {
        match self {
            Self::Unavailable(e) | Self::Timeout(e) | Self::Reply(e) => Some(e),
            Self::Cancelled | Self::BadData(_) => None,
        }
    }

    /// Whether the same operation may succeed later without anyone changing
    /// anything: worth retrying in place. Everything else is reported (and,
    /// for a stream entry, left to the claim and dead-letter path).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable(_) | Self::Timeout(_) => true,
            Self::Reply(e) => reply_is_transient(e),
            Self::Cancelled | Self::BadData(_) => false,
        }
    }

    /// A refused password or a TLS failure: every connection fails alike and
    /// the health watch logs it once, naming the cause, so the retries of
    /// each task log it at debug level only.
    pub fn told_by_health(&self) -> bool {
        self.redis()
            .is_some_and(|e| matches!(redis_failure(e), RedisFailure::Tls | RedisFailure::Auth))
    }

    /// The store cannot serve now (as opposed to refusing this request or
    /// answering nonsense): what HTTP calls 503.
    pub fn is_unavailable(&self) -> bool {
        self.is_transient() || matches!(self, Self::Cancelled)
    }
}

/// Server states that pass by themselves: a dump loading, a failover, a
/// cluster resharding, a busy script. The rest (WRONGTYPE, NOPERM,
/// NOSCRIPT in a pipeline, CROSSSLOT, ...) answers the same until an
/// operator acts.
fn reply_is_transient(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        ) => true,
        _ => e.code() == Some("BUSY"),
    }
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        if e.is_timeout() {
            return Self::Timeout(e);
        }
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            return Self::Unavailable(e);
        }
        match e.kind() {
            ErrorKind::ClusterConnectionNotFound
            | ErrorKind::MasterNameNotFoundBySentinel
            | ErrorKind::NoValidReplicasFoundBySentinel => Self::Unavailable(e),
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => Self::BadData(e.to_string()),
            // Server errors, authentication, client-side refusals: the
            // answer stays the same until something is changed.
            _ => Self::Reply(e),
        }
    }
}

/// Why a Redis error keeps this node from using Redis: the cause that the
/// one log line names and `relay_redis_connect_errors_total` counts.
pub fn redis_failure(e: &RedisError) -> RedisFailure {
    if e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
    {
        return RedisFailure::Auth;
    }
    if e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) || e.code() == Some("NOPERM") {
        return RedisFailure::Permission;
    }
    if is_tls(e) {
        return RedisFailure::Tls;
    }
    RedisFailure::Unreachable
}

/// The one line that tells an operator why this node cannot use Redis.
/// Neither the URL nor the password is in it: Redis's own messages carry
/// neither, and for a refused password only the cause is shown.
pub fn log_redis_failure(cause: RedisFailure, e: &RedisError) {
    match cause {
        RedisFailure::Tls => tracing::error!(
            cause = cause.as_str(),
            error = %e,
            "redis TLS handshake failed: the server's certificate does not verify \
             against RELAY_REDIS_CA_FILE (or the system's roots), or the server \
             refused the client certificate (RELAY_REDIS_CLIENT_CERT); node stays unready"
        ),
        RedisFailure::Auth => tracing::error!(
            cause = cause.as_str(),
            "redis refused the user name or password of REDIS_URL (or REDIS_CLUSTER_URLS); node stays unready"
        ),
        RedisFailure::Permission => tracing::error!(
            cause = cause.as_str(),
            error = %e,
            "the redis ACL user of REDIS_URL (or REDIS_CLUSTER_URLS) lacks a permission relay needs \
             (docs/deploy.md lists them); node stays unready"
        ),
        RedisFailure::Unreachable => {
            tracing::warn!(cause = cause.as_str(), error = %e, "redis unreachable")
        }
    }
}

/// A TLS failure: a certificate that does not verify, an alert from the
/// server refusing ours. The handshake's own error when it is still in the
/// chain; its text otherwise, because the connection manager hands every
/// waiter a copy of a failed connect, in which an I/O error keeps only its
/// kind and message.
fn is_tls(e: &RedisError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        source = err.source();
    }
    if matches!(e.kind(), ErrorKind::Server(_)) {
        return false;
    }
    // rustls's messages: "invalid peer certificate: UnknownIssuer",
    // "received fatal alert: CertificateRequired", "peer sent no certificates".
    let text = e.to_string();
    ["certificate", "fatal alert", "handshake"]
        .iter()
        .any(|word| text.contains(word))
}

/// A failure to set an engine up.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Only the kind is shown: the URL may hold a password.
    #[error("REDIS_URL: {0:?}")]
    BadUrl(ErrorKind),
    /// A seed of REDIS_CLUSTER_URLS, by kind only, as for [`Self::BadUrl`].
    #[error("REDIS_CLUSTER_URLS: {0:?}")]
    BadClusterUrls(ErrorKind),
    /// The client could not be built from the settings (TLS files, ...).
    #[error("redis client: {0}")]
    Client(#[source] RedisError),
    /// The Socket.IO adapter's subscriptions could not be made.
    #[error("adapter: {0}")]
    Adapter(#[source] StoreError),
    #[error("adapter: malformed namespace path")]
    MalformedNamespace,
}

impl EngineError {
    /// See [`StoreError::told_by_health`].
    pub fn told_by_health(&self) -> bool {
        matches!(self, Self::Adapter(e) if e.told_by_health())
    }

    /// Whether trying again later may succeed (only the adapter's
    /// subscriptions, when Redis is away); the others are configuration.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Adapter(e) => e.is_transient(),
            Self::BadUrl(_)
            | Self::BadClusterUrls(_)
            | Self::Client(_)
            | Self::MalformedNamespace => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn io_error(kind: io::ErrorKind) -> StoreError {
        RedisError::from(io::Error::from(kind)).into()
    }

    fn server(kind: ServerErrorKind) -> StoreError {
        RedisError::from((ErrorKind::Server(kind), "server says no")).into()
    }

    #[test]
    fn io_failures_are_unavailable_and_transient() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
        ] {
            let e = io_error(kind);
            assert!(matches!(e, StoreError::Unavailable(_)), "{kind:?}: {e:?}");
            assert!(e.is_transient() && e.is_unavailable());
        }
        let dropped: StoreError = RedisError::from((ErrorKind::Io, "connection closed")).into();
        assert!(matches!(dropped, StoreError::Unavailable(_)));
        let no_node: StoreError =
            RedisError::from((ErrorKind::ClusterConnectionNotFound, "no node")).into();
        assert!(matches!(no_node, StoreError::Unavailable(_)) && no_node.is_transient());
    }

    #[test]
    fn timeouts_are_their_own_kind_and_transient() {
        let e = io_error(io::ErrorKind::TimedOut);
        assert!(matches!(e, StoreError::Timeout(_)), "{e:?}");
        assert!(e.is_transient() && e.is_unavailable());
    }

    #[test]
    fn passing_server_states_are_transient_the_rest_are_not() {
        for kind in [
            ServerErrorKind::BusyLoading,
            ServerErrorKind::TryAgain,
            ServerErrorKind::ClusterDown,
            ServerErrorKind::MasterDown,
            ServerErrorKind::ReadOnly,
        ] {
            let e = server(kind);
            assert!(matches!(e, StoreError::Reply(_)), "{kind:?}");
            assert!(e.is_transient(), "{kind:?}");
        }
        for kind in [
            ServerErrorKind::ResponseError,
            ServerErrorKind::NoScript,
            ServerErrorKind::NoPerm,
            ServerErrorKind::CrossSlot,
            ServerErrorKind::ExecAbort,
        ] {
            let e = server(kind);
            assert!(matches!(e, StoreError::Reply(_)), "{kind:?}");
            assert!(!e.is_transient() && !e.is_unavailable(), "{kind:?}");
        }
        let auth: StoreError =
            RedisError::from((ErrorKind::AuthenticationFailed, "WRONGPASS")).into();
        assert!(matches!(auth, StoreError::Reply(_)) && !auth.is_transient());
    }

    #[test]
    fn redis_failures_are_classified_by_cause() {
        let io = |msg: &str| {
            RedisError::from(io::Error::new(io::ErrorKind::InvalidData, msg.to_owned()))
        };
        let rustls = RedisError::from(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert_eq!(redis_failure(&rustls), RedisFailure::Tls);
        assert_eq!(
            redis_failure(&io("invalid peer certificate: UnknownIssuer")),
            RedisFailure::Tls
        );
        assert_eq!(
            redis_failure(&io("received fatal alert: CertificateRequired")),
            RedisFailure::Tls
        );
        let wrongpass = RedisError::from((ErrorKind::AuthenticationFailed, "WRONGPASS"));
        assert_eq!(redis_failure(&wrongpass), RedisFailure::Auth);
        let noperm = RedisError::from((ErrorKind::Server(ServerErrorKind::NoPerm), "no"));
        assert_eq!(redis_failure(&noperm), RedisFailure::Permission);
        let refused = RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(redis_failure(&refused), RedisFailure::Unreachable);
    }

    #[test]
    fn unreadable_replies_and_shutdown_are_not_retried() {
        let e: StoreError =
            RedisError::from((ErrorKind::UnexpectedReturnType, "not a string")).into();
        assert!(matches!(e, StoreError::BadData(_)));
        assert!(!e.is_transient() && !e.is_unavailable());
        assert!(!StoreError::Cancelled.is_transient());
        assert!(StoreError::Cancelled.is_unavailable());
        assert_eq!(StoreError::Cancelled.to_string(), "shutting down");
    }

    #[test]
    fn engine_errors_are_transient_only_when_the_store_is() {
        let down = EngineError::Adapter(io_error(io::ErrorKind::ConnectionRefused));
        assert!(down.is_transient());
        let acl = EngineError::Adapter(server(ServerErrorKind::NoPerm));
        assert!(!acl.is_transient());
        assert!(!EngineError::BadUrl(ErrorKind::InvalidClientConfig).is_transient());
        assert!(!EngineError::MalformedNamespace.is_transient());
        assert_eq!(
            EngineError::BadUrl(ErrorKind::InvalidClientConfig).to_string(),
            "REDIS_URL: InvalidClientConfig"
        );
    }
}
