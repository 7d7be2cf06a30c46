//! A connected socket's life: the rooms it joins at connect and the
//! bookkeeping when it leaves.

use socketioxide::{
    adapter::Adapter,
    extract::{Extension, SocketRef},
    socket::DisconnectReason,
};

use crate::{auth::Principal, metrics, rooms::Room};

pub async fn on_connect<A: Adapter>(
    socket: SocketRef<A>,
    Extension(principal): Extension<Principal>,
) {
    // Order rooms (active orders of customers and drivers) join here too once
    // the order state exists; role rooms depend on the token alone.
    let rooms: Vec<String> = Room::for_principal(&principal)
        .iter()
        .map(Room::name)
        .collect();
    socket.join(rooms);
    metrics::connected(principal.role());
    tracing::debug!(
        sid = %socket.id,
        role = %principal.role(),
        transport = ?socket.transport_type(),
        "connected"
    );
    socket.on_disconnect(on_disconnect::<A>);
}

async fn on_disconnect<A: Adapter>(
    socket: SocketRef<A>,
    reason: DisconnectReason,
    Extension(principal): Extension<Principal>,
) {
    metrics::disconnected(principal.role(), reason_label(reason));
    tracing::debug!(sid = %socket.id, %reason, "disconnected");
}

fn reason_label(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport_close",
        DisconnectReason::MultipleHttpPollingError => "multiple_polling",
        DisconnectReason::PacketParsingError => "packet_parsing",
        DisconnectReason::TransportError => "transport_error",
        DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
        DisconnectReason::ClientNSDisconnect => "client_disconnect",
        DisconnectReason::ServerNSDisconnect => "server_disconnect",
        DisconnectReason::ClosingServer => "closing_server",
    }
}
