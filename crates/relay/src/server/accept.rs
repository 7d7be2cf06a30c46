//! The listener: accepts TCP connections and serves HTTP/1.1 on them with
//! hyper (WebSocket upgrades included), with the bounds `axum::serve` does
//! not have.
//!
//! A connection that is not a Socket.IO session (no WebSocket upgrade, no
//! request of a live polling session yet) is *pending*. Pending connections
//! are bounded (`RELAY_MAX_PENDING_CONNECTIONS`): beyond, a new connection is
//! closed at once. Every HTTP connection gets `RELAY_HTTP_HEADER_TIMEOUT_MS`
//! for a request's headers (from its start, or from the first byte of a next
//! request) and `RELAY_HTTP_IDLE_TIMEOUT_MS` between two requests. A request
//! in progress (a long poll waits up to the ping interval) is never cut, and
//! an upgraded WebSocket leaves all this behind: its heartbeats govern it.
//!
//! hyper's own `header_read_timeout` cannot serve: it runs from the end of a
//! response too, so it would be the idle timeout as well.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Request},
    http::{StatusCode, Uri},
};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_service::Service;

use crate::{
    config::HttpConfig,
    metrics::{self, HttpCloseReason},
};

/// Pause after an accept that failed for want of resources (EMFILE,
/// ENFILE, ENOBUFS): the loop must not spin while nothing can be accepted.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `stop`; then closes the listener, lets
/// requests in progress finish (idle connections close at once) and returns
/// once every connection has ended.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    http: HttpConfig,
    stop: CancellationToken,
) -> io::Result<()> {
    let pending = Arc::new(Semaphore::new(http.max_pending));
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    metrics::set_http_pending(0);
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e, &stop).await;
                    continue;
                }
            },
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            metrics::http_connection_closed(HttpCloseReason::PendingFull);
            drop(stream);
            continue;
        };
        let watch = Arc::new(Watch::new(PendingSlot::new(
            permit,
            pending.clone(),
            http.max_pending,
        )));
        connections.spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            http,
            watch,
            closing.clone(),
        ));
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn accept_failed(e: &io::Error, stop: &CancellationToken) {
    // The peer gave up before we took its connection: nothing to wait for.
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    ) {
        return;
    }
    metrics::http_accept_error();
    tracing::warn!(error = %e, backoff = ?ACCEPT_BACKOFF, "accept failed");
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    http: HttpConfig,
    watch: Arc<Watch>,
    closing: CancellationToken,
) {
    let io = TokioIo::new(Watched {
        io: stream,
        watch: watch.clone(),
    });
    // Marks requests in progress, and the connection a session once it carries one.
    let service = hyper::service::service_fn({
        let watch = watch.clone();
        move |request: hyper::Request<Incoming>| {
            let (mut app, watch) = (app.clone(), watch.clone());
            async move {
                let busy = watch.request_started();
                let of_session = of_session(request.uri());
                let mut request: Request = request.map(Body::new);
                // The gateway's per-address budget reads the peer from here,
                // as axum's `into_make_service_with_connect_info` would put it.
                request.extensions_mut().insert(ConnectInfo(peer));
                let response = app.call(request).await.unwrap_or_else(|e| match e {});
                let status = response.status();
                if status == StatusCode::SWITCHING_PROTOCOLS || (of_session && status.is_success())
                {
                    watch.became_session();
                }
                // In progress until hyper has taken the whole body.
                Ok::<_, Infallible>(response.map(|body| Body::new(Tracked { body, _busy: busy })))
            }
        }
    });
    // No timer is given to hyper: its header timeout would also be the idle one.
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = pin!(conn);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                return;
            }
            reason = watch.expired(&http) => {
                metrics::http_connection_closed(reason);
                return;
            }
            () = closing.cancelled(), if !shutting_down => {
                shutting_down = true;
                // Nothing in progress and no request coming in: close now.
                // A request whose first bytes came in is answered first.
                if watch.idle() && !watch.heard.load(Ordering::Relaxed) {
                    return;
                }
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A request of an existing Engine.IO session (polling).
fn of_session(uri: &Uri) -> bool {
    uri.path().starts_with("/socket.io")
        && uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("sid=")))
}

/// One connection's place among the pending ones, given back when it
/// becomes a session or ends.
struct PendingSlot {
    permit: Option<OwnedSemaphorePermit>,
    pending: Arc<Semaphore>,
    max: usize,
}

impl PendingSlot {
    fn new(permit: OwnedSemaphorePermit, pending: Arc<Semaphore>, max: usize) -> Self {
        let slot = Self {
            permit: Some(permit),
            pending,
            max,
        };
        slot.report();
        slot
    }

    fn report(&self) {
        metrics::set_http_pending(self.max.saturating_sub(self.pending.available_permits()));
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.report();
    }
}

/// What a connection is doing, for its timeouts.
struct Watch {
    /// Bytes came in since the connection last went idle (read on every
    /// read: an atomic, not the lock).
    heard: AtomicBool,
    state: Mutex<State>,
    changed: Notify,
    slot: Mutex<Option<PendingSlot>>,
}

struct State {
    /// Requests whose response hyper has not taken in full yet.
    in_flight: usize,
    /// Since when nothing is in progress (the connection's start, at first).
    idle_since: Instant,
    /// The first byte of a next request, while its headers come in.
    heard_at: Option<Instant>,
    /// Requests answered on this connection.
    served: u64,
}

impl State {
    /// When the connection is to be closed, and why; none while a request
    /// is in progress.
    fn deadline(&self, http: &HttpConfig) -> Option<(Instant, HttpCloseReason)> {
        if self.in_flight > 0 {
            return None;
        }
        Some(match self.heard_at {
            Some(at) => (at + http.header_timeout, HttpCloseReason::HeaderTimeout),
            // A connection that never sent a request is waiting for headers.
            None if self.served == 0 => (
                self.idle_since + http.header_timeout,
                HttpCloseReason::HeaderTimeout,
            ),
            None => (
                self.idle_since + http.idle_timeout,
                HttpCloseReason::IdleTimeout,
            ),
        })
    }
}

impl Watch {
    fn new(slot: PendingSlot) -> Self {
        Self {
            heard: AtomicBool::new(false),
            state: Mutex::new(State {
                in_flight: 0,
                idle_since: Instant::now(),
                heard_at: None,
                served: 0,
            }),
            changed: Notify::new(),
            slot: Mutex::new(Some(slot)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn heard(&self) {
        if self.heard.load(Ordering::Relaxed) || self.heard.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut state = self.state();
        if state.in_flight == 0 && state.heard_at.is_none() {
            state.heard_at = Some(Instant::now());
        }
        drop(state);
        self.changed.notify_one();
    }

    fn request_started(self: &Arc<Self>) -> Busy {
        let mut state = self.state();
        state.in_flight += 1;
        state.heard_at = None;
        drop(state);
        self.changed.notify_one();
        Busy(self.clone())
    }

    fn idle(&self) -> bool {
        self.state().in_flight == 0
    }

    fn became_session(&self) {
        drop(self.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// Resolves once the connection's deadline has passed, with the reason.
    async fn expired(&self, http: &HttpConfig) -> HttpCloseReason {
        loop {
            let deadline = self.state().deadline(http);
            match deadline {
                None => self.changed.notified().await,
                Some((at, _)) => tokio::select! {
                    () = tokio::time::sleep_until(at) => {
                        // Only if nothing moved the deadline meanwhile.
                        if let Some((at, reason)) = self.state().deadline(http)
                            && at <= Instant::now()
                        {
                            return reason;
                        }
                    }
                    () = self.changed.notified() => {}
                },
            }
        }
    }
}

/// A request in progress; dropped with its response body (or with the
/// request, when the connection ends first).
struct Busy(Arc<Watch>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            state.heard_at = None;
            state.served += 1;
            self.0.heard.store(false, Ordering::Relaxed);
        }
        drop(state);
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its request in progress until it is dropped.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The TCP stream, telling its [`Watch`] when bytes come in.
struct Watched {
    io: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.watch.heard();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
