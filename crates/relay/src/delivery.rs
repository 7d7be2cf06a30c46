//! What the room channels bring reaches this node's sockets through one
//! loop per node: recorded events (order status updates, admin alerts) in
//! the order each publisher sent them, each once; other nodes' driver
//! locations; cluster-wide joins. Between two messages the loop replays to
//! a reconnecting client what it missed and only then puts it in its rooms,
//! so a client gets every event after its last one, in order and each
//! once: older ones from the history, newer ones live. When the room feed
//! may have lost messages (the pub/sub link dropped) the loop subscribes
//! again and fills the gap from the rooms' histories before it goes on.

use std::{
    cmp::Ordering,
    collections::{HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};
use socketioxide::{SendError, SocketError, SocketIo, adapter::Adapter, extract::SocketRef};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{Principal, Role},
    engine::{Engine, History, Missed, Recorded, RoomChannels, Routed, cmp_offsets},
    events::{ServerEvent, now_ms},
    interest::Interest,
    metrics::{self, AdapterOp, StoreOp},
    rooms::Room,
};

/// How far before a loss was noticed a gap fill reaches back: a link that
/// went silent is noticed by the health watch within seconds (three failed
/// probes), and events published meanwhile were lost.
const FILL_BEFORE_LOSS: Duration = Duration::from_secs(30);

/// How long delivered offsets are remembered, to drop the copies of an
/// event sent to several of this node's rooms and those a gap fill brings
/// again. Longer than [`FILL_BEFORE_LOSS`].
const SEEN_FOR: Duration = Duration::from_secs(90);

/// Resume requests waiting for the loop; a reconnect storm beyond this is
/// answered with `recovered: false` at once.
const REQUESTS: usize = 4096;

/// Resume requests replayed together between two feed events.
const REPLAY_BATCH: usize = 256;

/// Asks this node's delivery loop to replay a client's missed events.
pub struct Replay<A: Adapter>(mpsc::Sender<Resume<A>>);

impl<A: Adapter> Clone for Replay<A> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

pub struct Resume<A: Adapter> {
    pub socket: SocketRef<A>,
    /// The rooms whose history to replay.
    pub rooms: Vec<String>,
    pub last_event_id: String,
    /// Join `rooms` after the replay (at connect); a connected client that
    /// sends `sync` is in its rooms already.
    pub join: bool,
    /// Whether the history reached back to the client's last event.
    pub done: oneshot::Sender<bool>,
}

pub fn channel<A: Adapter>() -> (Replay<A>, mpsc::Receiver<Resume<A>>) {
    let (tx, rx) = mpsc::channel(REQUESTS);
    (Replay(tx), rx)
}

impl<A: Adapter> Replay<A> {
    /// Replays, joins when asked, sends `sync:done`; returns whether the
    /// client's events were recovered.
    pub async fn resume(
        &self,
        socket: SocketRef<A>,
        rooms: Vec<String>,
        last_event_id: String,
        join: bool,
    ) -> bool {
        let (done, result) = oneshot::channel();
        let request = Resume {
            socket: socket.clone(),
            rooms: rooms.clone(),
            last_event_id,
            join,
            done,
        };
        if self.0.try_send(request).is_err() {
            tracing::warn!("replay queue full: client told to resync");
            finish(&socket, &rooms, join, false);
            return false;
        }
        result.await.unwrap_or(false)
    }
}

/// A socket that resumed: recorded events up to this offset reached it
/// through the replay, so their live copies still queued are skipped.
#[derive(Clone)]
struct ResumedAt(String);

/// Offsets delivered recently, oldest first.
#[derive(Default)]
struct Seen {
    order: VecDeque<(u64, String)>,
    set: HashSet<String>,
}

impl Seen {
    /// Whether `offset` is new; remembers it.
    fn first(&mut self, offset: &str) -> bool {
        if self.set.contains(offset) {
            return false;
        }
        let now = now_ms();
        let keep_from = now.saturating_sub(SEEN_FOR.as_millis() as u64);
        while self.order.front().is_some_and(|(at, _)| *at < keep_from) {
            if let Some((_, old)) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back((now, offset.to_owned()));
        self.set.insert(offset.to_owned());
        true
    }
}

/// Delivers what the room channels bring until `stop`. Resolves
/// `subscribed` once the loop runs: rooms are subscribed as sockets join.
pub async fn run<E: Engine>(
    engine: Arc<E>,
    interest: Arc<Interest<E>>,
    io: SocketIo<E::Adapter>,
    node: String,
    mut requests: mpsc::Receiver<Resume<E::Adapter>>,
    subscribed: oneshot::Sender<()>,
    stop: CancellationToken,
) {
    let Some(mut feed) = engine.rooms().take_feed() else {
        tracing::error!("room feed taken twice: this node delivers nothing");
        return;
    };
    let mut losses = engine.rooms().losses();
    let mut failures = interest.failures();
    let _ = subscribed.send(());
    let mut seen = Seen::default();
    let own_locations = Routed::location_prefix(&node);
    loop {
        tokio::select! {
            // Losses first: nothing after a gap goes out before the gap is
            // filled. Then the feed: a replay covers exactly what was
            // delivered before it.
            biased;
            () = stop.cancelled() => return,
            changed = losses.changed() => {
                if changed.is_err() {
                    return;
                }
                fill_gap(&engine, &interest, &io, &mut seen, &mut [&mut losses, &mut failures], &stop).await;
            }
            changed = failures.changed() => {
                if changed.is_err() {
                    return;
                }
                fill_gap(&engine, &interest, &io, &mut seen, &mut [&mut losses, &mut failures], &stop).await;
            }
            message = feed.recv() => match message {
                // The driver's node hears its own locations (its driver is
                // in the room) and delivered them already: skipped undecoded.
                Some((_, payload)) if payload.starts_with(&own_locations) => {}
                Some((channel, payload)) => {
                    let room = engine.rooms().room_of(&channel);
                    handle(&interest, &io, &node, &mut seen, room, &payload).await;
                }
                None => return,
            },
            Some(request) = requests.recv() => {
                // A reconnect storm queues many requests: they all replay up
                // to the same offset, so their history reads run together
                // (one round of concurrent reads, not one read after another
                // while live events wait).
                let mut batch = vec![request];
                while batch.len() < REPLAY_BATCH {
                    let Ok(more) = requests.try_recv() else { break };
                    batch.push(more);
                }
                replay_batch(engine.as_ref(), batch).await;
            }
        }
    }
}

async fn handle<E: Engine>(
    interest: &Interest<E>,
    io: &SocketIo<E::Adapter>,
    node: &str,
    seen: &mut Seen,
    room: &str,
    payload: &[u8],
) {
    let message = match Routed::decode(payload) {
        Ok(message) => message,
        Err(e) => {
            metrics::adapter_error(AdapterOp::Decode);
            tracing::warn!(error = %e, room, "malformed room message dropped");
            return;
        }
    };
    // Before the namespace opens no client is connected (and socketioxide's
    // shortcuts for the default namespace would panic).
    let Some(ns) = io.of("/") else { return };
    match message {
        Routed::Recorded(recorded) => {
            if seen.first(&recorded.offset) {
                deliver(io, &recorded).await;
            }
        }
        // Its node emitted it to its own sockets already.
        Routed::Location { node: from, .. } if from == node => {}
        Routed::Location { except, data, .. } => {
            // It came on the room's location channel.
            let room = Routed::located(room).unwrap_or(room);
            // Volatile: a client too slow for this update gets the next one.
            if let Err(e) = ns
                .local()
                .to(room.to_owned())
                .except(except)
                .volatile()
                .emit(ServerEvent::OrderDriverLocation.as_str(), &data)
                .await
            {
                tracing::debug!(error = %e, "location fan-out failed");
            }
        }
        Routed::Join { room: target } => {
            // Subscribed first: the joined sockets miss nothing published
            // after the join. A failure is retried, with a gap fill.
            // The sockets of a driver's room get no locations of their own.
            let watches = !room.starts_with(Room::DRIVER_PREFIX);
            let _ = interest
                .ensure_for(std::slice::from_ref(&target), watches)
                .await;
            let _ = ns.local().within(room.to_owned()).join(target).await;
        }
        Routed::Leave { room: target } => {
            let _ = ns.local().within(room.to_owned()).leave(target).await;
        }
    }
}

/// Subscribes every wanted room again and delivers, in offset order, the
/// recorded events of those rooms that did not come live since a little
/// before the loss. Retries until it succeeds or the node stops; losses
/// noticed meanwhile are covered by the same fill.
async fn fill_gap<E: Engine>(
    engine: &Arc<E>,
    interest: &Interest<E>,
    io: &SocketIo<E::Adapter>,
    seen: &mut Seen,
    watches: &mut [&mut watch::Receiver<u64>],
    stop: &CancellationToken,
) {
    let from_ms = now_ms().saturating_sub(FILL_BEFORE_LOSS.as_millis() as u64);
    let mut backoff = Duration::from_millis(100);
    loop {
        for watch in watches.iter_mut() {
            watch.mark_unchanged();
        }
        let filled = async {
            let rooms = interest.resubscribe_all().await?;
            // Location channels have no history: locations are volatile.
            let names: Vec<String> = rooms
                .iter()
                .filter(|(room, _)| Routed::located(room).is_none())
                .map(|(room, _)| room.clone())
                .collect();
            let found = engine.history().since(&names, from_ms).await?;
            Ok::<_, crate::engine::StoreError>(only_since_wanted(found, &rooms))
        }
        .await;
        match filled {
            Ok(events) => {
                let mut delivered = 0;
                for recorded in &events {
                    if seen.first(&recorded.offset) {
                        deliver(io, recorded).await;
                        delivered += 1;
                    }
                }
                metrics::gap_filled(delivered);
                tracing::info!(delivered, "room feed gap filled from the history");
                return;
            }
            Err(e) => {
                metrics::store_error(StoreOp::History);
                tracing::debug!(error = %e, retry_in = ?backoff, "gap fill failed");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Each event only for the rooms this node wanted before it was published:
/// an older one never came here live, and delivering it now could put it
/// after later events of its room.
fn only_since_wanted(found: Vec<Recorded>, rooms: &[(String, u64)]) -> Vec<Recorded> {
    let since: std::collections::HashMap<&str, u64> = rooms
        .iter()
        .map(|(room, ms)| (room.as_str(), *ms))
        .collect();
    found
        .into_iter()
        .filter_map(|mut recorded| {
            let published_ms = offset_ms(&recorded.offset);
            recorded.rooms.retain(|room| {
                since
                    .get(room.as_str())
                    .is_some_and(|ms| published_ms >= *ms)
            });
            (!recorded.rooms.is_empty()).then_some(recorded)
        })
        .collect()
}

/// The unix ms of an `ms-seq` offset.
fn offset_ms(offset: &str) -> u64 {
    offset
        .split_once('-')
        .map_or(offset, |(ms, _)| ms)
        .parse()
        .unwrap_or(0)
}

async fn deliver<A: Adapter>(io: &SocketIo<A>, recorded: &Recorded) {
    let Ok(data) = serde_json::from_str::<Value>(&recorded.data) else {
        tracing::warn!(
            offset = recorded.offset,
            "recorded event is not JSON: dropped"
        );
        return;
    };
    // Before the namespace opens no client is connected (and socketioxide's
    // shortcuts for the default namespace would panic).
    let Some(ns) = io.of("/") else { return };
    let chat = recorded.event == ServerEvent::ChatMessage.as_str();
    for socket in ns.clone().local().to(recorded.rooms.clone()).sockets() {
        if chat && !receives_chat(&socket) {
            continue;
        }
        if let Some(ResumedAt(upto)) = socket.extensions.get::<ResumedAt>()
            && cmp_offsets(&recorded.offset, &upto) != Ordering::Greater
        {
            continue;
        }
        if let Err(SendError::Socket(SocketError::InternalChannelFull)) =
            socket.emit(&recorded.event, &data)
        {
            // A client that stopped reading: its bounded buffer is full and
            // it would miss this event anyway. Disconnected, it frees its
            // memory, reconnects and recovers what it missed.
            metrics::slow_client_disconnected();
            tracing::info!(sid = %socket.id, "slow client disconnected: its buffer is full");
            let _ = socket.disconnect();
        }
    }
    if let Some(room) = &recorded.then_leave {
        ns.local()
            .within(room.clone())
            .leave(room.clone())
            .await
            .ok();
    }
}

/// Replays a batch of resume requests up to the newest offset now: every
/// event up to it is in the history, every later one comes live (the
/// rooms were subscribed before the request).
async fn replay_batch<E: Engine>(engine: &E, batch: Vec<Resume<E::Adapter>>) {
    let up_to = match engine.history().newest().await {
        Ok(up_to) => up_to,
        Err(e) => {
            metrics::store_error(StoreOp::History);
            tracing::warn!(error = %e, "history unavailable: clients told to resync");
            for Resume {
                socket,
                rooms,
                join,
                done,
                ..
            } in batch
            {
                finish(&socket, &rooms, join, false);
                let _ = done.send(false);
            }
            return;
        }
    };
    futures_util::future::join_all(
        batch
            .into_iter()
            .map(|r| replay(engine, r, up_to.as_deref())),
    )
    .await;
}

async fn replay<E: Engine>(engine: &E, request: Resume<E::Adapter>, up_to: Option<&str>) {
    let Resume {
        socket,
        rooms,
        last_event_id,
        join,
        done,
    } = request;
    let missed = engine.history().missed(&rooms, &last_event_id, up_to).await;
    let recovered = match missed {
        Ok(Missed::Recovered(events)) => {
            metrics::replayed(events.len());
            let chat = receives_chat(&socket);
            for event in &events {
                if !chat && event.event == ServerEvent::ChatMessage.as_str() {
                    continue;
                }
                match serde_json::from_str::<Value>(&event.data) {
                    Ok(data) => {
                        let _ = socket.emit(&event.event, &data);
                    }
                    Err(_) => tracing::warn!(offset = event.offset, "recorded event is not JSON"),
                }
            }
            true
        }
        Ok(Missed::NotRecovered) => false,
        Err(e) => {
            metrics::store_error(StoreOp::History);
            tracing::warn!(error = %e, "history unavailable: client told to resync");
            false
        }
    };
    if let Some(up_to) = up_to {
        socket.extensions.insert(ResumedAt(up_to.to_owned()));
    }
    finish(&socket, &rooms, join, recovered);
    let _ = done.send(recovered);
}

/// Merchants neither send nor receive chat, though they may be in the
/// order room (CONTRACT §7).
fn receives_chat<A: Adapter>(socket: &SocketRef<A>) -> bool {
    socket
        .extensions
        .get::<Principal>()
        .is_none_or(|p| p.role() != Role::Merchant)
}

fn finish<A: Adapter>(socket: &SocketRef<A>, rooms: &[String], join: bool, recovered: bool) {
    if join {
        socket.join(rooms.to_vec());
    }
    metrics::recovery(recovered);
    let _ = socket.emit(
        ServerEvent::SyncDone.as_str(),
        &json!({ "recovered": recovered }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(offset: &str, rooms: &[&str]) -> Recorded {
        Recorded {
            offset: offset.to_owned(),
            event: "order:status_update".to_owned(),
            data: "{}".to_owned(),
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
            then_leave: None,
        }
    }

    #[test]
    fn a_gap_fill_brings_only_what_was_published_after_its_room_was_wanted() {
        let wanted = [
            ("order_o1".to_owned(), 2000),
            ("customer_c1".to_owned(), 1000),
        ];
        let found = vec![
            recorded("1500-0", &["order_o1", "customer_c1"]),
            recorded("1800-3", &["order_o1"]),
            recorded("2000-0", &["order_o1"]),
        ];
        let kept = only_since_wanted(found, &wanted);
        let kept: Vec<(&str, Vec<String>)> = kept
            .iter()
            .map(|r| (r.offset.as_str(), r.rooms.clone()))
            .collect();
        assert_eq!(
            kept,
            [
                ("1500-0", vec!["customer_c1".to_owned()]),
                ("2000-0", vec!["order_o1".to_owned()]),
            ]
        );
    }
}
