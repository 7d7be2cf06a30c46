//! A small Socket.IO v4 client (Engine.IO protocol v4, Socket.IO protocol v5).
//!
//! Scope: the main namespace `"/"` only, JSON text packets only (no binary attachments).
//! Transports: WebSocket, HTTP long-polling, and polling upgraded to WebSocket.
//!
//! Design:
//! * [`Client::connect`] performs the whole handshake (Engine.IO open, Socket.IO CONNECT and,
//!   for [`Transport::PollingThenUpgrade`], the WebSocket upgrade) inline, under one
//!   [`ConnectOptions::timeout`]. No task is spawned before the handshake succeeds, so a
//!   timed-out or failed connect leaves nothing running.
//! * After the handshake, exactly one driver task per connection owns the transport: it answers
//!   the server's pings, dispatches acks to waiters and queues server events. On polling it keeps
//!   one long-poll GET in flight and at most one POST (outgoing packets queued meanwhile are
//!   batched into the next POST, joined by `\x1e`).
//! * Dropping a [`Client`] aborts its driver task; [`Client::disconnect`] closes gracefully.
//! * The driver declares the connection dead when nothing arrives from the server for
//!   `pingInterval + pingTimeout` (the server pings every `pingInterval`).
//! * Outgoing packets go through an unbounded queue: `emit` never blocks, it only fails with
//!   [`ClientError::Closed`] once the connection has ended. Incoming events are queued unbounded
//!   too, so a consumer must keep reading them (or drop the client).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod backoff;
pub use backoff::Backoff;

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;
type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Engine.IO packet separator used by the polling transport.
const SEPARATOR: char = '\x1e';
/// Upper bound for best-effort goodbyes (close frame, POST "1") that nobody waits for.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);
static NULL: Value = Value::Null;

/// Transport selection for [`ConnectOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket from the start (`transport=websocket`, no sid).
    WebSocket,
    /// HTTP long-polling only.
    Polling,
    /// Open with polling, then upgrade to WebSocket (probe `2probe`/`3probe`, then `5`).
    /// The upgrade is finished before [`Client::connect`] returns.
    PollingThenUpgrade,
}

/// The transport a connected [`Client`] is using.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    WebSocket,
    Polling,
}

/// Why the connection ended, as returned by [`Client::closed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The server disconnected the socket (Socket.IO `41`). The client then closes the transport.
    ServerDisconnect,
    /// The transport was closed: Engine.IO close packet `1`, WebSocket close frame / end of
    /// stream, or HTTP 400 on a poll (session unknown to the server).
    TransportClose,
    /// Nothing was received from the server within `pingInterval + pingTimeout`.
    PingTimeout,
    /// An I/O, HTTP or WebSocket error ended the connection.
    TransportError(String),
    /// The client closed the connection (disconnect or drop).
    ClientDisconnect,
}

/// Errors returned by the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the Socket.IO CONNECT (`44{"message":...,"data":...}`).
    #[error("connection rejected: {message}")]
    Rejected {
        message: String,
        data: Option<Value>,
    },
    /// A bounded wait expired; the string says what was awaited.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The connection is closed (or was closed while waiting).
    #[error("connection closed")]
    Closed,
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused the Engine.IO handshake with HTTP 503 or 429: a
    /// node shedding load, which names the pause it wants in `Retry-After`.
    #[error("handshake refused: HTTP {status}")]
    Refused {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("http error: {0}")]
    Http(#[from] reqwest::Error),
    #[error("websocket error: {0}")]
    WebSocket(Box<tungstenite::Error>),
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(resp) if is_shedding(resp.status().as_u16()) => {
                ClientError::Refused {
                    status: resp.status().as_u16(),
                    retry_after: retry_after(resp.headers()),
                }
            }
            e => ClientError::WebSocket(Box::new(e)),
        }
    }
}

impl ClientError {
    /// The pause a shedding node asked for, if it named one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Statuses with which a server sheds load and asks the client to come back.
fn is_shedding(status: u16) -> bool {
    status == 503 || status == 429
}

/// `Retry-After` in its delay-seconds form (relay sends no HTTP dates).
fn retry_after(headers: &tungstenite::http::HeaderMap) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Connection options. `query` values are percent-encoded by the client.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// e.g. `http://127.0.0.1:3000` (`ws://` is accepted too).
    pub base_url: String,
    /// Engine.IO path, default `/socket.io/`.
    pub path: String,
    pub transport: Transport,
    /// Extra query parameters (raw, they are percent-encoded when the URL is built).
    pub query: Vec<(String, String)>,
    /// Payload of the CONNECT packet (`40{...}`).
    pub auth: Option<Value>,
    /// Bound on the whole handshake (open, connect and upgrade). Default 5 s.
    pub timeout: Duration,
    /// HTTP client for the polling transport; a fresh one is built per connection if `None`.
    /// Share one across connections of the same tokio runtime to pool TCP connections.
    pub http_client: Option<reqwest::Client>,
}

impl ConnectOptions {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            path: "/socket.io/".to_owned(),
            transport: Transport::WebSocket,
            query: Vec::new(),
            auth: None,
            timeout: Duration::from_secs(5),
            http_client: None,
        }
    }
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }
    pub fn query(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((key.into(), value.into()));
        self
    }
    pub fn auth(mut self, auth: Value) -> Self {
        self.auth = Some(auth);
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Builds the Engine.IO URL for `transport` (`"polling"` / `"websocket"`).
    fn url(&self, transport: &str, sid: Option<&str>) -> String {
        let ws = transport == "websocket";
        let base = self.base_url.trim_end_matches('/');
        let (scheme, rest) = match base.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("http".to_owned(), base),
        };
        let secure = scheme == "https" || scheme == "wss";
        let scheme = match (ws, secure) {
            (true, false) => "ws",
            (true, true) => "wss",
            (false, false) => "http",
            (false, true) => "https",
        };
        let path = self.path.trim_start_matches('/');
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("EIO", "4")
            .append_pair("transport", transport);
        if let Some(sid) = sid {
            query.append_pair("sid", sid);
        }
        for (k, v) in &self.query {
            query.append_pair(k, v);
        }
        format!("{scheme}://{rest}/{path}?{}", query.finish())
    }
}

/// A server event. Events that request an ack can be answered later with [`Client::ack`].
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub args: Vec<Value>,
    ack_id: Option<u64>,
}

impl Event {
    /// First argument, or `Null` if there is none.
    pub fn data(&self) -> &Value {
        self.args.first().unwrap_or(&NULL)
    }
    /// Whether the server waits for an ack (`42<id>[...]`).
    pub fn needs_ack(&self) -> bool {
        self.ack_id.is_some()
    }
    pub fn ack_id(&self) -> Option<u64> {
        self.ack_id
    }
}

/// Items sent by the driver to the [`Client`]; `Closed` is always the last one.
enum Incoming {
    Event(Event),
    Closed(CloseReason),
}

/// Commands sent by the [`Client`] to the driver.
enum Cmd {
    /// A complete Engine.IO text packet, e.g. `42["ev",1]`.
    Send(String),
    /// Send `41`, close the transport, then signal.
    Disconnect(oneshot::Sender<()>),
}

type AckMap = Mutex<HashMap<u64, oneshot::Sender<Vec<Value>>>>;

/// Result of handling one Engine.IO packet.
enum Flow {
    Continue,
    Pong,
    Close(CloseReason),
}

/// Routes incoming packets to the event queue and the ack waiters.
struct Dispatch {
    events: mpsc::UnboundedSender<Incoming>,
    acks: Arc<AckMap>,
}

impl Dispatch {
    fn on_eio_packet(&self, pkt: &str) -> Flow {
        match pkt.as_bytes().first() {
            Some(b'2') if pkt.len() == 1 => Flow::Pong,
            Some(b'4') => self.on_sio_packet(&pkt[1..]),
            Some(b'1') => Flow::Close(CloseReason::TransportClose),
            // noop, pong, stray probe, empty payload
            Some(b'6' | b'3' | b'2') | None => Flow::Continue,
            _ => {
                tracing::debug!(packet = pkt, "ignoring unexpected engine.io packet");
                Flow::Continue
            }
        }
    }

    fn on_sio_packet(&self, raw: &str) -> Flow {
        let pkt = match SioPacket::parse(raw) {
            Ok(p) if p.ns_is_main => p,
            Ok(_) => return Flow::Continue,
            Err(e) => {
                tracing::warn!(packet = raw, "ignoring bad socket.io packet: {e}");
                return Flow::Continue;
            }
        };
        match pkt.kind {
            SIO_EVENT => match parse_event(pkt.data, pkt.id) {
                Ok(ev) => {
                    let _ = self.events.send(Incoming::Event(ev));
                }
                Err(e) => tracing::warn!(packet = raw, "ignoring bad event: {e}"),
            },
            SIO_ACK => {
                let Some(id) = pkt.id else {
                    tracing::warn!(packet = raw, "ack without id");
                    return Flow::Continue;
                };
                let args = match serde_json::from_str::<Vec<Value>>(pkt.data) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(packet = raw, "ignoring bad ack: {e}");
                        return Flow::Continue;
                    }
                };
                let waiter = self
                    .acks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(args);
                    }
                    None => tracing::debug!(id, "ack for unknown or expired id"),
                }
            }
            SIO_DISCONNECT => return Flow::Close(CloseReason::ServerDisconnect),
            _ => tracing::debug!(packet = raw, "ignoring socket.io packet"),
        }
        Flow::Continue
    }

    /// Ends the connection: fails pending acks and queues the final `Closed`.
    fn finish(self, reason: CloseReason) {
        tracing::debug!(?reason, "socket.io connection closed");
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let _ = self.events.send(Incoming::Closed(reason));
    }
}

const SIO_CONNECT: u8 = 0;
const SIO_DISCONNECT: u8 = 1;
const SIO_EVENT: u8 = 2;
const SIO_ACK: u8 = 3;
const SIO_CONNECT_ERROR: u8 = 4;

/// A parsed Socket.IO packet: `<type>[<nsp>,][<id>][<json>]`.
struct SioPacket<'a> {
    kind: u8,
    ns_is_main: bool,
    id: Option<u64>,
    data: &'a str,
}

impl<'a> SioPacket<'a> {
    fn parse(s: &'a str) -> Result<Self, String> {
        let b = s.as_bytes();
        let kind = match b.first() {
            Some(c @ b'0'..=b'4') => c - b'0',
            Some(b'5' | b'6') => return Err("binary packets are not supported".into()),
            _ => return Err("bad packet type".into()),
        };
        let mut i = 1;
        let mut ns_is_main = true;
        if b.get(i) == Some(&b'/') {
            let end = s[i..].find(',').map_or(s.len(), |e| i + e);
            ns_is_main = &s[i..end] == "/";
            i = (end + 1).min(s.len());
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let id = if i > start {
            Some(
                s[start..i]
                    .parse()
                    .map_err(|e| format!("bad ack id: {e}"))?,
            )
        } else {
            None
        };
        Ok(Self {
            kind,
            ns_is_main,
            id,
            data: &s[i..],
        })
    }
}

fn parse_event(data: &str, ack_id: Option<u64>) -> Result<Event, String> {
    let mut args: Vec<Value> = serde_json::from_str(data).map_err(|e| e.to_string())?;
    if args.is_empty() {
        return Err("event without name".into());
    }
    let name = match args.remove(0) {
        Value::String(s) => s,
        other => return Err(format!("event name is not a string: {other}")),
    };
    Ok(Event { name, args, ack_id })
}

/// Engine.IO open packet `0{...}`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenPacket {
    sid: String,
    #[serde(default)]
    upgrades: Vec<String>,
    ping_interval: u64,
    ping_timeout: u64,
    #[serde(default = "default_max_payload")]
    max_payload: usize,
}

fn default_max_payload() -> usize {
    100_000
}

impl OpenPacket {
    fn parse(pkt: &str) -> Result<Self, ClientError> {
        let json = pkt
            .strip_prefix('0')
            .ok_or_else(|| ClientError::Protocol(format!("expected open packet, got {pkt:?}")))?;
        serde_json::from_str(json)
            .map_err(|e| ClientError::Protocol(format!("bad open packet: {e}")))
    }
    /// Silence longer than this means the connection is dead.
    fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.ping_interval + self.ping_timeout)
    }
}

/// Builds `<prefix><id?>["name"?,args...]` in one buffer.
fn encode_packet(prefix: &str, id: Option<u64>, first: Option<&str>, args: &[Value]) -> String {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(prefix.as_bytes());
    if let Some(id) = id {
        out.extend_from_slice(id.to_string().as_bytes());
    }
    out.push(b'[');
    let mut sep = false;
    if let Some(name) = first {
        serde_json::to_writer(&mut out, name).expect("a str always serializes");
        sep = true;
    }
    for a in args {
        if sep {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, a).expect("a Value always serializes");
        sep = true;
    }
    out.push(b']');
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// A connected Socket.IO client (namespace `/`). `Send + Sync`; `emit*`/`ack` take `&self`
/// so it can be shared behind an `Arc` for concurrent emits, while receiving needs `&mut self`.
pub struct Client {
    sid: String,
    engine_sid: String,
    transport: TransportKind,
    cmd: mpsc::UnboundedSender<Cmd>,
    events: mpsc::UnboundedReceiver<Incoming>,
    /// Events skipped by [`Client::wait_for`], returned first by later receives.
    buffered: VecDeque<Event>,
    close_reason: Option<CloseReason>,
    acks: Arc<AckMap>,
    next_ack_id: AtomicU64,
    driver: Option<JoinHandle<()>>,
    disconnect_timeout: Duration,
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("sid", &self.sid)
            .field("engine_sid", &self.engine_sid)
            .field("transport", &self.transport)
            .field("close_reason", &self.close_reason)
            .finish_non_exhaustive()
    }
}

/// Handshake phases, for the name in [`ClientError::Timeout`].
const PHASE_OPEN: u8 = 0;
const PHASE_CONNECT: u8 = 1;
const PHASE_UPGRADE: u8 = 2;

/// The transport once the handshake is done.
enum Conn {
    Ws(Box<WsStream>),
    Polling {
        http: reqwest::Client,
        url: String,
    },
    /// The server closed the connection right after accepting it.
    Closed(CloseReason),
}

struct Handshake {
    sid: String,
    open: OpenPacket,
    conn: Conn,
}

impl Client {
    /// Opens the connection and performs the Socket.IO CONNECT. Returns once `40{"sid":..}` was
    /// received (and, for [`Transport::PollingThenUpgrade`], the upgrade finished), or fails with
    /// [`ClientError::Rejected`] on `44`, [`ClientError::Timeout`] after `opts.timeout`.
    pub async fn connect(opts: ConnectOptions) -> Result<Client, ClientError> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let acks: Arc<AckMap> = Arc::default();
        let dispatch = Dispatch {
            events: events_tx,
            acks: acks.clone(),
        };
        let phase = AtomicU8::new(PHASE_OPEN);
        let hs = match opts.transport {
            Transport::WebSocket => {
                timeout(opts.timeout, handshake_ws(&opts, &dispatch, &phase)).await
            }
            Transport::Polling | Transport::PollingThenUpgrade => {
                timeout(opts.timeout, handshake_polling(&opts, &dispatch, &phase)).await
            }
        };
        let hs = match hs {
            Ok(res) => res?,
            Err(_) => {
                return Err(ClientError::Timeout(match phase.load(Ordering::Relaxed) {
                    PHASE_OPEN => "engine.io open packet",
                    PHASE_CONNECT => "socket.io connect reply",
                    _ => "transport upgrade",
                }));
            }
        };

        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let heartbeat = hs.open.heartbeat();
        let (transport, driver) = match hs.conn {
            Conn::Ws(ws) => (
                TransportKind::WebSocket,
                Some(tokio::spawn(ws_driver(*ws, cmd_rx, dispatch, heartbeat))),
            ),
            Conn::Polling { http, url } => {
                let driver =
                    polling_driver(http, url, cmd_rx, dispatch, heartbeat, hs.open.max_payload);
                (TransportKind::Polling, Some(tokio::spawn(driver)))
            }
            Conn::Closed(reason) => {
                // Only the polling handshake produces this (before any upgrade).
                dispatch.finish(reason);
                (TransportKind::Polling, None)
            }
        };
        Ok(Client {
            sid: hs.sid,
            engine_sid: hs.open.sid,
            transport,
            cmd,
            events,
            buffered: VecDeque::new(),
            close_reason: None,
            acks,
            next_ack_id: AtomicU64::new(0),
            driver,
            disconnect_timeout: opts.timeout,
        })
    }

    /// The Socket.IO socket id (from `40{"sid":..}`).
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The Engine.IO session id (from the open packet).
    pub fn engine_sid(&self) -> &str {
        &self.engine_sid
    }

    /// The transport in use.
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// Number of events skipped by [`Client::wait_for`] and kept for later receives.
    pub fn buffered_len(&self) -> usize {
        self.buffered.len()
    }

    /// Drops the events skipped by [`Client::wait_for`]; returns how many were dropped.
    pub fn discard_buffered(&mut self) -> usize {
        let n = self.buffered.len();
        self.buffered.clear();
        n
    }

    /// Receives one item from the driver, recording the close reason.
    async fn recv_raw(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Event, ClientError> {
        if self.close_reason.is_some() {
            return Err(ClientError::Closed);
        }
        match timeout_at(deadline, self.events.recv()).await {
            Err(_) => Err(ClientError::Timeout(what)),
            Ok(Some(Incoming::Event(ev))) => Ok(ev),
            Ok(Some(Incoming::Closed(reason))) => {
                self.close_reason = Some(reason);
                Err(ClientError::Closed)
            }
            Ok(None) => {
                self.close_reason = Some(CloseReason::TransportError("driver task ended".into()));
                Err(ClientError::Closed)
            }
        }
    }

    /// Next server event in arrival order (events buffered by [`Client::wait_for`] come first).
    /// Fails with [`ClientError::Closed`] once the connection ended and no event is left.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Event, ClientError> {
        if let Some(ev) = self.buffered.pop_front() {
            return Ok(ev);
        }
        self.recv_raw(Instant::now() + timeout, "event").await
    }

    /// First event named `name` (searching the buffered events first). Other events received
    /// meanwhile are **kept** in arrival order and returned by later `next_event`/`wait_for`
    /// calls; use [`Client::discard_buffered`] if they are not wanted.
    pub async fn wait_for(&mut self, name: &str, timeout: Duration) -> Result<Event, ClientError> {
        if let Some(pos) = self.buffered.iter().position(|e| e.name == name) {
            return Ok(self.buffered.remove(pos).expect("position is in range"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.recv_raw(deadline, "named event").await?;
            if ev.name == name {
                return Ok(ev);
            }
            self.buffered.push_back(ev);
        }
    }

    fn send_raw(&self, packet: String) -> Result<(), ClientError> {
        self.cmd
            .send(Cmd::Send(packet))
            .map_err(|_| ClientError::Closed)
    }

    /// Emits `42["name",data]`. Queued to the driver; fails only if the connection ended.
    pub async fn emit(&self, name: &str, data: Value) -> Result<(), ClientError> {
        self.send_raw(encode_packet(
            "42",
            None,
            Some(name),
            std::slice::from_ref(&data),
        ))
    }

    /// Emits an event with any number of arguments: `42["name",a,b,...]`.
    pub async fn emit_args(&self, name: &str, args: &[Value]) -> Result<(), ClientError> {
        self.send_raw(encode_packet("42", None, Some(name), args))
    }

    /// Emits `42<id>["name",data]` and waits for `43<id>[...]`; returns the ack arguments.
    pub async fn emit_with_ack(
        &self,
        name: &str,
        data: Value,
        timeout: Duration,
    ) -> Result<Vec<Value>, ClientError> {
        self.emit_args_with_ack(name, std::slice::from_ref(&data), timeout)
            .await
    }

    /// Like [`Client::emit_with_ack`] with any number of arguments.
    pub async fn emit_args_with_ack(
        &self,
        name: &str,
        args: &[Value],
        timeout: Duration,
    ) -> Result<Vec<Value>, ClientError> {
        let id = self.next_ack_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if let Err(e) = self.send_raw(encode_packet("42", Some(id), Some(name), args)) {
            self.acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(args)) => Ok(args),
            // The driver dropped the waiter: the connection ended.
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                self.acks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err(ClientError::Timeout("ack"))
            }
        }
    }

    /// Answers a server event that requested an ack: `43<id>[data]`.
    pub async fn ack(&self, event: &Event, data: Value) -> Result<(), ClientError> {
        self.ack_args(event, std::slice::from_ref(&data)).await
    }

    /// Answers a server event with any number of ack arguments: `43<id>[a,b,...]`.
    pub async fn ack_args(&self, event: &Event, args: &[Value]) -> Result<(), ClientError> {
        let id = event.ack_id.ok_or_else(|| {
            ClientError::Protocol(format!("event {:?} did not request an ack", event.name))
        })?;
        self.send_raw(encode_packet("43", Some(id), None, args))
    }

    /// Sends `41`, closes the transport (close frame / polling close packet) and stops the
    /// driver. Bounded by the connect timeout; the driver is aborted in any case.
    pub async fn disconnect(self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Disconnect(tx)).is_ok() {
            let _ = tokio::time::timeout(self.disconnect_timeout, rx).await;
        }
        // Drop aborts the driver if it is still running.
    }

    /// Waits until the connection ends (server `41`, transport close, session gone, ping
    /// timeout...). Events still queued, including buffered ones, are discarded.
    pub async fn closed(&mut self, timeout: Duration) -> Result<CloseReason, ClientError> {
        self.buffered.clear();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(reason) = &self.close_reason {
                return Ok(reason.clone());
            }
            match self.recv_raw(deadline, "connection close").await {
                Ok(_) | Err(ClientError::Closed) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The close reason, if the end of the connection has been observed by a receive call.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }
}

/// Parses `40{"sid":..}` / `44{...}`. `Ok(None)` for other packets.
fn connect_reply(raw: &str) -> Result<Option<String>, ClientError> {
    let pkt = match SioPacket::parse(raw) {
        Ok(p) if p.ns_is_main => p,
        _ => return Ok(None),
    };
    match pkt.kind {
        SIO_CONNECT => {
            #[derive(serde::Deserialize)]
            struct Ok_ {
                sid: String,
            }
            let ok: Ok_ = serde_json::from_str(pkt.data)
                .map_err(|e| ClientError::Protocol(format!("bad connect reply {raw:?}: {e}")))?;
            Ok(Some(ok.sid))
        }
        SIO_CONNECT_ERROR => {
            let v: Value = serde_json::from_str(pkt.data).unwrap_or(Value::Null);
            let (message, data) = match v {
                Value::Object(mut m) => (
                    m.remove("message")
                        .and_then(|m| m.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    m.remove("data"),
                ),
                Value::String(s) => (s, None),
                other => (other.to_string(), None),
            };
            Err(ClientError::Rejected { message, data })
        }
        SIO_DISCONNECT => Err(ClientError::Closed),
        _ => Ok(None),
    }
}

fn connect_packet(auth: Option<&Value>) -> String {
    match auth {
        Some(a) => format!("40{a}"),
        None => "40".to_owned(),
    }
}

async fn ws_recv_text(ws: &mut WsStream) -> Result<tungstenite::Utf8Bytes, ClientError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Close(_))) | None => return Err(ClientError::Closed),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

async fn handshake_ws(
    opts: &ConnectOptions,
    dispatch: &Dispatch,
    phase: &AtomicU8,
) -> Result<Handshake, ClientError> {
    let (mut ws, _) = tokio_tungstenite::connect_async(opts.url("websocket", None)).await?;
    let open = OpenPacket::parse(&ws_recv_text(&mut ws).await?)?;
    phase.store(PHASE_CONNECT, Ordering::Relaxed);
    ws.send(Message::Text(connect_packet(opts.auth.as_ref()).into()))
        .await?;
    loop {
        let text = ws_recv_text(&mut ws).await?;
        let res = match text.as_bytes().first() {
            Some(b'4') => connect_reply(&text[1..]),
            _ => match dispatch.on_eio_packet(&text) {
                Flow::Pong => {
                    ws.send(Message::Text("3".into())).await?;
                    Ok(None)
                }
                Flow::Close(_) => Err(ClientError::Closed),
                Flow::Continue => Ok(None),
            },
        };
        match res {
            Ok(Some(sid)) => {
                return Ok(Handshake {
                    sid,
                    open,
                    conn: Conn::Ws(Box::new(ws)),
                });
            }
            Ok(None) => {}
            Err(e) => {
                let _ = timeout(GOODBYE_TIMEOUT, ws.close(None)).await;
                return Err(e);
            }
        }
    }
}

/// Outcome of a polling HTTP request.
enum HttpOutcome {
    Ok(String),
    /// HTTP 400: the session is unknown to the server.
    Gone,
}

async fn http_get(
    http: &reqwest::Client,
    url: &str,
    limit: Duration,
) -> Result<HttpOutcome, ClientError> {
    let resp = http.get(url).timeout(limit).send().await?;
    http_outcome(resp).await
}

async fn http_post(
    http: &reqwest::Client,
    url: &str,
    body: String,
    limit: Duration,
) -> Result<HttpOutcome, ClientError> {
    let resp = http
        .post(url)
        .header("content-type", "text/plain;charset=UTF-8")
        .body(body)
        .timeout(limit)
        .send()
        .await?;
    http_outcome(resp).await
}

async fn http_outcome(resp: reqwest::Response) -> Result<HttpOutcome, ClientError> {
    let status = resp.status();
    let asked = retry_after(resp.headers());
    let body = resp.text().await?;
    if status.is_success() {
        Ok(HttpOutcome::Ok(body))
    } else if status == reqwest::StatusCode::BAD_REQUEST {
        tracing::debug!(%status, body, "polling request rejected");
        Ok(HttpOutcome::Gone)
    } else if is_shedding(status.as_u16()) {
        Err(ClientError::Refused {
            status: status.as_u16(),
            retry_after: asked,
        })
    } else {
        Err(ClientError::Protocol(format!("HTTP {status}: {body}")))
    }
}

/// GET/POST during the handshake: a 400 is reported as `Closed`.
async fn hs_get(http: &reqwest::Client, url: &str, limit: Duration) -> Result<String, ClientError> {
    match http_get(http, url, limit).await? {
        HttpOutcome::Ok(body) => Ok(body),
        HttpOutcome::Gone => Err(ClientError::Closed),
    }
}

async fn hs_post(
    http: &reqwest::Client,
    url: &str,
    body: String,
    limit: Duration,
) -> Result<(), ClientError> {
    match http_post(http, url, body, limit).await? {
        HttpOutcome::Ok(_) => Ok(()),
        HttpOutcome::Gone => Err(ClientError::Closed),
    }
}

async fn handshake_polling(
    opts: &ConnectOptions,
    dispatch: &Dispatch,
    phase: &AtomicU8,
) -> Result<Handshake, ClientError> {
    let http = match &opts.http_client {
        Some(c) => c.clone(),
        None => reqwest::Client::builder().build()?,
    };
    // Requests are bounded by the overall handshake timeout; this is only a backstop that
    // must not fire first (it would turn a Timeout into an Http error).
    let limit = opts.timeout + Duration::from_secs(1);
    let body = hs_get(&http, &opts.url("polling", None), limit).await?;
    let first = body.split(SEPARATOR).next().unwrap_or_default();
    let open = OpenPacket::parse(first)?;
    let url = opts.url("polling", Some(&open.sid));
    phase.store(PHASE_CONNECT, Ordering::Relaxed);
    hs_post(&http, &url, connect_packet(opts.auth.as_ref()), limit).await?;

    let mut sid = None;
    let mut closed = None;
    'outer: while sid.is_none() {
        let body = hs_get(&http, &url, limit).await?;
        for pkt in body.split(SEPARATOR) {
            if sid.is_none()
                && let Some(raw) = pkt.strip_prefix('4')
            {
                match connect_reply(raw) {
                    Ok(Some(s)) => sid = Some(s),
                    Ok(None) => {}
                    Err(e) => {
                        let goodbye = hs_post(&http, &url, "1".into(), limit);
                        let _ = timeout(GOODBYE_TIMEOUT, goodbye).await;
                        return Err(e);
                    }
                }
                continue;
            }
            // Before the connect reply: pings; after it: events emitted right away.
            match dispatch.on_eio_packet(pkt) {
                Flow::Continue => {}
                Flow::Pong => hs_post(&http, &url, "3".into(), limit).await?,
                Flow::Close(reason) if sid.is_some() => {
                    closed = Some(reason);
                    break 'outer;
                }
                Flow::Close(_) => return Err(ClientError::Closed),
            }
        }
    }
    let sid = sid.expect("loop exits with a sid");
    if let Some(reason) = closed {
        if reason == CloseReason::ServerDisconnect {
            let _ = timeout(GOODBYE_TIMEOUT, hs_post(&http, &url, "1".into(), limit)).await;
        }
        return Ok(Handshake {
            sid,
            open,
            conn: Conn::Closed(reason),
        });
    }
    if opts.transport != Transport::PollingThenUpgrade {
        return Ok(Handshake {
            sid,
            open,
            conn: Conn::Polling { http, url },
        });
    }
    if !open.upgrades.iter().any(|u| u == "websocket") {
        return Err(ClientError::Protocol(
            "server does not offer a websocket upgrade".into(),
        ));
    }

    phase.store(PHASE_UPGRADE, Ordering::Relaxed);
    let ws_url = opts.url("websocket", Some(&open.sid));
    let probe = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
        ws.send(Message::Text("2probe".into())).await?;
        let reply = ws_recv_text(&mut ws).await?;
        if reply.as_str() != "3probe" {
            return Err(ClientError::Protocol(format!(
                "unexpected probe reply {reply:?}"
            )));
        }
        Ok::<_, ClientError>(ws)
    };
    // Meanwhile keep polling until the server answers with a noop: it does so to release the
    // pending GET (or any GET) once it starts the upgrade. Only then does it answer the probe.
    let drain = async {
        loop {
            let body = hs_get(&http, &url, limit).await?;
            tracing::trace!(body, "poll during upgrade");
            let mut noop = false;
            for pkt in body.split(SEPARATOR) {
                match dispatch.on_eio_packet(pkt) {
                    Flow::Continue => noop |= pkt == "6",
                    Flow::Pong => hs_post(&http, &url, "3".into(), limit).await?,
                    Flow::Close(_) => return Err(ClientError::Closed),
                }
            }
            if noop {
                return Ok::<_, ClientError>(());
            }
        }
    };
    let (mut ws, ()) = tokio::try_join!(probe, drain)?;
    ws.send(Message::Text("5".into())).await?;
    Ok(Handshake {
        sid,
        open,
        conn: Conn::Ws(Box::new(ws)),
    })
}

/// Owns a websocket transport until the connection ends.
async fn ws_driver(
    mut ws: WsStream,
    mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    dispatch: Dispatch,
    heartbeat: Duration,
) {
    let mut deadline = Instant::now() + heartbeat;
    let reason = loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    deadline = Instant::now() + heartbeat;
                    match dispatch.on_eio_packet(&text) {
                        Flow::Continue => {}
                        Flow::Pong => {
                            if let Err(e) = ws_write(&mut ws, "3".to_owned(), heartbeat).await {
                                break e;
                            }
                        }
                        Flow::Close(reason) => {
                            let _ = timeout(GOODBYE_TIMEOUT, ws.close(None)).await;
                            break reason;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None => break CloseReason::TransportClose,
                Some(Ok(_)) => deadline = Instant::now() + heartbeat,
                Some(Err(e)) => break CloseReason::TransportError(e.to_string()),
            },
            cmd = cmd_rx.recv() => match cmd {
                Some(Cmd::Send(packet)) => {
                    // Write everything already queued, flush once.
                    let mut disconnect = None;
                    let mut res = timeout(heartbeat, ws.feed(Message::Text(packet.into()))).await;
                    while res.as_ref().is_ok_and(|r| r.is_ok()) {
                        match cmd_rx.try_recv() {
                            Ok(Cmd::Send(p)) => {
                                res = timeout(heartbeat, ws.feed(Message::Text(p.into()))).await;
                            }
                            Ok(Cmd::Disconnect(done)) => {
                                disconnect = Some(done);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if res.as_ref().is_ok_and(|r| r.is_ok()) {
                        res = timeout(heartbeat, ws.flush()).await;
                    }
                    match res {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break CloseReason::TransportError(e.to_string()),
                        Err(_) => break CloseReason::TransportError("websocket write timed out".into()),
                    }
                    if let Some(done) = disconnect {
                        ws_goodbye(&mut ws).await;
                        let _ = done.send(());
                        break CloseReason::ClientDisconnect;
                    }
                }
                Some(Cmd::Disconnect(done)) => {
                    ws_goodbye(&mut ws).await;
                    let _ = done.send(());
                    break CloseReason::ClientDisconnect;
                }
                None => {
                    ws_goodbye(&mut ws).await;
                    break CloseReason::ClientDisconnect;
                }
            },
            () = sleep_until(deadline) => break CloseReason::PingTimeout,
        }
    };
    drop(cmd_rx);
    dispatch.finish(reason);
}

async fn ws_write(ws: &mut WsStream, packet: String, limit: Duration) -> Result<(), CloseReason> {
    match timeout(limit, ws.send(Message::Text(packet.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(CloseReason::TransportError(e.to_string())),
        Err(_) => Err(CloseReason::TransportError(
            "websocket write timed out".into(),
        )),
    }
}

async fn ws_goodbye(ws: &mut WsStream) {
    let _ = timeout(GOODBYE_TIMEOUT, async {
        ws.send(Message::Text("41".into())).await?;
        ws.close(None).await
    })
    .await;
}

/// Owns a polling transport until the connection ends: one GET always in flight, at most one
/// POST in flight, outgoing packets batched while a POST is pending.
async fn polling_driver(
    http: reqwest::Client,
    url: String,
    mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    dispatch: Dispatch,
    heartbeat: Duration,
    max_payload: usize,
) {
    let url: Arc<str> = url.into();
    let get =
        |http: &reqwest::Client, url: &Arc<str>| -> BoxFut<Result<HttpOutcome, ClientError>> {
            let (http, url) = (http.clone(), url.clone());
            Box::pin(async move { http_get(&http, &url, heartbeat).await })
        };
    let post = |http: &reqwest::Client,
                url: &Arc<str>,
                body: String|
     -> BoxFut<Result<HttpOutcome, ClientError>> {
        let (http, url) = (http.clone(), url.clone());
        Box::pin(async move { http_post(&http, &url, body, heartbeat).await })
    };

    let mut get_fut = get(&http, &url);
    let mut post_fut: Option<BoxFut<Result<HttpOutcome, ClientError>>> = None;
    let mut outbox: VecDeque<String> = VecDeque::new();
    let mut deadline = Instant::now() + heartbeat;
    let mut disconnect: Option<oneshot::Sender<()>> = None;
    let reason = loop {
        tokio::select! {
            res = &mut get_fut => match res {
                Ok(HttpOutcome::Ok(body)) => {
                    tracing::trace!(body, "poll");
                    deadline = Instant::now() + heartbeat;
                    let mut close = None;
                    for pkt in body.split(SEPARATOR) {
                        match dispatch.on_eio_packet(pkt) {
                            Flow::Continue => {}
                            Flow::Pong => outbox.push_back("3".to_owned()),
                            Flow::Close(reason) => {
                                close = Some(reason);
                                break;
                            }
                        }
                    }
                    if let Some(reason) = close {
                        if reason == CloseReason::ServerDisconnect {
                            // Close the engine.io session too (best effort).
                            let _ = timeout(GOODBYE_TIMEOUT, http_post(&http, &url, "1".into(), heartbeat)).await;
                        }
                        break reason;
                    }
                    get_fut = get(&http, &url);
                }
                Ok(HttpOutcome::Gone) => break CloseReason::TransportClose,
                Err(e) => break CloseReason::TransportError(e.to_string()),
            },
            res = async { post_fut.as_mut().expect("guarded").await }, if post_fut.is_some() => {
                post_fut = None;
                match res {
                    Ok(HttpOutcome::Ok(_)) => {}
                    Ok(HttpOutcome::Gone) => break CloseReason::TransportClose,
                    Err(e) => break CloseReason::TransportError(e.to_string()),
                }
            }
            cmd = cmd_rx.recv() => match cmd {
                Some(Cmd::Send(packet)) => {
                    outbox.push_back(packet);
                    // Take everything already queued so it goes into one POST.
                    loop {
                        match cmd_rx.try_recv() {
                            Ok(Cmd::Send(p)) => outbox.push_back(p),
                            Ok(Cmd::Disconnect(done)) => {
                                disconnect = Some(done);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                Some(Cmd::Disconnect(done)) => disconnect = Some(done),
                None => break CloseReason::ClientDisconnect,
            },
            () = sleep_until(deadline) => break CloseReason::PingTimeout,
        }
        if let Some(done) = disconnect.take() {
            // Keep packet order: finish the pending POST, then send the rest with `41` and the
            // engine.io close packet.
            if let Some(p) = post_fut.take() {
                let _ = p.await;
            }
            outbox.push_back("41".to_owned());
            outbox.push_back("1".to_owned());
            while !outbox.is_empty() {
                let body = take_batch(&mut outbox, max_payload);
                if !matches!(
                    timeout(GOODBYE_TIMEOUT, http_post(&http, &url, body, heartbeat)).await,
                    Ok(Ok(HttpOutcome::Ok(_)))
                ) {
                    break;
                }
            }
            let _ = done.send(());
            break CloseReason::ClientDisconnect;
        }
        if post_fut.is_none() && !outbox.is_empty() {
            post_fut = Some(post(&http, &url, take_batch(&mut outbox, max_payload)));
        }
    };
    drop(cmd_rx);
    dispatch.finish(reason);
}

/// Joins queued packets with `\x1e`, up to `max` bytes (at least one packet).
fn take_batch(outbox: &mut VecDeque<String>, max: usize) -> String {
    let mut body = outbox.pop_front().unwrap_or_default();
    while let Some(next) = outbox.front() {
        if body.len() + 1 + next.len() > max {
            break;
        }
        body.push(SEPARATOR);
        body.push_str(next);
        outbox.pop_front();
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Client>();
        check::<ClientError>();
    }

    #[test]
    fn query_values_are_form_encoded() {
        let opts = ConnectOptions::new("http://h:1/")
            .query("token", "a+b/c=d")
            .query("x y", "é&");
        assert_eq!(
            opts.url("polling", Some("s1")),
            "http://h:1/socket.io/?EIO=4&transport=polling&sid=s1&token=a%2Bb%2Fc%3Dd&x+y=%C3%A9%26"
        );
        assert_eq!(
            opts.url("websocket", None),
            "ws://h:1/socket.io/?EIO=4&transport=websocket&token=a%2Bb%2Fc%3Dd&x+y=%C3%A9%26"
        );
    }

    #[test]
    fn sio_parse() {
        let p = SioPacket::parse("212[\"a\",1]").unwrap();
        assert_eq!(
            (p.kind, p.id, p.data, p.ns_is_main),
            (2, Some(12), "[\"a\",1]", true)
        );
        let p = SioPacket::parse("2/admin,3[\"a\"]").unwrap();
        assert!(!p.ns_is_main);
        let p = SioPacket::parse("2/,[\"a\"]").unwrap();
        assert!(p.ns_is_main && p.id.is_none());
        assert!(SioPacket::parse("51-[\"a\",{}]").is_err());
        let ev = parse_event(r#"["ev",{"x":1},2]"#, Some(3)).unwrap();
        assert_eq!(ev.name, "ev");
        assert_eq!(ev.data(), &serde_json::json!({"x":1}));
        assert!(ev.needs_ack());
        assert!(matches!(
            connect_reply(r#"4{"message":"nope","data":{"a":1}}"#),
            Err(ClientError::Rejected { message, data: Some(_) }) if message == "nope"
        ));
        assert_eq!(
            connect_reply(r#"0{"sid":"abc"}"#).unwrap().as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn encoding() {
        let v = serde_json::json!({"a":"x\"y"});
        assert_eq!(
            encode_packet("42", None, Some("ev"), std::slice::from_ref(&v)),
            r#"42["ev",{"a":"x\"y"}]"#
        );
        assert_eq!(encode_packet("42", Some(7), Some("e"), &[]), r#"427["e"]"#);
        assert_eq!(
            encode_packet("43", Some(1), None, &[Value::Null]),
            "431[null]"
        );
        let mut q: VecDeque<String> = ["aa", "bb", "cc"].map(String::from).into();
        assert_eq!(take_batch(&mut q, 5), "aa\x1ebb");
        assert_eq!(take_batch(&mut q, 5), "cc");
    }
}
