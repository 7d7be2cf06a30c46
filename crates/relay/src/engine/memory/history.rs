//! The recovery history in process, with the Redis history's semantics:
//! per room, the last `size` events of at most `ttl`; one publishing order.

use std::{
    cmp::Ordering,
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use super::rooms::MemoryRooms;
use crate::{
    engine::{
        History, Missed, Recorded, Routed, StoreResult, cmp_offsets, in_offset_order, merge_rooms,
    },
    events::now_ms,
};

pub struct MemoryHistory {
    size: usize,
    ttl_ms: u64,
    state: Mutex<State>,
    channels: MemoryRooms,
}

#[derive(Default)]
struct State {
    rooms: HashMap<String, RoomLog>,
    last: (u64, u64),
}

#[derive(Default)]
struct RoomLog {
    entries: VecDeque<Entry>,
    /// The newest offset trimmed away: nothing after it is missing.
    max_deleted: Option<String>,
    last_append_ms: u64,
}

struct Entry {
    ms: u64,
    event_id: String,
    recorded: Arc<Recorded>,
}

impl MemoryHistory {
    pub fn new(size: usize, ttl: Duration, channels: MemoryRooms) -> Self {
        Self {
            size: size.max(1),
            ttl_ms: ttl.as_millis() as u64,
            state: Mutex::default(),
            channels,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl History for MemoryHistory {
    async fn publish(
        &self,
        event: &str,
        data: &str,
        event_id: &str,
        rooms: &[String],
        then_leave: Option<&str>,
    ) -> StoreResult<String> {
        let now = now_ms();
        let mut state = self.state();
        // Offsets grow like stream ids, even if the clock steps back.
        state.last = if now > state.last.0 {
            (now, 0)
        } else {
            (state.last.0, state.last.1 + 1)
        };
        let offset = format!("{}-{}", state.last.0, state.last.1);
        let recorded = Arc::new(Recorded {
            offset: offset.clone(),
            event: event.to_owned(),
            data: data.to_owned(),
            rooms: rooms.to_vec(),
            then_leave: then_leave.map(str::to_owned),
        });
        let cutoff = now.saturating_sub(self.ttl_ms);
        let ttl_ms = self.ttl_ms;
        state
            .rooms
            .retain(|_, log| log.last_append_ms + ttl_ms > now);
        for room in rooms {
            let log = state.rooms.entry(room.clone()).or_default();
            log.entries.push_back(Entry {
                ms: now,
                event_id: event_id.to_owned(),
                recorded: recorded.clone(),
            });
            log.last_append_ms = now;
            while log.entries.len() > self.size
                || log.entries.front().is_some_and(|e| e.ms < cutoff)
            {
                if let Some(old) = log.entries.pop_front() {
                    log.max_deleted = Some(old.recorded.offset.clone());
                }
            }
        }
        let payload = Routed::Recorded((*recorded).clone()).encode();
        let messages = rooms
            .iter()
            .map(|room| (room.clone(), payload.clone()))
            .collect();
        // Still under the lock: the feed sees events in offset order.
        self.channels.send(messages);
        drop(state);
        Ok(offset)
    }

    async fn newest(&self) -> StoreResult<Option<String>> {
        let state = self.state();
        Ok((state.last != (0, 0)).then(|| format!("{}-{}", state.last.0, state.last.1)))
    }

    async fn since(&self, rooms: &[String], from_ms: u64) -> StoreResult<Vec<Recorded>> {
        let state = self.state();
        let found = rooms
            .iter()
            .filter_map(|room| Some((room, state.rooms.get(room)?)))
            .flat_map(|(room, log)| {
                log.entries
                    .iter()
                    .filter(move |e| e.ms >= from_ms)
                    .map(move |e| Recorded {
                        rooms: vec![room.clone()],
                        ..(*e.recorded).clone()
                    })
            })
            .collect();
        Ok(merge_rooms(found))
    }

    async fn missed(
        &self,
        rooms: &[String],
        last_event_id: &str,
        up_to: Option<&str>,
    ) -> StoreResult<Missed> {
        let now = now_ms();
        let state = self.state();
        let logs: Vec<&RoomLog> = rooms
            .iter()
            .filter_map(|room| state.rooms.get(room))
            .filter(|log| log.last_append_ms + self.ttl_ms > now)
            .collect();
        let Some(from) = logs
            .iter()
            .flat_map(|log| &log.entries)
            .find(|e| e.event_id == last_event_id)
        else {
            return Ok(Missed::NotRecovered);
        };
        if from.ms + self.ttl_ms <= now {
            return Ok(Missed::NotRecovered);
        }
        let from = from.recorded.offset.as_str();
        if logs.iter().any(|log| {
            log.max_deleted
                .as_deref()
                .is_some_and(|d| cmp_offsets(d, from) == Ordering::Greater)
        }) {
            return Ok(Missed::NotRecovered);
        }
        let missed: Vec<Recorded> = logs
            .iter()
            .flat_map(|log| &log.entries)
            .map(|e| &e.recorded)
            .filter(|r| cmp_offsets(&r.offset, from) == Ordering::Greater)
            .filter(|r| up_to.is_none_or(|u| cmp_offsets(&r.offset, u) != Ordering::Greater))
            .map(|r| (**r).clone())
            .collect();
        Ok(Missed::Recovered(in_offset_order(missed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[tokio::test]
    async fn replays_what_came_after_the_last_event_once_and_in_order() {
        let h = MemoryHistory::new(100, Duration::from_secs(60), MemoryRooms::default());
        let both = rooms(&["order_o1", "customer_c1"]);
        h.publish("e", "1", "id1", &both, None).await.unwrap();
        h.publish("e", "2", "id2", &both, None).await.unwrap();
        h.publish("e", "3", "id3", &rooms(&["customer_c1"]), None)
            .await
            .unwrap();
        let Missed::Recovered(missed) = h.missed(&both, "id1", None).await.unwrap() else {
            panic!("not recovered");
        };
        let data: Vec<_> = missed.iter().map(|r| r.data.as_str()).collect();
        assert_eq!(data, ["2", "3"]);
        assert_eq!(
            h.missed(&both, "unknown", None).await.unwrap(),
            Missed::NotRecovered
        );
    }

    #[tokio::test]
    async fn a_trimmed_room_is_not_recovered() {
        let h = MemoryHistory::new(2, Duration::from_secs(60), MemoryRooms::default());
        let one = rooms(&["customer_c1"]);
        for i in 0..3 {
            h.publish("e", "{}", &format!("id{i}"), &rooms(&["order_o1"]), None)
                .await
                .unwrap();
        }
        h.publish("e", "{}", "c0", &one, None).await.unwrap();
        h.publish("e", "{}", "c1", &one, None).await.unwrap();
        h.publish("e", "{}", "c2", &one, None).await.unwrap();
        // c1 is still there, but c0 (before it) was trimmed: nothing after c1 is missing.
        assert!(matches!(
            h.missed(&one, "c1", None).await.unwrap(),
            Missed::Recovered(m) if m.len() == 1
        ));
        let all = rooms(&["customer_c1", "order_o1"]);
        // id1 is still in order_o1, but customer_c1 lost c0, which came after it.
        assert_eq!(
            h.missed(&all, "id1", None).await.unwrap(),
            Missed::NotRecovered
        );
    }
}
