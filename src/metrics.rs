//! Every metric the relay exports: names, labels and the one recorder.
//! Label values are bounded sets (roles, reasons, transports), never ids.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::auth::{Rejection, Role};

pub const CONNECTED_SOCKETS: &str = "relay_connected_sockets";
pub const CONNECTS: &str = "relay_connects_total";
pub const DISCONNECTS: &str = "relay_disconnects_total";
pub const HANDSHAKE_REJECTIONS: &str = "relay_handshake_rejections_total";
pub const ADAPTER_MESSAGES: &str = "relay_adapter_messages_total";
pub const ADAPTER_ERRORS: &str = "relay_adapter_errors_total";
pub const READY: &str = "relay_ready";
pub const STORE_UP: &str = "relay_store_up";
pub const BUILD_INFO: &str = "relay_build_info";

pub const TRANSPORTS: [&str; 2] = ["websocket", "polling"];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder on first use; later calls (several
/// in-process nodes, as in tests) share it.
pub fn install(node_id: &str, engine: &'static str) -> Result<PrometheusHandle, String> {
    let handle = match HANDLE.get() {
        Some(handle) => handle.clone(),
        None => {
            let handle = PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| e.to_string())?;
            HANDLE.get_or_init(|| handle).clone()
        }
    };
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "node" => node_id.to_owned(), "engine" => engine)
        .set(1.0);
    // Zero series up front, so dashboards and alerts see them before the first event.
    for rejection in Rejection::ALL {
        counter!(HANDSHAKE_REJECTIONS, "reason" => rejection.reason()).absolute(0);
    }
    for role in Role::ALL {
        counter!(CONNECTS, "role" => role.as_str()).absolute(0);
    }
    Ok(handle)
}

fn describe() {
    describe_gauge!(
        CONNECTED_SOCKETS,
        "Sockets connected to this node, by role and transport."
    );
    describe_counter!(CONNECTS, "Sockets that completed the handshake, by role.");
    describe_counter!(DISCONNECTS, "Socket disconnections, by role and reason.");
    describe_counter!(HANDSHAKE_REJECTIONS, "Refused handshakes, by reason.");
    describe_counter!(
        ADAPTER_MESSAGES,
        "Node-to-node adapter messages through Redis pub/sub, by direction."
    );
    describe_counter!(
        ADAPTER_ERRORS,
        "Node-to-node adapter failures, by operation."
    );
    describe_gauge!(READY, "1 when this node reports ready on /readyz.");
    describe_gauge!(
        STORE_UP,
        "1 when the backing store (Redis, or memory) answers."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; labels carry the version, node and engine."
    );
}

pub fn handshake_rejected(rejection: Rejection) {
    counter!(HANDSHAKE_REJECTIONS, "reason" => rejection.reason()).increment(1);
}

pub fn connected(role: Role) {
    counter!(CONNECTS, "role" => role.as_str()).increment(1);
}

pub fn disconnected(role: Role, reason: &'static str) {
    counter!(DISCONNECTS, "role" => role.as_str(), "reason" => reason).increment(1);
}

pub fn adapter_message(direction: &'static str) {
    counter!(ADAPTER_MESSAGES, "direction" => direction).increment(1);
}

pub fn adapter_error(op: &'static str) {
    counter!(ADAPTER_ERRORS, "op" => op).increment(1);
}

/// Connected sockets per role and transport, counted at scrape time so the
/// gauge can never drift from the truth (a polling socket that upgrades
/// moves to `websocket` by itself).
pub fn set_connected_sockets(counts: &[(Role, &'static str, usize)]) {
    for role in Role::ALL {
        for transport in TRANSPORTS {
            let n = counts
                .iter()
                .filter(|(r, t, _)| *r == role && *t == transport)
                .map(|(_, _, n)| *n)
                .sum::<usize>();
            gauge!(CONNECTED_SOCKETS, "role" => role.as_str(), "transport" => transport)
                .set(n as f64);
        }
    }
}

pub fn set_health(ready: bool, store_up: bool) {
    gauge!(READY).set(f64::from(u8::from(ready)));
    gauge!(STORE_UP).set(f64::from(u8::from(store_up)));
}
