//! The bounded label sets that only metrics use, each spelled once. Their
//! values are exported as they are: docs/metrics.md, grafana/ and
//! prometheus/ match on them.

macro_rules! label_set {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $value:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$(Self::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value,)+
                }
            }
        }
    };
}

label_set! {
    /// The `op` of `relay_store_errors_total`: which store operation failed.
    StoreOp {
        Ack => "ack",
        History => "history",
        HistoryRead => "history_read",
        Advance => "advance",
        WaitTurn => "wait_turn",
        Append => "append",
        AppendOutcome => "append_outcome",
        Claim => "claim",
        ConnectOrders => "connect_orders",
        KeepAlive => "keep_alive",
        Sessions => "sessions",
        LocationPrune => "location_prune",
        LocationWrite => "location_write",
        StreamRead => "stream_read",
        Subscribe => "subscribe",
        DeadLetter => "dead_letter",
        /// Reading a merchant's watched orders when a refresh drops a store.
        Refresh => "refresh",
        /// Reading an order or its chat for a `chat:*` event.
        Chat => "chat",
        /// Writing this node's presence counts, or a presence sweep.
        Presence => "presence",
    }
}

label_set! {
    /// The `stage` of `relay_stream_stage_seconds`: the Redis round trips
    /// that handling a stream entry takes, in the order they come
    /// (docs/design.md, "The event stream").
    StreamStage {
        /// The read script (XREADGROUP and the order queues), once per read.
        Read => "read",
        /// The order store's write of `order.created`, `order.status` or
        /// `order.assigned`.
        Store => "store",
        /// Recording an event in the history and publishing it to its rooms.
        Record => "record",
        /// Taking the entry off its order's queue.
        Advance => "advance",
        /// The XACK.
        Ack => "ack",
    }
}

label_set! {
    /// The `reason` of `relay_presence_queries_rejected_total`: why a
    /// `GET /api/presence` was refused.
    PresenceQueryRejection {
        Unauthorized => "unauthorized",
        /// A parameter other than `store_id` and `driver_id`, an empty or
        /// over-long id, or no id at all (400).
        BadQuery => "bad_query",
        /// More than 1000 ids (400).
        TooManyIds => "too_many_ids",
    }
}

label_set! {
    /// The `reason` of `relay_publish_rejected_total`.
    PublishRejection {
        Unauthorized => "unauthorized",
        BadBody => "bad_body",
        UnknownType => "unknown_type",
        InvalidEvent => "invalid_event",
        /// Beyond `RELAY_MAX_EVENT_BYTES` (413).
        TooLarge => "too_large",
        /// Any store failure (the response says which: 503 or 500).
        StoreUnavailable => "store_unavailable",
        /// An `Idempotency-Key` that is empty, too long or not visible ASCII.
        BadIdempotencyKey => "bad_idempotency_key",
    }
}

label_set! {
    /// The `outcome` of `relay_api_idempotent_total`: a publish request
    /// whose `Idempotency-Key` was used before (first uses are not counted here).
    IdempotentOutcome {
        /// Same event: answered with the first append's id, nothing appended.
        Replayed => "replayed",
        /// Another event: 409, nothing appended.
        Conflict => "conflict",
    }
}

label_set! {
    /// The `reason` of `relay_disconnects_total`, one per socketioxide reason.
    DisconnectReason {
        TransportClose => "transport_close",
        MultiplePolling => "multiple_polling",
        PacketParsing => "packet_parsing",
        TransportError => "transport_error",
        HeartbeatTimeout => "heartbeat_timeout",
        ClientDisconnect => "client_disconnect",
        ServerDisconnect => "server_disconnect",
        ClosingServer => "closing_server",
    }
}

label_set! {
    /// The `op` of `relay_adapter_errors_total`.
    AdapterOp {
        Publish => "publish",
        Subscribe => "subscribe",
        Decode => "decode",
        BufferFull => "buffer_full",
    }
}

label_set! {
    /// The `direction` of `relay_adapter_messages_total`.
    AdapterDirection {
        Publish => "publish",
        Receive => "receive",
    }
}

label_set! {
    /// The `outcome` of `relay_client_events_total`.
    ClientEventOutcome {
        Ok => "ok",
        Rejected => "rejected",
        RateLimited => "rate_limited",
        /// An event outside the protocol (its `event` label is `other`).
        Unknown => "unknown",
    }
}

label_set! {
    /// The `reason` of `relay_connections_shed_total`.
    ShedReason {
        NodeFull => "node_full",
        ConnectRate => "connect_rate",
        /// Beyond one client address's share (`RELAY_MAX_NEW_CONNECTIONS_PER_ADDR_PER_S`).
        AddrRate => "addr_rate",
        NotReady => "not_ready",
    }
}

label_set! {
    /// The `result` of `relay_deferred_order_joins_total`.
    DeferredJoin {
        /// Connected while its active orders could not be read.
        Deferred => "deferred",
        /// Its order rooms joined once the store answered.
        Joined => "joined",
        /// It left before the store answered.
        Abandoned => "abandoned",
    }
}

label_set! {
    /// The `result` of `relay_recoveries_total`.
    RecoveryResult {
        Recovered => "recovered",
        NotRecovered => "not_recovered",
    }
}

label_set! {
    /// The `transport` of `relay_connected_sockets`.
    Transport {
        Websocket => "websocket",
        Polling => "polling",
    }
}

label_set! {
    /// The `outcome` of `relay_location_updates_total`.
    LocationOutcome {
        Received => "received",
        Accepted => "accepted",
        Rejected => "rejected",
    }
}

label_set! {
    /// The `outcome` of `relay_token_refreshes_total`: what came of an
    /// `auth:refresh`. A refused token is counted by its handshake reason.
    RefreshOutcome {
        Ok => "ok",
        MissingToken => "missing_token",
        InvalidToken => "invalid_token",
        TokenExpired => "token_expired",
        RoleNotAllowed => "role_not_allowed",
        InvalidClaims => "invalid_claims",
        /// A valid token of another user, or of the same user in another role.
        OtherUser => "other_user",
        /// The socket's event budget was spent; the token was not looked at.
        RateLimited => "rate_limited",
    }
}

label_set! {
    /// The `outcome` of `relay_chat_messages_total`: what came of a
    /// `chat:send` (the `chat:send` ack's error, as a label).
    ChatOutcome {
        /// Appended to the event stream; the ack carries its `event_id`.
        Sent => "sent",
        NotAllowed => "not_allowed",
        OrderNotActive => "order_not_active",
        Invalid => "invalid",
        RateLimited => "rate_limited",
        /// The store could not take it (`temporarily unavailable`).
        Unavailable => "unavailable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exported values, as docs/metrics.md lists them.
    #[test]
    fn values_are_the_exported_ones() {
        let ops: Vec<_> = StoreOp::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            ops,
            [
                "ack",
                "history",
                "history_read",
                "advance",
                "wait_turn",
                "append",
                "append_outcome",
                "claim",
                "connect_orders",
                "keep_alive",
                "sessions",
                "location_prune",
                "location_write",
                "stream_read",
                "subscribe",
                "dead_letter",
                "refresh",
                "chat",
                "presence",
            ]
        );
        assert_eq!(
            ShedReason::ALL.map(ShedReason::as_str),
            ["node_full", "connect_rate", "addr_rate", "not_ready"]
        );
        assert_eq!(
            ClientEventOutcome::ALL.map(ClientEventOutcome::as_str),
            ["ok", "rejected", "rate_limited", "unknown"]
        );
        assert_eq!(
            ChatOutcome::ALL.map(ChatOutcome::as_str),
            [
                "sent",
                "not_allowed",
                "order_not_active",
                "invalid",
                "rate_limited",
                "unavailable"
            ]
        );
        assert_eq!(
            RefreshOutcome::ALL.map(RefreshOutcome::as_str),
            [
                "ok",
                "missing_token",
                "invalid_token",
                "token_expired",
                "role_not_allowed",
                "invalid_claims",
                "other_user",
                "rate_limited"
            ]
        );
        assert_eq!(DisconnectReason::ALL.len(), 8);
        assert_eq!(PublishRejection::ALL.len(), 7);
    }
}

label_set! {
    /// The `reason` of `relay_http_connections_closed_total`: why the node
    /// closed an HTTP connection that was not (yet) a session.
    HttpCloseReason {
        HeaderTimeout => "header_timeout",
        IdleTimeout => "idle_timeout",
        PendingFull => "pending_full",
    }
}

label_set! {
    /// The `reason` of `relay_redis_cluster_resent_total`: why a command of
    /// a per-node pipeline did not run on the node it was sent to, and went
    /// again through the cluster connection.
    ResendReason {
        /// MOVED: the slot has another owner now.
        Moved => "moved",
        /// ASK: the slot is migrating and the key is on the target already.
        Ask => "ask",
        /// NOSCRIPT: the node lacks the script (a failover, SCRIPT FLUSH).
        NoScript => "noscript",
        /// TRYAGAIN, CLUSTERDOWN, LOADING, MASTERDOWN or READONLY.
        Busy => "busy",
        /// No known owner of the slot, or its node could not be dialed:
        /// nothing was sent to it.
        Unrouted => "unrouted",
    }
}

label_set! {
    /// The `cause` of `relay_redis_connect_errors_total`: why Redis could
    /// not be used. Only `unreachable` passes by itself; the others wait for
    /// an operator.
    RedisFailure {
        /// The server's certificate does not verify, or the server refused ours.
        Tls => "tls",
        /// A wrong user name or password (WRONGPASS, NOAUTH).
        Auth => "auth",
        /// The ACL user lacks a command, key or channel the relay needs (NOPERM).
        Permission => "permission",
        /// Refused, reset, timed out, or anything else on the way.
        Unreachable => "unreachable",
    }
}
