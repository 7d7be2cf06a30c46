//! Every metric the relay exports: names, labels and the one recorder.
//! Label values are bounded sets (roles, reasons, transports), never ids.

mod labels;
pub mod process;

use std::sync::OnceLock;

use metrics::{
    Counter, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use labels::{
    AdapterDirection, AdapterOp, ChatOutcome, ClientEventOutcome, DeferredJoin, DisconnectReason,
    HttpCloseReason, IdempotentOutcome, LocationOutcome, PresenceQueryRejection, PublishRejection,
    RecoveryResult, RedisFailure, RefreshOutcome, ResendReason, ShedReason, StoreOp, StreamStage,
    Transport,
};

use crate::{
    auth::{RefreshRefusal, Rejection, Role},
    events::{
        ClientEvent, DecodeReason, EventKind, PresenceChange, PresenceKind, Reject, ServerEvent,
    },
    outcome::OutcomeKind,
};

pub const CONNECTED_SOCKETS: &str = "relay_connected_sockets";
pub const CONNECTS: &str = "relay_connects_total";
pub const DISCONNECTS: &str = "relay_disconnects_total";
pub const HANDSHAKE_REJECTIONS: &str = "relay_handshake_rejections_total";
pub const ADAPTER_MESSAGES: &str = "relay_adapter_messages_total";
pub const ADAPTER_ERRORS: &str = "relay_adapter_errors_total";
pub const READY: &str = "relay_ready";
pub const STORE_UP: &str = "relay_store_up";
pub const BUILD_INFO: &str = "relay_build_info";
pub const EMITS: &str = "relay_emits_total";
pub const CLIENT_EVENTS: &str = "relay_client_events_total";
pub const HTTP_REQUESTS: &str = "relay_http_requests_total";
pub const HTTP_DURATION: &str = "relay_http_request_duration_seconds";
pub const CLUSTER_NODES: &str = "relay_cluster_nodes";
pub const CONSUMER_RUNNING: &str = "relay_consumer_running";
pub const RECOVERIES: &str = "relay_recoveries_total";
pub const CONNECTIONS_SHED: &str = "relay_connections_shed_total";
pub const SLOW_CLIENTS: &str = "relay_slow_client_disconnects_total";
pub const REDIS_REDIALS: &str = "relay_redis_redials_total";
pub const REDIS_CONNECT_ERRORS: &str = "relay_redis_connect_errors_total";
pub const REDIS_CLUSTER_RESENT: &str = "relay_redis_cluster_resent_total";
pub const REDIS_CLUSTER_NODE_FAILURES: &str = "relay_redis_cluster_node_failures_total";
pub const REDIS_CLUSTER_SLOT_MAPS: &str = "relay_redis_cluster_slot_map_refreshes_total";
pub const TOKENS_EXPIRED: &str = "relay_token_expiry_disconnects_total";
pub const TOKEN_REFRESHES: &str = "relay_token_refreshes_total";
pub const CHAT_MESSAGES: &str = "relay_chat_messages_total";
pub const TOKEN_EXPIRY_NOTICES: &str = "relay_token_expiry_notices_total";
pub const REOFFERS: &str = "relay_offers_reoffered_total";
pub const REPLAYED: &str = "relay_replayed_events_total";
pub const ROOM_SUBSCRIPTIONS: &str = "relay_room_subscriptions";
pub const GAP_FILLS: &str = "relay_gap_fills_total";
pub const GAP_FILLED: &str = "relay_gap_filled_events_total";
pub const DEFERRED_JOINS: &str = "relay_deferred_order_joins_total";
pub const HTTP_CONNECTIONS_CLOSED: &str = "relay_http_connections_closed_total";
pub const HTTP_ACCEPT_ERRORS: &str = "relay_http_accept_errors_total";
pub const HTTP_PENDING: &str = "relay_http_pending_connections";
pub const PRESENCE_ONLINE: &str = "relay_presence_online";
pub const PRESENCE_CHANGES: &str = "relay_presence_changes_total";
pub const PRESENCE_QUERIES_REJECTED: &str = "relay_presence_queries_rejected_total";
pub const TASK_PANICS: &str = "relay_task_panics_total";
pub const LOG_WRITE_ERRORS: &str = "relay_log_write_errors_total";
pub const LOG_LINES_DROPPED: &str = "relay_log_lines_dropped_total";

/// The routes of `http::router`, the only values of the `route` label.
const HTTP_ROUTES: [&str; 8] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/orders/active",
    "/api/events",
    "/api/outcomes",
    "/api/dead-letters",
    "/api/presence",
];
/// HTTP handlers answer in well under a second; Redis-bound ones in ms.
const HTTP_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];
pub const LOCATION_UPDATES: &str = "relay_location_updates_total";
pub const LOCATION_REJECTED: &str = "relay_location_rejected_total";
pub const LOCATION_FANOUT: &str = "relay_location_fanout_total";
pub const LOCATION_FLUSH_SIZE: &str = "relay_location_cache_batch_size";
pub const LOCATION_FLUSH_SECONDS: &str = "relay_location_cache_flush_seconds";
pub const STORE_ERRORS: &str = "relay_store_errors_total";
pub const STREAM_CONSUMED: &str = "relay_stream_consumed_total";
pub const STREAM_ACKED: &str = "relay_stream_acked_total";
pub const STREAM_RETRIES: &str = "relay_stream_retries_total";
pub const STREAM_DEAD_LETTERED: &str = "relay_stream_dead_lettered_total";
pub const STREAM_CLAIMED: &str = "relay_stream_claimed_total";
pub const STREAM_SUPERSEDED: &str = "relay_stream_superseded_total";
pub const STREAM_LAG: &str = "relay_stream_lag";
pub const STREAM_PENDING: &str = "relay_stream_pending";
pub const STREAM_OLDEST_PENDING: &str = "relay_stream_oldest_pending_seconds";
pub const STREAM_IN_FLIGHT: &str = "relay_stream_in_flight";
pub const ORDER_WAIT: &str = "relay_order_sequence_wait_seconds";
pub const STREAM_STAGE: &str = "relay_stream_stage_seconds";
pub const ACK_OUTCOMES: &str = "relay_ack_outcomes_total";
pub const ACK_LATENCY: &str = "relay_ack_latency_seconds";
pub const EVENTS_PUBLISHED: &str = "relay_events_published_total";
pub const PUBLISH_REJECTED: &str = "relay_publish_rejected_total";
pub const API_IDEMPOTENT: &str = "relay_api_idempotent_total";

/// Ack latency: from a quick tap (50 ms) to a merchant using most of its minute.
const ACK_LATENCY_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0,
];
/// Drivers per cache pipeline.
const FLUSH_SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 350.0, 512.0];
/// One pipeline round trip to Redis.
const FLUSH_SECONDS_BUCKETS: [f64; 10] = [
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];
/// Waiting for an order's earlier event on another node: usually nothing.
const ORDER_WAIT_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];
/// One Redis round trip of an entry's handling: the XADD -> client target
/// is 1.5 ms, so the buckets resolve a tenth of a millisecond.
const STAGE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.05, 0.5,
];

/// `relay_emits_total` counts the contract's events; `sync:done` answers
/// one client's own request and is not among them.
fn counts_emits(event: ServerEvent) -> bool {
    event != ServerEvent::SyncDone
}

/// The `event` label of emits and client events outside the protocol.
const OTHER: &str = "other";

/// The commit the binary was built from, when the build said (`make release`
/// and the Dockerfile pass `RELAY_COMMIT`).
pub const COMMIT: &str = match option_env!("RELAY_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder on first use; later calls (several
/// in-process nodes, as in tests) share it.
pub fn install(node_id: &str, engine: &'static str) -> Result<PrometheusHandle, String> {
    let handle = match HANDLE.get() {
        Some(handle) => handle.clone(),
        None => {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(ACK_LATENCY.to_owned()), &ACK_LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(ORDER_WAIT.to_owned()),
                        &ORDER_WAIT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(STREAM_STAGE.to_owned()), &STAGE_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), &HTTP_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(LOCATION_FLUSH_SIZE.to_owned()),
                        &FLUSH_SIZE_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(LOCATION_FLUSH_SECONDS.to_owned()),
                        &FLUSH_SECONDS_BUCKETS,
                    )
                })
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            HANDLE.get_or_init(|| handle).clone()
        }
    };
    describe();
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => COMMIT,
        "node" => node_id.to_owned(),
        "engine" => engine
    )
    .set(1.0);
    for route in HTTP_ROUTES {
        counter!(HTTP_REQUESTS, "route" => route, "status" => "200").absolute(0);
    }
    counter!(HTTP_REQUESTS, "route" => "other", "status" => "404").absolute(0);
    // Zero series up front, so dashboards and alerts see them before the first event.
    for rejection in Rejection::ALL {
        counter!(HANDSHAKE_REJECTIONS, "reason" => rejection.reason()).absolute(0);
    }
    for role in Role::ALL {
        counter!(CONNECTS, "role" => role.as_str()).absolute(0);
    }
    for kind in EventKind::ALL {
        for name in [STREAM_CONSUMED, STREAM_ACKED, STREAM_RETRIES] {
            counter!(name, "type" => kind.as_str()).absolute(0);
        }
    }
    for event in ServerEvent::OFFERS {
        for outcome in OutcomeKind::ALL {
            counter!(ACK_OUTCOMES, "event" => event.as_str(), "outcome" => outcome.as_str())
                .absolute(0);
        }
    }
    counter!(STREAM_CLAIMED).absolute(0);
    for kind in SUPERSEDABLE {
        counter!(STREAM_SUPERSEDED, "type" => kind.as_str()).absolute(0);
    }
    for outcome in LocationOutcome::ALL {
        counter!(LOCATION_UPDATES, "outcome" => outcome.as_str()).absolute(0);
    }
    for reason in Reject::ALL {
        counter!(LOCATION_REJECTED, "reason" => reason.as_str()).absolute(0);
    }
    counter!(LOCATION_FANOUT).absolute(0);
    for result in RecoveryResult::ALL {
        counter!(RECOVERIES, "result" => result.as_str()).absolute(0);
    }
    counter!(REPLAYED).absolute(0);
    gauge!(ROOM_SUBSCRIPTIONS).set(0.0);
    counter!(GAP_FILLS).absolute(0);
    counter!(GAP_FILLED).absolute(0);
    counter!(TOKENS_EXPIRED).absolute(0);
    counter!(TOKEN_EXPIRY_NOTICES).absolute(0);
    for outcome in RefreshOutcome::ALL {
        counter!(TOKEN_REFRESHES, "outcome" => outcome.as_str()).absolute(0);
    }
    for outcome in ChatOutcome::ALL {
        counter!(CHAT_MESSAGES, "outcome" => outcome.as_str()).absolute(0);
    }
    for result in DeferredJoin::ALL {
        counter!(DEFERRED_JOINS, "result" => result.as_str()).absolute(0);
    }
    counter!(SLOW_CLIENTS).absolute(0);
    counter!(REDIS_REDIALS).absolute(0);
    for cause in RedisFailure::ALL {
        counter!(REDIS_CONNECT_ERRORS, "cause" => cause.as_str()).absolute(0);
    }
    for reason in ResendReason::ALL {
        counter!(REDIS_CLUSTER_RESENT, "reason" => reason.as_str()).absolute(0);
    }
    counter!(REDIS_CLUSTER_NODE_FAILURES).absolute(0);
    counter!(REDIS_CLUSTER_SLOT_MAPS).absolute(0);
    for reason in ShedReason::ALL {
        counter!(CONNECTIONS_SHED, "reason" => reason.as_str()).absolute(0);
    }
    for event in ServerEvent::OFFERS {
        counter!(REOFFERS, "event" => event.as_str()).absolute(0);
    }
    for reason in HttpCloseReason::ALL {
        counter!(HTTP_CONNECTIONS_CLOSED, "reason" => reason.as_str()).absolute(0);
    }
    counter!(HTTP_ACCEPT_ERRORS).absolute(0);
    for kind in PresenceKind::ALL {
        gauge!(PRESENCE_ONLINE, "kind" => kind.as_str()).set(0.0);
        for online in ["true", "false"] {
            counter!(PRESENCE_CHANGES, "kind" => kind.as_str(), "online" => online).absolute(0);
        }
    }
    for reason in PresenceQueryRejection::ALL {
        counter!(PRESENCE_QUERIES_REJECTED, "reason" => reason.as_str()).absolute(0);
    }
    record_process_faults();
    zero_bounded_series();
    hot();
    Ok(handle)
}

/// Task panics and log losses are counted where no recorder can be assumed
/// (below this module, and before it is installed): copied in at install
/// and at every scrape.
pub fn record_process_faults() {
    for (task, panics) in crate::tasks::panic_counts() {
        counter!(TASK_PANICS, "task" => task).absolute(panics);
    }
    let losses = crate::telemetry::losses();
    counter!(LOG_WRITE_ERRORS).absolute(losses.write_errors);
    counter!(LOG_LINES_DROPPED).absolute(losses.dropped_lines);
}

fn describe() {
    describe_counter!(
        TASK_PANICS,
        "Panics of the node's long-lived tasks, by task (restarted or fatal)."
    );
    describe_counter!(
        LOG_WRITE_ERRORS,
        "Writes of log lines to stderr that failed (closed pipe, full disk); the lines are lost."
    );
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because stderr's reader did not keep up."
    );
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
    describe_counter!(
        RECOVERIES,
        "Clients' requests for missed events (connect with last_event_id, or sync), by result."
    );
    describe_counter!(REPLAYED, "Events replayed to clients from the history.");
    describe_gauge!(
        ROOM_SUBSCRIPTIONS,
        "Room channels this node subscribes to: rooms with a local socket, plus those left within the linger."
    );
    describe_counter!(
        GAP_FILLS,
        "Times this node filled a possible gap in its room feed from the history (after its pub/sub link dropped)."
    );
    describe_counter!(
        GAP_FILLED,
        "Recorded events delivered from the history by gap fills (they had not come live)."
    );
    describe_counter!(
        CONNECTIONS_SHED,
        "New sessions refused with HTTP 503 before they started, by reason."
    );
    describe_counter!(
        HTTP_CONNECTIONS_CLOSED,
        "HTTP connections that were not sessions closed by the node, by reason."
    );
    describe_counter!(
        HTTP_ACCEPT_ERRORS,
        "Failed accepts on the listener (e.g. out of file descriptors); each backs off briefly."
    );
    describe_gauge!(
        HTTP_PENDING,
        "HTTP connections open that are not (yet) Socket.IO sessions."
    );
    describe_counter!(
        REDIS_REDIALS,
        "Times every Redis connection was dropped and dialed again after the link went silent."
    );
    describe_counter!(
        REDIS_CONNECT_ERRORS,
        "Failed attempts to use Redis, by cause (tls, auth, permission, unreachable)."
    );
    describe_counter!(
        REDIS_CLUSTER_RESENT,
        "Commands of per-node pipelines that did not run on their node and went through the cluster connection, by reason."
    );
    describe_counter!(
        REDIS_CLUSTER_NODE_FAILURES,
        "Per-node pipelines on a Redis Cluster that failed with an I/O error or a timeout (outcome unknown, not re-sent)."
    );
    describe_counter!(
        REDIS_CLUSTER_SLOT_MAPS,
        "Slot maps read from the Redis Cluster (CLUSTER SLOTS) for the per-node pipelines."
    );
    describe_counter!(
        SLOW_CLIENTS,
        "Sockets disconnected because they stopped reading and their send buffer filled."
    );
    describe_counter!(
        TOKENS_EXPIRED,
        "Sockets disconnected by the server because their token expired."
    );
    describe_counter!(
        TOKEN_REFRESHES,
        "auth:refresh requests, by outcome (ok, a handshake reason, other_user, rate_limited)."
    );
    describe_counter!(
        CHAT_MESSAGES,
        "chat:send requests, by outcome (sent, not_allowed, order_not_active, invalid, rate_limited, unavailable)."
    );
    describe_counter!(
        TOKEN_EXPIRY_NOTICES,
        "auth:expiring notices sent to sockets whose token ends soon."
    );
    describe_counter!(
        DEFERRED_JOINS,
        "Sockets connected while their active orders could not be read, and what became of their order rooms, by result."
    );
    describe_gauge!(
        PRESENCE_ONLINE,
        "Stores and drivers online across the whole cluster, by kind (every node reports the same value)."
    );
    describe_counter!(
        PRESENCE_CHANGES,
        "Presence transitions, by kind and online; each is counted once, by the node that made it."
    );
    describe_counter!(
        PRESENCE_QUERIES_REJECTED,
        "GET /api/presence requests refused, by reason (unauthorized, bad_query, too_many_ids)."
    );
    describe_counter!(
        REOFFERS,
        "Offers sent again to sockets that joined the target room while the timer ran."
    );
    describe_gauge!(
        CONSUMER_RUNNING,
        "1 while this node's stream consumer is reading (0 while it waits for the store or drains)."
    );
    describe_gauge!(
        STORE_UP,
        "1 when the backing store (Redis, or memory) answers."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; labels carry the version, node and engine."
    );
    describe_counter!(EMITS, "Events emitted to clients, by event name.");
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests, by route template and status code."
    );
    describe_histogram!(
        HTTP_DURATION,
        "HTTP request duration, in seconds, by route template."
    );
    describe_gauge!(
        CLUSTER_NODES,
        "Relay nodes as seen by the Socket.IO adapter (1 in embedded mode)."
    );
    describe_counter!(
        LOCATION_UPDATES,
        "Driver location updates, by outcome (received, accepted, rejected)."
    );
    describe_counter!(
        LOCATION_REJECTED,
        "Dropped driver location updates, by reason."
    );
    describe_counter!(
        LOCATION_FANOUT,
        "order:driver_location emits, one per order room an update went to."
    );
    describe_histogram!(
        LOCATION_FLUSH_SIZE,
        "Drivers written per location cache pipeline."
    );
    describe_histogram!(
        LOCATION_FLUSH_SECONDS,
        "Duration of one location cache pipeline, in seconds."
    );
    describe_counter!(
        CLIENT_EVENTS,
        "Events received from clients, by event and outcome."
    );
    describe_counter!(
        STORE_ERRORS,
        "Failed operations on the backing store, by operation."
    );
    describe_counter!(
        STREAM_CONSUMED,
        "Stream entries taken up by this node, by type."
    );
    describe_counter!(
        STREAM_ACKED,
        "Stream entries acknowledged after their effect, by type."
    );
    describe_counter!(
        STREAM_RETRIES,
        "Dispatch attempts that failed and were retried, by type."
    );
    describe_counter!(
        STREAM_DEAD_LETTERED,
        "Stream entries copied to the dead letters, by type and reason."
    );
    describe_counter!(
        STREAM_CLAIMED,
        "Entries of stopped consumers claimed by this node."
    );
    describe_counter!(
        STREAM_SUPERSEDED,
        "Entries handled again after later entries of their order: nothing written or emitted."
    );
    describe_gauge!(
        STREAM_LAG,
        "Entries of the event stream not yet delivered to the consumer group."
    );
    describe_gauge!(
        STREAM_PENDING,
        "Entries delivered to the group but not yet acknowledged."
    );
    describe_gauge!(
        STREAM_OLDEST_PENDING,
        "Age of the oldest pending entry, in seconds."
    );
    describe_gauge!(
        STREAM_IN_FLIGHT,
        "Entries this node is working on (including offers waiting for acks)."
    );
    describe_histogram!(
        ORDER_WAIT,
        "Time an entry waited for its order's earlier entries, in seconds."
    );
    describe_histogram!(
        STREAM_STAGE,
        "Time of one step of handling a stream entry, in seconds, by stage."
    );
    describe_counter!(ACK_OUTCOMES, "Offer outcomes, by event and outcome.");
    describe_histogram!(
        ACK_LATENCY,
        "Time from an offer to its first ack, in seconds, by event."
    );
    describe_counter!(
        EVENTS_PUBLISHED,
        "Events appended through the publish API, by type."
    );
    describe_counter!(PUBLISH_REJECTED, "Publish API requests refused, by reason.");
    describe_counter!(
        API_IDEMPOTENT,
        "Publish API requests whose Idempotency-Key was used before: replayed or conflict."
    );
}

pub fn emitted(event: ServerEvent) {
    counter!(EMITS, "event" => event.as_str()).increment(1);
}

/// An emit of a name outside the contract's events.
pub fn emitted_other() {
    counter!(EMITS, "event" => OTHER).increment(1);
}

/// Every series of a bounded label set starts at 0: a counter that first
/// appears at 1 hides that increment from `rate()` and `increase()`, and
/// panels would show "no data" instead of 0 on a quiet node.
fn zero_bounded_series() {
    for role in Role::ALL {
        for reason in DisconnectReason::ALL {
            counter!(DISCONNECTS, "role" => role.as_str(), "reason" => reason.as_str()).absolute(0);
        }
    }
    for event in ClientEvent::ALL {
        for outcome in [
            ClientEventOutcome::Ok,
            ClientEventOutcome::Rejected,
            ClientEventOutcome::RateLimited,
        ] {
            counter!(CLIENT_EVENTS, "event" => event.as_str(), "outcome" => outcome.as_str())
                .absolute(0);
        }
    }
    for outcome in [ClientEventOutcome::Unknown, ClientEventOutcome::RateLimited] {
        counter!(CLIENT_EVENTS, "event" => OTHER, "outcome" => outcome.as_str()).absolute(0);
    }
    for event in ServerEvent::ALL.into_iter().filter(|e| counts_emits(*e)) {
        counter!(EMITS, "event" => event.as_str()).absolute(0);
    }
    counter!(EMITS, "event" => OTHER).absolute(0);
    for direction in AdapterDirection::ALL {
        counter!(ADAPTER_MESSAGES, "direction" => direction.as_str()).absolute(0);
    }
    for op in AdapterOp::ALL {
        counter!(ADAPTER_ERRORS, "op" => op.as_str()).absolute(0);
    }
    for op in StoreOp::ALL {
        counter!(STORE_ERRORS, "op" => op.as_str()).absolute(0);
    }
    // An entry with a known type is refused for what its data lacks; one
    // without is `unknown`, as is one delivered too often (its type unread).
    for kind in EventKind::ALL {
        counter!(EVENTS_PUBLISHED, "type" => kind.as_str()).absolute(0);
        for reason in DecodeReason::ALL.into_iter().filter(|r| r.may_know_type()) {
            counter!(STREAM_DEAD_LETTERED, "type" => kind.as_str(), "reason" => reason.as_str())
                .absolute(0);
        }
    }
    for reason in DecodeReason::ALL.into_iter().filter(|r| r.may_lack_type()) {
        counter!(STREAM_DEAD_LETTERED, "type" => UNKNOWN_TYPE, "reason" => reason.as_str())
            .absolute(0);
    }
    counter!(STREAM_DEAD_LETTERED, "type" => UNKNOWN_TYPE, "reason" => MAX_DELIVERIES).absolute(0);
    counter!(STREAM_DEAD_LETTERED, "type" => EventKind::OrderCreated.as_str(), "reason" => ORDER_EXISTS)
        .absolute(0);
    counter!(STREAM_DEAD_LETTERED, "type" => EventKind::ChatMessage.as_str(), "reason" => ORDER_NOT_ACTIVE)
        .absolute(0);
    for reason in PublishRejection::ALL {
        counter!(PUBLISH_REJECTED, "reason" => reason.as_str()).absolute(0);
    }
    for outcome in IdempotentOutcome::ALL {
        counter!(API_IDEMPOTENT, "outcome" => outcome.as_str()).absolute(0);
    }
}

/// A client -> server event, by name and outcome.
pub fn client_event(event: ClientEvent, outcome: ClientEventOutcome) {
    counter!(CLIENT_EVENTS, "event" => event.as_str(), "outcome" => outcome.as_str()).increment(1);
}

/// An event outside the protocol: `unknown`, or `rate_limited` when the
/// socket's event budget is spent.
pub fn unknown_client_event(outcome: ClientEventOutcome) {
    counter!(CLIENT_EVENTS, "event" => OTHER, "outcome" => outcome.as_str()).increment(1);
}

/// The route label for a matched route template; anything unexpected is `other`.
pub fn http_route(template: &str) -> &'static str {
    HTTP_ROUTES
        .into_iter()
        .find(|r| *r == template)
        .unwrap_or("other")
}

pub fn http_request(route: &'static str, status: u16, seconds: f64) {
    counter!(HTTP_REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
    histogram!(HTTP_DURATION, "route" => route).record(seconds);
}

pub fn http_unmatched() {
    counter!(HTTP_REQUESTS, "route" => "other", "status" => "404").increment(1);
}

/// A new session refused before it started.
pub fn connection_shed(reason: ShedReason) {
    counter!(CONNECTIONS_SHED, "reason" => reason.as_str()).increment(1);
}

/// An HTTP connection closed by the node.
pub fn http_connection_closed(reason: HttpCloseReason) {
    counter!(HTTP_CONNECTIONS_CLOSED, "reason" => reason.as_str()).increment(1);
}

pub fn http_accept_error() {
    counter!(HTTP_ACCEPT_ERRORS).increment(1);
}

pub fn set_http_pending(connections: usize) {
    gauge!(HTTP_PENDING).set(connections as f64);
}

/// Every Redis connection dropped for a new one after failed health probes.
pub fn redis_redial() {
    counter!(REDIS_REDIALS).increment(1);
}

/// A failed attempt to use Redis (a health probe, creating the consumer
/// group), by cause.
pub fn redis_connect_error(cause: RedisFailure) {
    counter!(REDIS_CONNECT_ERRORS, "cause" => cause.as_str()).increment(1);
}

/// Commands of a per-node pipeline sent again through the cluster
/// connection, because their node did not run them.
pub fn redis_cluster_resent(reason: ResendReason, commands: usize) {
    counter!(REDIS_CLUSTER_RESENT, "reason" => reason.as_str()).increment(commands as u64);
}

/// A per-node pipeline that failed on its connection: its commands'
/// outcome is unknown.
pub fn redis_cluster_node_failure() {
    counter!(REDIS_CLUSTER_NODE_FAILURES).increment(1);
}

/// A fresh slot map for the per-node pipelines.
pub fn redis_cluster_slot_map() {
    counter!(REDIS_CLUSTER_SLOT_MAPS).increment(1);
}

/// A socket disconnected because it stopped reading and its buffer filled.
pub fn slow_client_disconnected() {
    counter!(SLOW_CLIENTS).increment(1);
}

/// A socket disconnected because its token expired.
pub fn token_expired() {
    counter!(TOKENS_EXPIRED).increment(1);
}

/// An `auth:refresh`, by outcome (also counted as a client event).
pub fn token_refresh(result: Result<(), RefreshRefusal>) {
    use crate::auth::Rejection as R;
    let outcome = match result {
        Ok(()) => RefreshOutcome::Ok,
        Err(RefreshRefusal::OtherSubject | RefreshRefusal::OtherRole) => RefreshOutcome::OtherUser,
        Err(RefreshRefusal::Token(rejection)) => match rejection {
            R::MissingToken => RefreshOutcome::MissingToken,
            R::InvalidToken => RefreshOutcome::InvalidToken,
            R::TokenExpired => RefreshOutcome::TokenExpired,
            R::RoleNotAllowed => RefreshOutcome::RoleNotAllowed,
            // A refresh never counts connections; any other claim problem.
            R::InvalidClaims | R::TooManyConnections => RefreshOutcome::InvalidClaims,
        },
    };
    token_refresh_outcome(outcome);
}

/// An `auth:refresh` whose outcome is known without a token (`rate_limited`).
pub fn token_refresh_outcome(outcome: RefreshOutcome) {
    counter!(TOKEN_REFRESHES, "outcome" => outcome.as_str()).increment(1);
    let client = match outcome {
        RefreshOutcome::Ok => ClientEventOutcome::Ok,
        RefreshOutcome::RateLimited => ClientEventOutcome::RateLimited,
        _ => ClientEventOutcome::Rejected,
    };
    client_event(ClientEvent::AuthRefresh, client);
}

/// A `chat:send`, counted by outcome and as a client event.
pub fn chat_message(outcome: ChatOutcome) {
    counter!(CHAT_MESSAGES, "outcome" => outcome.as_str()).increment(1);
    let client = match outcome {
        ChatOutcome::Sent => ClientEventOutcome::Ok,
        ChatOutcome::RateLimited => ClientEventOutcome::RateLimited,
        _ => ClientEventOutcome::Rejected,
    };
    client_event(ClientEvent::ChatSend, client);
}

/// An `auth:expiring` sent to a socket whose token ends soon.
pub fn token_expiry_notice() {
    counter!(TOKEN_EXPIRY_NOTICES).increment(1);
    emitted(ServerEvent::AuthExpiring);
}

/// A socket whose order rooms were not joined at connect, and what came of it.
pub fn deferred_order_join(result: DeferredJoin) {
    counter!(DEFERRED_JOINS, "result" => result.as_str()).increment(1);
}

/// A client's missed events, recovered or not.
pub fn recovery(recovered: bool) {
    let result = if recovered {
        RecoveryResult::Recovered
    } else {
        RecoveryResult::NotRecovered
    };
    counter!(RECOVERIES, "result" => result.as_str()).increment(1);
}

/// An offer sent again, to sockets that joined its room after it went out.
pub fn reoffered(event: ServerEvent) {
    counter!(REOFFERS, "event" => event.as_str()).increment(1);
}

pub fn replayed(events: usize) {
    counter!(REPLAYED).increment(events as u64);
}

pub fn set_room_subscriptions(rooms: usize) {
    gauge!(ROOM_SUBSCRIPTIONS).set(rooms as f64);
}

/// A gap fill ran and delivered `events` that had not come live.
pub fn gap_filled(events: usize) {
    counter!(GAP_FILLS).increment(1);
    counter!(GAP_FILLED).increment(events as u64);
}

pub fn set_cluster_nodes(nodes: usize) {
    gauge!(CLUSTER_NODES).set(nodes as f64);
}

/// Counter handles of the location path, looked up once: the registry
/// lookup per increment shows in profiles at tens of thousands a second.
struct HotCounters {
    received: Counter,
    accepted: Counter,
    client_ok: Counter,
    fanout: Counter,
    location_emits: Counter,
}

fn hot() -> &'static HotCounters {
    static HOT: OnceLock<HotCounters> = OnceLock::new();
    HOT.get_or_init(|| HotCounters {
        received: counter!(LOCATION_UPDATES, "outcome" => LocationOutcome::Received.as_str()),
        accepted: counter!(LOCATION_UPDATES, "outcome" => LocationOutcome::Accepted.as_str()),
        client_ok: counter!(
            CLIENT_EVENTS,
            "event" => ClientEvent::DriverLocationUpdate.as_str(),
            "outcome" => ClientEventOutcome::Ok.as_str()
        ),
        fanout: counter!(LOCATION_FANOUT),
        location_emits: counter!(EMITS, "event" => ServerEvent::OrderDriverLocation.as_str()),
    })
}

pub fn location_received() {
    hot().received.increment(1);
}

/// An accepted update and its emits to `fanout` order rooms.
pub fn location_accepted(fanout: usize) {
    let hot = hot();
    hot.accepted.increment(1);
    hot.client_ok.increment(1);
    hot.fanout.increment(fanout as u64);
    hot.location_emits.increment(fanout as u64);
}

pub fn location_rejected(reason: Reject) {
    let outcome = if reason == Reject::RateLimited {
        ClientEventOutcome::RateLimited
    } else {
        ClientEventOutcome::Rejected
    };
    client_event(ClientEvent::DriverLocationUpdate, outcome);
    counter!(LOCATION_UPDATES, "outcome" => LocationOutcome::Rejected.as_str()).increment(1);
    counter!(LOCATION_REJECTED, "reason" => reason.as_str()).increment(1);
}

pub fn location_flush(drivers: usize, seconds: f64) {
    histogram!(LOCATION_FLUSH_SIZE).record(drivers as f64);
    histogram!(LOCATION_FLUSH_SECONDS).record(seconds);
}

pub fn store_error(op: StoreOp) {
    counter!(STORE_ERRORS, "op" => op.as_str()).increment(1);
}

/// The `type` label of an entry whose type is missing or not the contract's.
const UNKNOWN_TYPE: &str = "unknown";
/// The `reason` label of an entry dead-lettered after too many deliveries.
const MAX_DELIVERIES: &str = "max_deliveries";

/// The `reason` label of an `order.created` refused for an order that is
/// active with another customer or store.
const ORDER_EXISTS: &str = "order_exists";

/// The `reason` label of a `chat.message` for an order that is not active.
const ORDER_NOT_ACTIVE: &str = "order_not_active";

/// The `type` label of a stream entry: a known kind, or `unknown`.
pub fn entry_type(kind: Option<&[u8]>) -> &'static str {
    kind.and_then(|k| std::str::from_utf8(k).ok())
        .and_then(EventKind::parse)
        .map_or(UNKNOWN_TYPE, EventKind::as_str)
}

pub fn stream_consumed(kind: &'static str) {
    counter!(STREAM_CONSUMED, "type" => kind).increment(1);
}

pub fn stream_acked(kind: &'static str) {
    counter!(STREAM_ACKED, "type" => kind).increment(1);
}

pub fn stream_retried(kind: &'static str) {
    counter!(STREAM_RETRIES, "type" => kind).increment(1);
}

/// An entry refused for `reason` went to the dead letters.
pub fn stream_dead_lettered(kind: &'static str, reason: DecodeReason) {
    counter!(STREAM_DEAD_LETTERED, "type" => kind, "reason" => reason.as_str()).increment(1);
}

/// An entry delivered too often went to the dead letters (its type unread).
pub fn stream_dead_lettered_after_max_deliveries() {
    counter!(STREAM_DEAD_LETTERED, "type" => UNKNOWN_TYPE, "reason" => MAX_DELIVERIES).increment(1);
}

/// An `order.created` for an order active with other parties went to the
/// dead letters.
/// The entries whose handling can find them superseded (they write order state).
const SUPERSEDABLE: [EventKind; 3] = [
    EventKind::OrderCreated,
    EventKind::OrderStatus,
    EventKind::OrderAssigned,
];

/// An entry handled again after later entries of its order (or the
/// order's end) were applied: it wrote and emitted nothing.
pub fn stream_superseded(kind: EventKind) {
    counter!(STREAM_SUPERSEDED, "type" => kind.as_str()).increment(1);
}

pub fn stream_dead_lettered_order_exists() {
    counter!(STREAM_DEAD_LETTERED, "type" => EventKind::OrderCreated.as_str(), "reason" => ORDER_EXISTS)
        .increment(1);
}

pub fn stream_dead_lettered_chat_order_not_active() {
    counter!(STREAM_DEAD_LETTERED, "type" => EventKind::ChatMessage.as_str(), "reason" => ORDER_NOT_ACTIVE)
        .increment(1);
}

pub fn stream_claimed(n: usize) {
    counter!(STREAM_CLAIMED).increment(n as u64);
}

pub fn set_stream_stats(lag: Option<u64>, pending: u64, oldest_pending_s: f64) {
    if let Some(lag) = lag {
        gauge!(STREAM_LAG).set(lag as f64);
    }
    gauge!(STREAM_PENDING).set(pending as f64);
    gauge!(STREAM_OLDEST_PENDING).set(oldest_pending_s);
}

pub fn set_in_flight(n: usize) {
    gauge!(STREAM_IN_FLIGHT).set(n as f64);
}

pub fn order_waited(seconds: f64) {
    histogram!(ORDER_WAIT).record(seconds);
}

pub fn stream_stage(stage: StreamStage, seconds: f64) {
    histogram!(STREAM_STAGE, "stage" => stage.as_str()).record(seconds);
}

pub fn ack_outcome(event: ServerEvent, outcome: OutcomeKind, latency_s: Option<f64>) {
    counter!(ACK_OUTCOMES, "event" => event.as_str(), "outcome" => outcome.as_str()).increment(1);
    if let Some(latency) = latency_s {
        histogram!(ACK_LATENCY, "event" => event.as_str()).record(latency);
    }
}

pub fn event_published(kind: EventKind) {
    counter!(EVENTS_PUBLISHED, "type" => kind.as_str()).increment(1);
}

/// A publish request whose `Idempotency-Key` was used before.
pub fn idempotent_request(outcome: IdempotentOutcome) {
    counter!(API_IDEMPOTENT, "outcome" => outcome.as_str()).increment(1);
}

pub fn publish_rejected(reason: PublishRejection) {
    counter!(PUBLISH_REJECTED, "reason" => reason.as_str()).increment(1);
}

pub fn handshake_rejected(rejection: Rejection) {
    counter!(HANDSHAKE_REJECTIONS, "reason" => rejection.reason()).increment(1);
}

pub fn connected(role: Role) {
    counter!(CONNECTS, "role" => role.as_str()).increment(1);
}

pub fn disconnected(role: Role, reason: DisconnectReason) {
    counter!(DISCONNECTS, "role" => role.as_str(), "reason" => reason.as_str()).increment(1);
}

pub fn adapter_message(direction: AdapterDirection) {
    counter!(ADAPTER_MESSAGES, "direction" => direction.as_str()).increment(1);
}

pub fn adapter_messages(direction: AdapterDirection, count: usize) {
    counter!(ADAPTER_MESSAGES, "direction" => direction.as_str()).increment(count as u64);
}

pub fn adapter_error(op: AdapterOp) {
    counter!(ADAPTER_ERRORS, "op" => op.as_str()).increment(1);
}

/// Connected sockets per role and transport, counted at scrape time so the
/// gauge can never drift from the truth (a polling socket that upgrades
/// moves to `websocket` by itself).
pub fn set_connected_sockets(counts: &[(Role, Transport, usize)]) {
    for role in Role::ALL {
        for transport in Transport::ALL {
            let n = counts
                .iter()
                .filter(|(r, t, _)| *r == role && *t == transport)
                .map(|(_, _, n)| *n)
                .sum::<usize>();
            gauge!(CONNECTED_SOCKETS, "role" => role.as_str(), "transport" => transport.as_str())
                .set(n as f64);
        }
    }
}

pub fn set_health(ready: bool, store_up: bool, consumer_running: bool) {
    gauge!(READY).set(f64::from(u8::from(ready)));
    gauge!(STORE_UP).set(f64::from(u8::from(store_up)));
    gauge!(CONSUMER_RUNNING).set(f64::from(u8::from(consumer_running)));
}

/// Presence transitions this node made (each is made by one node only).
pub fn presence_changes(changes: &[PresenceChange]) {
    for change in changes {
        let online = if change.online { "true" } else { "false" };
        counter!(PRESENCE_CHANGES, "kind" => change.who.kind.as_str(), "online" => online)
            .increment(1);
    }
}

/// The cluster-wide online totals, as the last sweep saw them.
pub fn set_presence_online(stores: u64, drivers: u64) {
    gauge!(PRESENCE_ONLINE, "kind" => PresenceKind::Store.as_str()).set(stores as f64);
    gauge!(PRESENCE_ONLINE, "kind" => PresenceKind::Driver.as_str()).set(drivers as f64);
}

/// A `GET /api/presence` refused.
pub fn presence_query_rejected(reason: PresenceQueryRejection) {
    counter!(PRESENCE_QUERIES_REJECTED, "reason" => reason.as_str()).increment(1);
}
