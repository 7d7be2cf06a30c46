//! Room channels in process: what is published to a subscribed room comes
//! back on this node's own feed, as it would from Redis.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use tokio::sync::{mpsc, watch};

use crate::engine::{RoomChannels, RoomFeed, StoreResult};

/// Messages waiting for the delivery loop.
const FEED: usize = 65_536;

#[derive(Clone)]
pub struct MemoryRooms {
    inner: Arc<Inner>,
}

struct Inner {
    subscribed: Mutex<HashSet<String>>,
    tx: mpsc::Sender<(String, Vec<u8>)>,
    feed: Mutex<Option<RoomFeed>>,
    /// Nothing is ever lost in process: it never changes.
    losses: watch::Sender<u64>,
}

impl Default for MemoryRooms {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(FEED);
        Self {
            inner: Arc::new(Inner {
                subscribed: Mutex::default(),
                tx,
                feed: Mutex::new(Some(rx)),
                losses: watch::Sender::new(0),
            }),
        }
    }
}

impl MemoryRooms {
    /// Puts each message of a subscribed room on the feed, at once and in
    /// this order.
    pub fn send(&self, messages: Vec<(String, Vec<u8>)>) {
        let subscribed = self
            .inner
            .subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (room, payload) in messages {
            if !subscribed.contains(&room) {
                continue;
            }
            if self.inner.tx.try_send((room, payload)).is_err() {
                crate::metrics::adapter_error(crate::metrics::AdapterOp::BufferFull);
                tracing::warn!("room feed full: message dropped");
                self.inner.losses.send_modify(|n| *n += 1);
            }
        }
    }
}

impl RoomChannels for MemoryRooms {
    fn take_feed(&self) -> Option<RoomFeed> {
        self.inner
            .feed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn room_of<'a>(&self, channel: &'a str) -> &'a str {
        channel
    }

    async fn subscribe(&self, rooms: &[String]) -> StoreResult<()> {
        let mut subscribed = self
            .inner
            .subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        subscribed.extend(rooms.iter().cloned());
        Ok(())
    }

    async fn unsubscribe(&self, rooms: &[String]) -> StoreResult<()> {
        let mut subscribed = self
            .inner
            .subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for room in rooms {
            subscribed.remove(room);
        }
        Ok(())
    }

    async fn publish(&self, messages: Vec<(String, Vec<u8>)>) -> StoreResult<()> {
        self.send(messages);
        Ok(())
    }

    fn losses(&self) -> watch::Receiver<u64> {
        self.inner.losses.subscribe()
    }
}
