//! Order chats, in process: the same rules as on Redis (see `ChatLog`).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard},
};

use crate::{
    engine::{
        StoreResult,
        traits::{
            CHAT_TTL_ACTIVE, CHAT_TTL_AFTER_END, ChatAppend, ChatLog, ChatParties, ChatRecord,
            cmp_offsets,
        },
    },
    events::{Timestamp, now_ms},
};

/// What embedded mode keeps of the backend's `{prefix}chat` feed (nobody
/// reads it out of process; tests and the log do).
const FEED_MAX: usize = 10_000;

#[derive(Default)]
struct Log {
    /// (event_id, message JSON), oldest first.
    messages: VecDeque<(String, String)>,
    /// The newest id ever logged, also once trimmed away.
    last: Option<String>,
    parties: Option<ChatParties>,
    expires_at: Timestamp,
}

#[derive(Default)]
struct State {
    logs: HashMap<String, Log>,
    feed: VecDeque<ChatRecord>,
}

#[derive(Default)]
pub struct MemoryChat {
    state: Mutex<State>,
}

impl MemoryChat {
    fn state(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        state.logs.retain(|_, log| log.expires_at > now);
        state
    }

    /// The `{prefix}chat` entries appended in this process, oldest first.
    pub fn feed(&self) -> Vec<ChatRecord> {
        self.state().feed.iter().cloned().collect()
    }
}

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

impl ChatLog for MemoryChat {
    async fn append(
        &self,
        record: &ChatRecord,
        keep: usize,
        active: bool,
    ) -> StoreResult<ChatAppend> {
        let mut state = self.state();
        if let Some(log) = state.logs.get(&record.order_id)
            && let Some(last) = &log.last
        {
            match cmp_offsets(&record.event_id, last) {
                std::cmp::Ordering::Equal => return Ok(ChatAppend::RepeatNewest),
                std::cmp::Ordering::Less => return Ok(ChatAppend::RepeatOlder),
                std::cmp::Ordering::Greater => {}
            }
        }
        if !active {
            return Ok(ChatAppend::Refused);
        }
        let log = state.logs.entry(record.order_id.clone()).or_default();
        log.messages
            .push_back((record.event_id.clone(), record.message.clone()));
        while log.messages.len() > keep {
            log.messages.pop_front();
        }
        log.last = Some(record.event_id.clone());
        log.expires_at = now_ms() + ms(CHAT_TTL_ACTIVE);
        state.feed.push_back(record.clone());
        if state.feed.len() > FEED_MAX {
            state.feed.pop_front();
        }
        Ok(ChatAppend::New)
    }

    async fn close(&self, order_id: &str, parties: &ChatParties) -> StoreResult<()> {
        let mut state = self.state();
        let log = state.logs.entry(order_id.to_owned()).or_default();
        log.parties = Some(parties.clone());
        log.expires_at = now_ms() + ms(CHAT_TTL_AFTER_END);
        Ok(())
    }

    async fn closed(&self, order_id: &str) -> StoreResult<Option<ChatParties>> {
        Ok(self
            .state()
            .logs
            .get(order_id)
            .and_then(|log| log.parties.clone()))
    }

    async fn history(
        &self,
        order_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let state = self.state();
        let Some(log) = state.logs.get(order_id) else {
            return Ok(Vec::new());
        };
        let older: Vec<&(String, String)> = log
            .messages
            .iter()
            .filter(|(id, _)| before.is_none_or(|b| cmp_offsets(id, b).is_lt()))
            .collect();
        let skip = older.len().saturating_sub(limit);
        Ok(older[skip..].iter().map(|(_, m)| m.clone()).collect())
    }
}
