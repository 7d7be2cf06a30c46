//! The socketioxide-redis [`Driver`] this relay uses instead of the stock
//! one. The stock driver holds a `MultiplexedConnection` that never
//! reconnects nor resubscribes: after a Redis restart the nodes silently stop
//! hearing each other for good. This one sits on a [`Link`]: on one server a
//! `ConnectionManager`, which reconnects by itself and, with automatic
//! resubscription, restores every channel the adapter listens on; on a
//! Redis Cluster a cluster connection speaking sharded pub/sub (SPUBLISH,
//! SSUBSCRIBE, PUBSUB SHARDNUMSUB), whose subscription tracker subscribes
//! each channel again on the shard that owns it after a reconnect, a
//! failover or a slot move. Every publish and subscribe of the relay goes
//! through here, so that a channel works the same on both.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use redis::{
    PushInfo, PushKind, Value,
    aio::{AsyncPushSender, SendError},
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr},
};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::link::{Conn, Link};
use crate::metrics::{self, AdapterDirection, AdapterOp};
use crate::sparse::ShrinkWhenSparse;

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

#[derive(Clone)]
pub struct PubSubDriver {
    conn: Link,
    handlers: Handlers,
    /// Sharded channels to subscribe again ([`Self::follow_moves`]). Behind
    /// an async lock so that the task survives its own restart: the queue
    /// outlives a panic of the task that drains it.
    moved: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>>,
    /// Bumped whenever messages may have been lost (see [`Self::losses`]).
    losses: Arc<watch::Sender<u64>>,
}

/// Hands each pushed message to the subscriber of its channel; given to
/// the connection as its push sender.
pub struct PushRouter {
    handlers: Handlers,
    losses: Arc<watch::Sender<u64>>,
    /// Sharded channels the server dropped while we still listen on them.
    dropped: mpsc::UnboundedSender<String>,
}

impl AsyncPushSender for PushRouter {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        if info.kind == PushKind::SUnsubscribe {
            self.dropped_by_server(&info);
        } else {
            route_push(info, &self.handlers, &self.losses);
        }
        Ok(())
    }
}

impl PushRouter {
    /// When its slot moves to another shard, Redis drops a sharded channel's
    /// subscribers with an SUNSUBSCRIBE push of its own. A channel this node
    /// still has a subscriber for is subscribed again (on the slot's new
    /// owner); one it unsubscribed itself has no subscriber any more.
    fn dropped_by_server(&self, info: &PushInfo) {
        let Some(Value::BulkString(chan)) = info.data.first() else {
            return;
        };
        let Ok(chan) = std::str::from_utf8(chan) else {
            return;
        };
        let listening = self
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(chan);
        if listening {
            let _ = self.dropped.send(chan.to_owned());
        }
    }
}

/// How long a channel whose slot is moving waits between tries.
const RESUBSCRIBE_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

impl PubSubDriver {
    /// Builds the driver without touching the network: `connect` makes a
    /// lazy RESP3 link whose pushes go to the router it is given. Channels
    /// whose slot moved are subscribed again by [`Self::follow_moves`],
    /// which the engine runs on the node's task tracker.
    pub fn new(
        connect: impl FnOnce(PushRouter) -> redis::RedisResult<Link>,
    ) -> redis::RedisResult<Self> {
        let handlers: Handlers = Arc::default();
        let losses = Arc::new(watch::Sender::new(0));
        let (dropped, moved) = mpsc::unbounded_channel::<String>();
        let conn = connect(PushRouter {
            handlers: handlers.clone(),
            losses: losses.clone(),
            dropped,
        })?;
        Ok(Self {
            conn,
            handlers,
            moved: Arc::new(tokio::sync::Mutex::new(moved)),
            losses,
        })
    }

    /// Subscribes again, one after the other, the sharded channels Redis
    /// dropped when their slot moved, until `stop`. A restarted run picks
    /// up the queue where the last one left it (the channel being
    /// subscribed when a panic struck is subscribed again by the next
    /// move, or stays deaf: the supervision counts and logs the panic).
    pub async fn follow_moves(&self, stop: CancellationToken) {
        let mut moved = self.moved.lock().await;
        loop {
            let chan = tokio::select! {
                () = stop.cancelled() => return,
                chan = moved.recv() => chan,
            };
            let Some(chan) = chan else { return };
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.subscribe_again(&chan) => {}
            }
        }
    }

    /// Until it works (the slot's new owner may not serve it yet) or
    /// nobody listens on `chan` any more.
    async fn subscribe_again(&self, chan: &str) {
        let listening = || {
            self.handlers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(chan)
        };
        while listening() {
            match self.conn.subscribe(chan).await {
                Ok(()) => {
                    tracing::info!(channel = chan, "sharded channel moved: subscribed again");
                    return;
                }
                Err(e) => {
                    metrics::adapter_error(AdapterOp::Subscribe);
                    tracing::debug!(channel = chan, error = %e, "subscribing again failed");
                    tokio::time::sleep(RESUBSCRIBE_RETRY).await;
                }
            }
        }
    }

    /// Changes whenever a message may have been lost: the connection
    /// dropped (what was published until it is back is gone), it was
    /// redialed, or an inbound buffer was full.
    pub fn losses(&self) -> watch::Receiver<u64> {
        self.losses.subscribe()
    }

    /// Subscribes to many channels, all into `tx`.
    pub async fn subscribe_into(
        &self,
        chans: &[String],
        tx: &mpsc::Sender<ChanItem>,
    ) -> Result<(), PubSubError> {
        if chans.is_empty() {
            return Ok(());
        }
        {
            // Registered before SUBSCRIBE so the first message cannot outrun it.
            let mut handlers = self.write_handlers();
            for chan in chans {
                handlers.insert(chan.clone(), tx.clone());
            }
        }
        if let Err(e) = self.conn.subscribe_many(chans).await {
            metrics::adapter_error(AdapterOp::Subscribe);
            return Err(e.into());
        }
        Ok(())
    }

    pub async fn unsubscribe_many(&self, chans: &[String]) -> Result<(), PubSubError> {
        if chans.is_empty() {
            return Ok(());
        }
        {
            let mut handlers = self.write_handlers();
            for chan in chans {
                handlers.remove(chan);
            }
            handlers.shrink_when_sparse();
        }
        self.conn.unsubscribe_many(chans).await?;
        Ok(())
    }

    /// Publishes each payload to its channel, in one pipeline; the payloads
    /// of one channel in their order.
    pub async fn publish_many(&self, items: Vec<(String, Vec<u8>)>) -> Result<(), PubSubError> {
        if items.is_empty() {
            return Ok(());
        }
        let count = items.len();
        let publish = if self.conn.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut pipe = redis::pipe();
        for (chan, val) in items {
            pipe.cmd(publish).arg(chan).arg(val).ignore();
        }
        let mut conn = self.conn.clone();
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => {
                metrics::adapter_messages(AdapterDirection::Publish, count);
                Ok(())
            }
            Err(e) => {
                metrics::adapter_error(AdapterOp::Publish);
                Err(e.into())
            }
        }
    }

    /// Drops the connection for a fresh one and subscribes it to every
    /// channel the old one listened on (the manager's own resubscription
    /// only covers its reconnects, not a new manager).
    pub async fn redial(&self) -> Result<(), PubSubError> {
        self.conn.redial()?;
        self.losses.send_modify(|n| *n += 1);
        let channels: Vec<String> = self
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for chan in channels {
            self.conn.subscribe(&chan).await?;
        }
        Ok(())
    }
}

fn route_push(push: PushInfo, handlers: &Handlers, losses: &watch::Sender<u64>) {
    if matches!(push.kind, PushKind::Disconnection) {
        losses.send_modify(|n| *n += 1);
        return;
    }
    if !matches!(push.kind, PushKind::Message | PushKind::SMessage) || push.data.len() < 2 {
        return;
    }
    let mut data = push.data.into_iter();
    let (Some(Value::BulkString(chan)), Some(Value::BulkString(payload))) =
        (data.next(), data.next())
    else {
        metrics::adapter_error(AdapterOp::Decode);
        return;
    };
    let Ok(chan) = String::from_utf8(chan) else {
        metrics::adapter_error(AdapterOp::Decode);
        return;
    };
    metrics::adapter_message(AdapterDirection::Receive);
    let handlers = handlers.read().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = handlers.get(&chan) {
        // Never block the connection's reader: a full buffer drops, visibly.
        if tx.try_send((chan, payload)).is_err() {
            metrics::adapter_error(AdapterOp::BufferFull);
            tracing::warn!("adapter inbound buffer full, message dropped");
            losses.send_modify(|n| *n += 1);
        }
    }
}

/// The count of a one-channel NUMSUB reply: `[channel, n]` (RESP2) or
/// `{channel: n}` (RESP3).
fn subscriber_count(reply: Value) -> u16 {
    let count = match reply {
        Value::Array(items) => items.into_iter().nth(1),
        Value::Map(pairs) => pairs.into_iter().next().map(|(_, v)| v),
        _ => None,
    };
    match count {
        Some(Value::Int(n)) => u16::try_from(n).unwrap_or(u16::MAX),
        _ => 0,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("redis pub/sub: {0}")]
pub struct PubSubError(#[from] redis::RedisError);

impl PubSubError {
    pub fn redis(&self) -> &redis::RedisError {
        &self.0
    }
}

impl From<PubSubError> for crate::engine::StoreError {
    fn from(PubSubError(e): PubSubError) -> Self {
        e.into()
    }
}

impl Driver for PubSubDriver {
    type Error = PubSubError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        let mut conn = self.conn.clone();
        let publish = if conn.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let res: redis::RedisResult<Value> = redis::cmd(publish)
            .arg(chan)
            .arg(val)
            .query_async(&mut conn)
            .await;
        match res {
            Ok(_) => {
                metrics::adapter_message(AdapterDirection::Publish);
                Ok(())
            }
            Err(e) => {
                metrics::adapter_error(AdapterOp::Publish);
                Err(e.into())
            }
        }
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        // Registered before SUBSCRIBE so the first message cannot outrun it.
        self.write_handlers().insert(chan.clone(), tx);
        if let Err(e) = self.conn.subscribe(&chan).await {
            self.write_handlers().remove(&chan);
            metrics::adapter_error(AdapterOp::Subscribe);
            return Err(e.into());
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        {
            let mut handlers = self.write_handlers();
            handlers.remove(&chan);
            handlers.shrink_when_sparse();
        }
        self.conn.unsubscribe(&chan).await?;
        Ok(())
    }

    /// Subscribers of `chan`: on a cluster asked of the shard that owns the
    /// channel's slot, the only node whose count is not zero.
    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let reply = match self.conn.conn() {
            Conn::Server(mut c) => {
                redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(chan)
                    .query_async(&mut c)
                    .await?
            }
            Conn::Cluster(mut c) => {
                let mut cmd = redis::cmd("PUBSUB");
                cmd.arg("SHARDNUMSUB").arg(chan);
                let owner = Route::with_key(chan, SlotAddr::Master);
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(owner)),
                )
                .await?
            }
        };
        Ok(subscriber_count(reply))
    }
}

impl PubSubDriver {
    fn write_handlers(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, mpsc::Sender<ChanItem>>> {
        self.handlers.write().unwrap_or_else(|e| e.into_inner())
    }
}
