//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::{
    future::{Future, poll_fn},
    ops::ControlFlow,
    pin::pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::MutexGuard,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket, body::ResponseBody, config::EngineIoConfig, engine::EngineIo,
    errors::Error, handler::EngineIoHandler, socket::InternalRx, transport::make_open_packet,
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    mut req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let ws_key = req
        .headers()
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    // The task lives as long as the socket, and its state keeps room for everything it
    // captures: give it the upgrade handle and the boxed request parts only, not the
    // request and a second copy of its parts.
    let on_upgrade = hyper::upgrade::on(&mut req);
    let parts = Box::new(req.into_parts().0);

    tokio::spawn(async move {
        let conn = on_upgrade.await.map(hyper_util::rt::TokioIo::new);

        let res = match conn {
            Ok(conn) => on_init(engine.clone(), conn, protocol, sid, parts).await,
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                return;
            }
        };

        match res {
            Ok(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed")
            }
            Err(Error::MultipleWebsocketRequests) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
                if let Some(sid) = sid {
                    engine.close_session(sid, DisconnectReason::TransportError);
                }
            }
        }
    });

    Ok(ws_response(&ws_key))
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Read packets from the websocket and handle them, it will block until the connection is closed
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Box<Parts>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: the task's state keeps, for the connection's whole life, room for the largest
    // future it ever awaited, and the handshake's (about 1 KB) is larger than the rest.
    let (socket, ws) = Box::pin(open(&engine, conn, protocol, sid, req_data)).await?;

    let mut conn = Connection::new(&socket, ws);
    match conn.serve(&engine).await {
        Some(Err(ref e)) => {
            let reason =
                Option::<DisconnectReason>::from(e).unwrap_or(DisconnectReason::TransportError);

            #[cfg(feature = "tracing")]
            tracing::debug!("error when handling packet: {:?}", e);
            engine.close_session(socket.id, reason);
        }
        Some(Ok(())) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "ws transport was closed");
            engine.close_session(socket.id, DisconnectReason::TransportClose);
        }
        None => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "socket is closing");
        }
    }
    // Boxed, like `open`: the closing step's timer is needed once, at the end.
    Box::pin(conn.close(engine.config.ping_timeout)).await;
    Ok(())
}

/// The handshake of a new session, or the upgrade of a polling one: the socket and the
/// stream, ready for [`Connection`].
async fn open<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Box<Parts>,
) -> Result<(Arc<Socket<H::Data>>, WebSocketStream<S>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    let (socket, ws) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                // Boxed: only upgrades need its state, not every websocket task.
                let upgrade_fut = Box::pin(upgrade_handshake::<H, S>(&socket, &mut ws));
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                (socket, ws)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, *req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        socket.start_heartbeat(engine.config.ping_interval, engine.config.ping_timeout);
        (socket, ws)
    };
    Ok((socket, ws))
}

/// Handles one message from the client. `Break` ends the connection: `Ok` when the client
/// closed it, `Err` for a packet it must not send.
fn on_message<H: EngineIoHandler>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    msg: Message,
) -> ControlFlow<Result<(), Error>> {
    match msg {
        Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg)) {
            Ok(Packet::Close) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("[sid={}] closing session", socket.id);
                engine.close_session(socket.id, DisconnectReason::TransportClose);
                ControlFlow::Break(Ok(()))
            }
            Ok(Packet::Pong | Packet::Ping) => {
                let config = &engine.config;
                socket.heartbeat_received(config.ping_interval, config.ping_timeout);
                ControlFlow::Continue(())
            }
            Ok(Packet::Message(msg)) => {
                engine.handler.on_message(msg, socket.clone());
                ControlFlow::Continue(())
            }
            Ok(p) => ControlFlow::Break(Err(Error::BadPacket(p))),
            Err(e) => ControlFlow::Break(Err(e.into())),
        },
        Message::Binary(mut data) => {
            if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                // The first byte is the message type, which we don't need.
                data = data.split_off(1);
            }
            engine.handler.on_binary(data, socket.clone());
            ControlFlow::Continue(())
        }
        Message::Close(_) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("websocket closed, closing session");
            engine.close_session(socket.id, DisconnectReason::TransportClose);
            ControlFlow::Break(Ok(()))
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?socket.id, "unexpected ws message");
            ControlFlow::Continue(())
        }
    }
}

/// One WebSocket connection, read and written by one task.
///
/// The task polls both directions of the unsplit stream: a pending write (a slow client, a
/// full TCP buffer) never stops the reading of pongs and messages, and reads never stop
/// writes. One task instead of a reader and a spawned writer saves the writer task and the
/// lock that `split()` puts around the stream, and a packet queued while the task is awake
/// (the handler answering a message) costs no wake-up of another task.
struct Connection<'a, D: Default + Send + Sync + 'static, S> {
    socket: &'a Arc<Socket<D>>,
    ws: WebSocketStream<S>,
    /// The right to take packets out of the socket's queue. A polling request may still
    /// hold it at the end of an upgrade: writes start once it is released.
    rx: Option<MutexGuard<'a, InternalRx>>,
    /// The rest of the queue item being written (a message and its binary attachments).
    packets: smallvec::IntoIter<[Packet; 1]>,
    /// A message the stream was not ready to take yet.
    pending: Option<Message>,
    /// Whether messages were given to the stream since its last flush.
    unflushed: bool,
    /// Whether a flush is in progress.
    flushing: bool,
}

impl<'a, D, S> Connection<'a, D, S>
where
    D: Default + Send + Sync + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn new(socket: &'a Arc<Socket<D>>, ws: WebSocketStream<S>) -> Self {
        Self {
            socket,
            ws,
            rx: None,
            packets: PacketBuf::new().into_iter(),
            pending: None,
            unflushed: false,
            flushing: false,
        }
    }

    /// Reads and writes until the client ends the connection (`Some`: `Ok` when it closed it,
    /// `Err` on a transport or protocol error) or the session is closed (`None`).
    async fn serve<H>(&mut self, engine: &Arc<EngineIo<H>>) -> Option<Result<(), Error>>
    where
        H: EngineIoHandler<Data = D>,
    {
        let socket = self.socket;
        let mut cancelled = pin!(socket.cancellation_token.cancelled());
        let mut lock = pin!(socket.internal_rx.lock());
        poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            // Reads first, so that what the handler queues in answer goes out in this turn.
            loop {
                match self.ws.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(msg))) => {
                        if let ControlFlow::Break(end) = on_message(engine, socket, msg) {
                            return Poll::Ready(Some(end));
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(None) => return Poll::Ready(Some(Ok(()))),
                    Poll::Pending => break,
                }
            }
            if self.rx.is_none() {
                match lock.as_mut().poll(cx) {
                    Poll::Ready(rx) => self.rx = Some(rx),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // Pending, or everything written: either way the reads above wait on the stream.
            let _ = self.poll_write(cx);
            Poll::Pending
        })
        .await
    }

    /// Writes the queued packets, then the volatile one, and flushes once the queue is
    /// drained (tungstenite buffers the messages until then: one write for a burst). While a
    /// flush is pending no more packets are taken: they wait in the socket's bounded queue,
    /// where a client too slow for them makes the sender fail (as with the writer task).
    /// `Ready` once everything queued is written and flushed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let socket = self.socket;
        loop {
            if self.flushing {
                match self.ws.poll_flush_unpin(cx) {
                    Poll::Ready(_res) => {
                        #[cfg(feature = "tracing")]
                        if let Err(e) = _res {
                            tracing::debug!("[sid={}] error flushing: {}", socket.id, e);
                        }
                        self.flushing = false;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            loop {
                if let Some(msg) = self.pending.take() {
                    match self.ws.poll_ready_unpin(cx) {
                        Poll::Ready(Ok(())) => {
                            self.unflushed = true;
                            if let Err(_e) = self.ws.start_send_unpin(msg) {
                                #[cfg(feature = "tracing")]
                                tracing::debug!("[sid={}] error sending packet: {}", socket.id, _e);
                            }
                        }
                        Poll::Ready(Err(_e)) => {
                            #[cfg(feature = "tracing")]
                            tracing::debug!("[sid={}] error sending packet: {}", socket.id, _e);
                        }
                        Poll::Pending => {
                            self.pending = Some(msg);
                            return Poll::Pending;
                        }
                    }
                }
                if let Some(packet) = self.packets.next() {
                    self.pending = to_message(socket.protocol, packet);
                    continue;
                }
                match socket.queue.poll_pop(cx) {
                    Poll::Ready(Some(packets)) => {
                        #[cfg(feature = "tracing")]
                        tracing::trace!(sid = %socket.id, "ws write: {} packets", packets.len());
                        self.packets = packets.into_iter();
                    }
                    // Drained (or closed): the queue wakes this task for the next packet.
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            if !self.unflushed {
                return Poll::Ready(());
            }
            #[cfg(feature = "tracing")]
            tracing::trace!(sid = %socket.id, "ws flush");
            self.unflushed = false;
            self.flushing = true;
        }
    }

    /// Once reading ended or the session was closed: writes what is still queued (the
    /// close packet of [`Socket::close`] among it), flushes and sends the close frame. Then
    /// the queue's lock is released. If the writing never started (a polling request kept the
    /// lock until the session closed), the stream is only dropped.
    ///
    /// All of it within `within`: a client that stopped reading (a zero TCP window) would
    /// otherwise keep the flush pending until the kernel gives up on the connection, and the
    /// session's `on_disconnect` waits for the queue's lock. The engine passes its
    /// `ping_timeout`, the time it gives any client to answer.
    async fn close(&mut self, within: Duration) {
        if self.rx.is_none() {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %self.socket.id, "session closed before starting the ws writer");
            return;
        }
        #[cfg(feature = "tracing")]
        tracing::trace!(sid = %self.socket.id, "ws closing flush");
        let closing = async {
            poll_fn(|cx| self.poll_write(cx)).await;
            SinkExt::close(&mut self.ws).await.ok();
        };
        if tokio::time::timeout(within, closing).await.is_err() {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %self.socket.id, "ws closing flush timed out, dropping the stream");
        }
    }
}

/// The WebSocket message of a packet; `None` for a noop packet. The server sends one to a
/// waiting polling request at an upgrade; one the polling request did not take in time is
/// left in the queue, and it is discarded here.
fn to_message(protocol: ProtocolVersion, packet: Packet) -> Option<Message> {
    match packet {
        Packet::Binary(bin) | Packet::BinaryV3(bin) => {
            if protocol == ProtocolVersion::V3 {
                // v3 protocol requires packet type as the first byte.
                // This requires a new buffer. This is OK as it is only for the V3 protocol.
                let mut buff = Vec::with_capacity(bin.len() + 1);
                buff.push(0x04);
                buff.extend(bin);
                Some(Message::Binary(buff.into()))
            } else {
                Some(Message::Binary(bin))
            }
        }
        Packet::Noop => None,
        packet => {
            let packet: String = packet.into();
            Some(Message::Text(packet.into()))
        }
    }
}

/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(Box::new(make_open_packet(
        TransportType::Websocket,
        sid,
        config,
    )));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    // It goes in even if the queue is full: a full queue has no polling request waiting.
    socket
        .queue
        .push_control(smallvec![Packet::Noop])
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::Request;
    use tokio::{io::DuplexStream, sync::mpsc, task::JoinHandle};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    /// Tells the test every message it gets.
    #[derive(Debug)]
    struct RecordingHandler(mpsc::UnboundedSender<String>);
    impl EngineIoHandler for RecordingHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, msg: Str, _: Arc<Socket<()>>) {
            self.0.send(msg.to_string()).ok();
        }
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    type Session = (
        Arc<EngineIo<RecordingHandler>>,
        Arc<Socket<()>>,
        mpsc::UnboundedReceiver<String>,
    );

    fn session() -> Session {
        session_with(EngineIoConfig::default())
    }

    fn session_with(config: EngineIoConfig) -> Session {
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = Arc::new(EngineIo::new(Arc::new(RecordingHandler(tx)), config));
        let socket = engine.create_session(
            ProtocolVersion::V4,
            TransportType::Websocket,
            Request::<()>::default().into_parts().0,
            false,
        );
        (engine, socket, rx)
    }

    /// A server and a client stream over an in-memory pipe of `buffer` bytes each way.
    async fn ws_pair(
        buffer: usize,
    ) -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(buffer);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    /// The connection's task, as `on_init` runs it after the handshake.
    fn spawn_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        engine: Arc<EngineIo<RecordingHandler>>,
        socket: Arc<Socket<()>>,
        ws: WebSocketStream<S>,
    ) -> JoinHandle<Option<Result<(), Error>>> {
        tokio::spawn(async move {
            let mut conn = Connection::new(&socket, ws);
            let end = conn.serve(&engine).await;
            conn.close(engine.config.ping_timeout).await;
            end
        })
    }

    async fn next_text(client: &mut WebSocketStream<DuplexStream>) -> String {
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the server should send a message")
            .expect("the stream should not end")
            .expect("a message");
        msg.into_text().expect("a text message").to_string()
    }

    async fn send_text(client: &mut WebSocketStream<DuplexStream>, text: &str) {
        tokio::time::timeout(TIMEOUT, client.send(Message::text(text)))
            .await
            .expect("the client should be able to send")
            .unwrap();
    }

    async fn received(messages: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(TIMEOUT, messages.recv())
            .await
            .expect("the handler should get the message")
            .unwrap()
    }

    /// A polling request can still hold the lock at the end of an upgrade: writes wait for
    /// it, reads do not.
    #[tokio::test]
    async fn writes_wait_for_the_lock_of_a_polling_request_and_reads_go_on() {
        let (engine, socket, mut messages) = session();
        let (server, mut client) = ws_pair(1024).await;

        let polling = socket.internal_rx.lock().await;
        let conn = spawn_connection(engine, socket.clone(), server);
        socket.emit(Str::from("hello")).unwrap();

        send_text(&mut client, "4from the client").await;
        assert_eq!(received(&mut messages).await, "from the client");
        let early = tokio::time::timeout(Duration::from_millis(50), client.next()).await;
        assert!(early.is_err(), "nothing is written while the lock is held");
        assert!(!conn.is_finished());

        drop(polling);
        assert_eq!(next_text(&mut client).await, "4hello");
    }

    #[tokio::test]
    async fn waiting_for_the_lock_stops_with_the_session() {
        let (engine, socket, _messages) = session();
        let (server, _client) = ws_pair(1024).await;

        let _polling = socket.internal_rx.lock().await;
        let conn = spawn_connection(engine, socket.clone(), server);
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        let end = tokio::time::timeout(TIMEOUT, conn)
            .await
            .expect("the connection should stop")
            .unwrap();
        assert!(end.is_none(), "closed by the session, not by the client");
    }

    /// A client that does not read fills the pipe: the write of a large message stays
    /// pending, and the client's messages are still read and handled meanwhile.
    #[tokio::test]
    async fn reads_go_on_while_a_write_is_pending() {
        let (engine, socket, mut messages) = session();
        let (server, mut client) = ws_pair(64).await;
        let conn = spawn_connection(engine, socket.clone(), server);

        let large = "x".repeat(64 * 1024);
        socket.emit(Str::from(large.clone())).unwrap();
        socket.emit(Str::from("after")).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;

        for i in 0..20 {
            send_text(&mut client, &format!("4msg {i}")).await;
            assert_eq!(received(&mut messages).await, format!("msg {i}"));
        }
        assert!(!conn.is_finished());

        // Once the client reads, the pending write completes, in order.
        assert_eq!(next_text(&mut client).await, format!("4{large}"));
        assert_eq!(next_text(&mut client).await, "4after");
    }

    /// And writes go on while there is nothing to read.
    #[tokio::test]
    async fn writes_go_on_without_reads() {
        let (engine, socket, _messages) = session();
        let (server, mut client) = ws_pair(1024).await;
        let _conn = spawn_connection(engine, socket.clone(), server);

        for i in 0..10 {
            socket.emit(Str::from(format!("m{i}"))).unwrap();
            assert_eq!(next_text(&mut client).await, format!("4m{i}"));
        }
        assert!(socket.emit_volatile("v"));
        assert_eq!(next_text(&mut client).await, "4v");
    }

    /// The server's side of a pipe, counting its writes.
    struct CountingIo {
        io: DuplexStream,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }
    impl AsyncRead for CountingIo {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }
    impl AsyncWrite for CountingIo {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// The packets queued when the connection gets to write go out in one write: each is
    /// given to the stream, and the stream is flushed once the queue is drained.
    #[tokio::test]
    async fn a_burst_is_flushed_once() {
        let (engine, socket, _messages) = session();
        let (server, client) = tokio::io::duplex(64 * 1024);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = CountingIo {
            io: server,
            writes: writes.clone(),
        };
        let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;

        let polling = socket.internal_rx.lock().await;
        let _conn = spawn_connection(engine, socket.clone(), server);
        for i in 0..10 {
            socket.emit(Str::from(format!("m{i}"))).unwrap();
        }
        assert!(socket.emit_volatile("v"));
        drop(polling);
        for i in 0..10 {
            assert_eq!(next_text(&mut client).await, format!("4m{i}"));
        }
        assert_eq!(next_text(&mut client).await, "4v");
        assert_eq!(writes.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// `Socket::close` queues a close packet and closes the session: the packets queued
    /// before it are written, then the close packet and a close frame; then the queue closes.
    #[tokio::test]
    async fn closing_writes_what_was_queued_then_a_close_frame() {
        let (engine, socket, _messages) = session();
        let (server, mut client) = ws_pair(1024).await;
        let conn = spawn_connection(engine, socket.clone(), server);
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.emit(Str::from("last")).unwrap();
        socket.close(DisconnectReason::ClosingServer);
        assert_eq!(next_text(&mut client).await, "4last");
        assert_eq!(next_text(&mut client).await, "1");
        let frame = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
        assert!(matches!(frame, Some(Ok(Message::Close(_)))), "{frame:?}");

        let end = tokio::time::timeout(TIMEOUT, conn).await.unwrap().unwrap();
        assert!(end.is_none());
        tokio::time::timeout(TIMEOUT, socket.closed())
            .await
            .expect("the queue closes once the connection let go of it");
    }

    /// A client that stopped reading cannot hold the closing session: the closing flush
    /// gives up after `ping_timeout` and the queue's lock is released.
    #[tokio::test]
    async fn closing_to_a_client_that_does_not_read_ends_after_the_ping_timeout() {
        let config = EngineIoConfig::builder()
            .ping_timeout(Duration::from_millis(200))
            .build();
        let (engine, socket, _messages) = session_with(config);
        let (server, _client) = ws_pair(64).await;
        let conn = spawn_connection(engine.clone(), socket.clone(), server);
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.emit(Str::from("x".repeat(64 * 1024))).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = tokio::time::Instant::now();
        socket.close(DisconnectReason::ClosingServer);

        let bound = engine.config.ping_timeout + TIMEOUT;
        let end = tokio::time::timeout(bound, conn)
            .await
            .expect("the connection should end once the closing flush gives up")
            .unwrap();
        assert!(end.is_none());
        assert!(started.elapsed() >= engine.config.ping_timeout);
        tokio::time::timeout(TIMEOUT, socket.closed())
            .await
            .expect("the queue closes once the connection let go of it");
    }

    #[tokio::test]
    async fn the_client_closing_ends_the_connection() {
        let (engine, socket, _messages) = session();
        let (server, mut client) = ws_pair(1024).await;
        let conn = spawn_connection(engine.clone(), socket.clone(), server);

        send_text(&mut client, "1").await;
        let end = tokio::time::timeout(TIMEOUT, conn).await.unwrap().unwrap();
        assert!(matches!(end, Some(Ok(()))));
        assert!(engine.get_socket(socket.id).is_none());
    }

    /// The task's state is allocated for the connection's whole life, at the size of its
    /// largest state: the opening handshake must stay boxed, and `Connection::close` must
    /// not take the connection by value (each of these cost about 1 KB per socket).
    #[tokio::test]
    async fn the_task_state_stays_small() {
        let (engine, _socket, _messages) = session();
        let (server, _client) = tokio::io::duplex(64);
        let parts = Box::new(Request::<()>::default().into_parts().0);
        let task = on_init(engine, server, ProtocolVersion::V4, None, parts);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "on_init's future takes {size} B");
    }

    #[tokio::test]
    async fn a_bad_packet_ends_the_connection_with_an_error() {
        let (engine, socket, _messages) = session();
        let (server, mut client) = ws_pair(1024).await;
        let conn = spawn_connection(engine, socket, server);

        send_text(&mut client, "5").await;
        let end = tokio::time::timeout(TIMEOUT, conn).await.unwrap().unwrap();
        assert!(matches!(end, Some(Err(Error::BadPacket(_)))), "{end:?}");
    }
}
