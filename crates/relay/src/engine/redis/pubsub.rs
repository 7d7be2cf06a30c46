//! The socketioxide-redis [`Driver`] this relay uses instead of the stock
//! one. The stock driver holds a `MultiplexedConnection` that never
//! reconnects nor resubscribes: after a Redis restart the nodes silently stop
//! hearing each other for good. This one sits on a [`ConnectionManager`],
//! which reconnects by itself and, with automatic resubscription, restores
//! every channel the adapter listens on.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, RwLock},
};

use redis::{PushInfo, PushKind, Value};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{mpsc, watch};

use super::link::Link;
use crate::metrics::{self, AdapterDirection, AdapterOp};

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

#[derive(Clone)]
pub struct PubSubDriver {
    conn: Link,
    handlers: Handlers,
    /// Bumped whenever messages may have been lost (see [`Self::losses`]).
    losses: Arc<watch::Sender<u64>>,
}

impl PubSubDriver {
    /// Builds the driver without touching the network: the connection is made
    /// on first use and remade whenever it drops.
    pub fn new(
        client: redis::Client,
        config: redis::aio::ConnectionManagerConfig,
    ) -> redis::RedisResult<Self> {
        let handlers: Handlers = Arc::default();
        let losses = Arc::new(watch::Sender::new(0));
        let route = {
            let (handlers, losses) = (handlers.clone(), losses.clone());
            move |push: PushInfo| {
                route_push(push, &handlers, &losses);
                Ok::<(), Infallible>(())
            }
        };
        let config = config.set_push_sender(route).set_automatic_resubscription();
        let conn = Link::new(client, config)?;
        Ok(Self {
            conn,
            handlers,
            losses,
        })
    }

    /// Changes whenever a message may have been lost: the connection
    /// dropped (what was published until it is back is gone), it was
    /// redialed, or an inbound buffer was full.
    pub fn losses(&self) -> watch::Receiver<u64> {
        self.losses.subscribe()
    }

    /// Subscribes to many channels in one command, all into `tx`.
    pub async fn subscribe_into(
        &self,
        chans: &[String],
        tx: &mpsc::Sender<ChanItem>,
    ) -> Result<(), PubSubError> {
        if chans.is_empty() {
            return Ok(());
        }
        {
            let mut handlers = self.write_handlers();
            for chan in chans {
                handlers.insert(chan.clone(), tx.clone());
            }
        }
        if let Err(e) = self.conn.manager().subscribe(chans).await {
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
        }
        self.conn.manager().unsubscribe(chans).await?;
        Ok(())
    }

    /// Publishes each payload to its channel, in order, in one pipeline.
    pub async fn publish_many(&self, items: Vec<(String, Vec<u8>)>) -> Result<(), PubSubError> {
        if items.is_empty() {
            return Ok(());
        }
        let count = items.len();
        let mut pipe = redis::pipe();
        for (chan, val) in items {
            pipe.cmd("PUBLISH").arg(chan).arg(val).ignore();
        }
        let mut conn = self.conn.clone();
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => {
                for _ in 0..count {
                    metrics::adapter_message(AdapterDirection::Publish);
                }
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
        let mut conn = self.conn.manager();
        for chan in channels {
            conn.subscribe(&chan).await?;
        }
        Ok(())
    }
}

fn route_push(push: PushInfo, handlers: &Handlers, losses: &watch::Sender<u64>) {
    if matches!(push.kind, PushKind::Disconnection) {
        losses.send_modify(|n| *n += 1);
        return;
    }
    if !matches!(push.kind, PushKind::Message) || push.data.len() < 2 {
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
        let res: redis::RedisResult<Value> = redis::cmd("PUBLISH")
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
        if let Err(e) = self.conn.manager().subscribe(&chan).await {
            self.write_handlers().remove(&chan);
            metrics::adapter_error(AdapterOp::Subscribe);
            return Err(e.into());
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.write_handlers().remove(&chan);
        self.conn.manager().unsubscribe(chan).await?;
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let mut conn = self.conn.clone();
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut conn)
            .await?;
        Ok(count)
    }
}

impl PubSubDriver {
    fn write_handlers(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, mpsc::Sender<ChanItem>>> {
        self.handlers.write().unwrap_or_else(|e| e.into_inner())
    }
}
