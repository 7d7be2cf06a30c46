//! The Socket.IO gateway: transport settings, the handshake, and the
//! namespace every client connects to.

mod addresses;
mod budget;
mod chat;
mod connection;
mod expiry;
mod handshake;
mod limits;
mod location;
mod offer;
mod peer;
mod refresh;
mod remembered;
mod subscriptions;
mod sync;

use std::{sync::Arc, time::Duration};

use socketioxide::{SocketIo, TransportType, handler::ConnectHandler, layer::SocketIoLayer};
use tokio_util::sync::CancellationToken;

use crate::delivery::Replay;
use crate::events::ServerEvent;
#[doc(hidden)]
pub use crate::events::chat::{check_history, check_send, check_typing};
pub use crate::location::DriverLocationEvent;
pub use expiry::Expiries;
pub use handshake::token_from;
pub use limits::{ConnectionLimits, shed_new_sessions};
pub use offer::Acks;
/// Client payload checks, public for the fuzz targets in `fuzz/`.
#[doc(hidden)]
pub use refresh::refresh_token;
#[doc(hidden)]
pub use subscriptions::{OrderRef, order_ref};
#[doc(hidden)]
pub use sync::{SyncRequest, last_event_id};

use crate::{
    auth::{Principal, Role, Verifier},
    config::TransportConfig,
    engine::{Engine, Health, RoomChannels, Routed},
    interest::Interest,
    location::LocationPipeline,
    metrics,
    presence::Presence,
    rooms::Room,
};

/// Whether a principal's sockets want the locations of the order rooms they
/// join: everyone's but a driver's, whose own updates are all the room's
/// locations and never go back to it.
fn watches_locations(principal: &Principal) -> bool {
    principal.role() != Role::Driver
}

/// Shared with every handler through socketioxide's state.
#[derive(Clone)]
pub struct GatewayState {
    verifier: Arc<Verifier>,
    limits: Arc<ConnectionLimits>,
    expiries: Arc<Expiries>,
    /// This node's sockets per store and driver.
    presence: Arc<Presence>,
    /// Per socket, client events a second (0 = no limit).
    client_events_per_s: u32,
    /// Longest `chat:send` text, in characters.
    chat_max_chars: usize,
}

/// An emit that did not reach the other nodes (the adapter's publish failed).
#[derive(Debug, thiserror::Error)]
#[error("broadcast failed: {0}")]
pub struct BroadcastFailed(pub String);

/// tungstenite's initial read buffer per websocket (it grows for larger
/// messages). The default 4 KiB is most of an idle connection's memory; client
/// frames here are a few hundred bytes at most (a location update about 100 B,
/// the connect packet with its token 200 to 300 B). 512 B measured 0.6 KiB less
/// per idle socket than 1 KiB, 256 B no better (docs/benchmarks-notes.md).
const WS_READ_BUFFER_BYTES: usize = 512;

pub struct Gateway<E: Engine> {
    io: SocketIo<E::Adapter>,
    engine: Arc<E>,
}

impl<E: Engine> Clone for Gateway<E> {
    fn clone(&self) -> Self {
        Self {
            io: self.io.clone(),
            engine: self.engine.clone(),
        }
    }
}

/// What the handlers share, besides the engine.
pub struct Shared<E: Engine> {
    pub verifier: Arc<Verifier>,
    pub client_events_per_s: u32,
    pub chat_max_chars: usize,
    pub locations: Arc<LocationPipeline>,
    pub replay: Replay<E::Adapter>,
    pub interest: Arc<Interest<E>>,
    pub limits: Arc<ConnectionLimits>,
    pub expiries: Arc<Expiries>,
    pub presence: Arc<Presence>,
}

impl<E: Engine> Gateway<E> {
    pub fn new(
        engine: Arc<E>,
        transport: &TransportConfig,
        shared: Shared<E>,
    ) -> (Self, SocketIoLayer<E::Adapter>) {
        let Shared {
            verifier,
            client_events_per_s,
            chat_max_chars,
            locations,
            replay,
            interest,
            limits,
            expiries,
            presence,
        } = shared;
        let adapter_state = engine.adapter_state();
        let builder = SocketIo::builder()
            .ping_interval(transport.ping_interval)
            .ping_timeout(transport.ping_timeout)
            .max_payload(transport.polling_max_payload_bytes)
            .ws_max_message_size(transport.ws_max_message_bytes)
            .ws_max_frame_size(transport.ws_max_frame_bytes)
            .connect_timeout(transport.connect_timeout)
            .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
            .with_state(GatewayState {
                verifier,
                limits,
                expiries,
                presence,
                client_events_per_s,
                chat_max_chars,
            })
            .with_state(locations)
            .with_state(replay)
            .with_state(interest)
            .with_state(engine.clone());
        let builder = if transport.websocket_only {
            builder.transports([TransportType::Websocket])
        } else {
            builder.transports([TransportType::Polling, TransportType::Websocket])
        };
        let (layer, io) = builder
            .with_adapter::<E::Adapter>(adapter_state)
            .build_layer();
        (Self { io, engine }, layer)
    }

    pub fn io(&self) -> &SocketIo<E::Adapter> {
        &self.io
    }

    /// Opens the namespace, retrying until the adapter is initialised (with
    /// Redis: until its channels are subscribed). Until then clients are
    /// refused and the node reports unready.
    pub async fn open(&self, health: &Health, shutdown: &CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            // `.with(a).with(b)` runs b first: authenticate, then join the
            // rooms, both before the client sees its CONNECT reply.
            let handler = connection::on_connect::<E>
                .with(connection::join_rooms::<E>)
                .with(handshake::authenticate::<E::Adapter>);
            let init = tokio::select! {
                () = shutdown.cancelled() => return,
                res = E::finish_init(self.io.ns("/", handler)) => res,
            };
            match init {
                Ok(()) => {
                    health.set_adapter_ready();
                    tracing::info!("socket.io namespace open");
                    return;
                }
                Err(e) => {
                    // Without the namespace the node serves nobody: keep
                    // trying, at the slowest pace when only an operator can help.
                    if e.told_by_health() {
                        tracing::debug!(error = %e, retry_in = ?backoff, "adapter not ready");
                    } else if e.is_transient() {
                        tracing::warn!(error = %e, retry_in = ?backoff, "adapter not ready");
                    } else {
                        backoff = Duration::from_secs(2);
                        tracing::error!(error = %e, retry_in = ?backoff, "adapter not ready");
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Disconnects every local client: the official clients reconnect by
    /// themselves, through the load balancer, to another node.
    pub async fn close(&self) {
        self.io.close().await;
    }

    /// `io.to` and friends panic before the namespace exists.
    fn ns(
        &self,
    ) -> Result<socketioxide::operators::BroadcastOperators<E::Adapter>, BroadcastFailed> {
        self.io
            .of("/")
            .ok_or_else(|| BroadcastFailed("namespace not open yet".into()))
    }

    /// Emits to every socket of `rooms` on every node, each socket once.
    pub async fn emit_to(
        &self,
        rooms: Vec<String>,
        event: &str,
        data: &serde_json::Value,
    ) -> Result<(), BroadcastFailed> {
        self.ns()?
            .to(rooms)
            .emit(event, data)
            .await
            .map_err(|e| BroadcastFailed(e.to_string()))?;
        // Any name may go out this way (tests probe rooms with their own).
        match ServerEvent::parse(event) {
            Some(event) => metrics::emitted(event),
            None => metrics::emitted_other(),
        }
        Ok(())
    }

    /// Emits to `room` on every node, except the sockets also in `except`.
    pub async fn emit_except<T: serde::Serialize + ?Sized>(
        &self,
        room: &Room,
        except: &Room,
        event: ServerEvent,
        data: &T,
    ) -> Result<(), BroadcastFailed> {
        self.ns()?
            .to(room.name())
            .except(except.name())
            .emit(event.as_str(), data)
            .await
            .map_err(|e| BroadcastFailed(e.to_string()))?;
        metrics::emitted(event);
        Ok(())
    }

    /// Every socket in `members`, on every node, joins `room`. Sent on the
    /// channel of `members`: only the nodes with such sockets hear it, and
    /// each subscribes to `room` before its sockets join (`delivery`).
    pub async fn join_members(&self, members: &Room, room: &Room) -> Result<(), BroadcastFailed> {
        self.route(members, Routed::Join { room: room.name() })
            .await
    }

    /// Every socket in `members`, on every node, leaves `room`.
    pub async fn leave_members(&self, members: &Room, room: &Room) -> Result<(), BroadcastFailed> {
        self.route(members, Routed::Leave { room: room.name() })
            .await
    }

    async fn route(&self, members: &Room, message: Routed) -> Result<(), BroadcastFailed> {
        self.engine
            .rooms()
            .publish(vec![(members.name(), message.encode())])
            .await
            .map_err(|e| BroadcastFailed(e.to_string()))
    }

    /// Counts local sockets by role and transport into the gauge.
    pub fn record_census(&self) {
        let Some(ns) = self.io.of("/") else {
            metrics::set_connected_sockets(&[]);
            return;
        };
        let mut counts: Vec<(Role, metrics::Transport, usize)> = Vec::new();
        for socket in ns.sockets() {
            let Some(principal) = socket.extensions.get::<Principal>() else {
                continue;
            };
            let transport = match socket.transport_type() {
                TransportType::Websocket => metrics::Transport::Websocket,
                TransportType::Polling => metrics::Transport::Polling,
            };
            match counts
                .iter_mut()
                .find(|(r, t, _)| *r == principal.role() && *t == transport)
            {
                Some(entry) => entry.2 += 1,
                None => counts.push((principal.role(), transport, 1)),
            }
        }
        metrics::set_connected_sockets(&counts);
    }
}
