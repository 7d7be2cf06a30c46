//! Per-room channels on Redis pub/sub, `{prefix}room:{room}`, through the
//! adapter's [`PubSubDriver`] (its connection reconnects and resubscribes by
//! itself). A channel name carries no hash tag: on a cluster, rooms spread
//! over the shards.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::pubsub::PubSubDriver;
use crate::engine::{RoomChannels, RoomFeed, StoreError, StoreResult};

/// Messages waiting for this node's delivery loop: about a second of a busy
/// node's location traffic. A full buffer drops and reports a loss.
const FEED: usize = 65_536;

/// Channels per SUBSCRIBE or UNSUBSCRIBE command.
const CHUNK: usize = 512;

#[derive(Clone)]
pub struct RedisRooms {
    driver: PubSubDriver,
    /// `{prefix}room:`
    channel_prefix: Arc<str>,
    tx: mpsc::Sender<(String, Vec<u8>)>,
    feed: Arc<Mutex<Option<RoomFeed>>>,
}

impl RedisRooms {
    pub fn new(driver: PubSubDriver, prefix: &str) -> Self {
        let (tx, rx) = mpsc::channel(FEED);
        Self {
            driver,
            channel_prefix: format!("{prefix}room:").into(),
            tx,
            feed: Arc::new(Mutex::new(Some(rx))),
        }
    }

    /// `{prefix}room:{room}`: also published to from the history's script.
    pub(super) fn channel(&self, room: &str) -> String {
        format!("{}{room}", self.channel_prefix)
    }

    fn channels(&self, rooms: &[String]) -> Vec<String> {
        rooms.iter().map(|r| self.channel(r)).collect()
    }
}

impl RoomChannels for RedisRooms {
    fn take_feed(&self) -> Option<RoomFeed> {
        self.feed.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn room_of<'a>(&self, channel: &'a str) -> &'a str {
        channel
            .strip_prefix(&*self.channel_prefix)
            .unwrap_or(channel)
    }

    async fn subscribe(&self, rooms: &[String]) -> StoreResult<()> {
        for chunk in self.channels(rooms).chunks(CHUNK) {
            self.driver
                .subscribe_into(chunk, &self.tx)
                .await
                .map_err(StoreError::from)?;
        }
        Ok(())
    }

    async fn unsubscribe(&self, rooms: &[String]) -> StoreResult<()> {
        for chunk in self.channels(rooms).chunks(CHUNK) {
            self.driver
                .unsubscribe_many(chunk)
                .await
                .map_err(StoreError::from)?;
        }
        Ok(())
    }

    async fn publish(&self, messages: Vec<(String, Vec<u8>)>) -> StoreResult<()> {
        let messages = messages
            .into_iter()
            .map(|(room, payload)| (self.channel(&room), payload))
            .collect();
        self.driver
            .publish_many(messages)
            .await
            .map_err(StoreError::from)
    }

    fn losses(&self) -> watch::Receiver<u64> {
        self.driver.losses()
    }
}
