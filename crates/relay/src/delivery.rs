//! Recorded events (order status updates, admin alerts) reach clients
//! through one loop per node: it delivers the history's feed to this node's
//! sockets in offset order, and between two feed events it replays to a
//! reconnecting client what it missed and only then puts it in its rooms.
//! A client so gets every event after its last one, in order and each once:
//! older ones from the history, newer ones live.

use std::{cmp::Ordering, sync::Arc, time::Duration};

use serde_json::{Value, json};
use socketioxide::{SendError, SocketError, SocketIo, adapter::Adapter, extract::SocketRef};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{Principal, Role},
    engine::{Engine, History, Missed, Recorded, cmp_offsets},
    events::ServerEvent,
    metrics::{self, StoreOp},
};

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

/// Subscribes to the history's feed, then delivers until `stop`. Resolves
/// `subscribed` once no published event can be missed any more.
pub async fn run<E: Engine>(
    engine: Arc<E>,
    io: SocketIo<E::Adapter>,
    mut requests: mpsc::Receiver<Resume<E::Adapter>>,
    subscribed: oneshot::Sender<()>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let (mut feed, mut last) = loop {
        match engine.history().feed().await {
            Ok(feed) => break feed,
            Err(e) if e.told_by_health() => {
                tracing::debug!(error = %e, retry_in = ?backoff, "history feed not subscribed")
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "history feed not subscribed")
            }
            // No event reaches this node's clients without it: keep trying, slowly.
            Err(e) => {
                backoff = Duration::from_secs(2);
                tracing::error!(error = %e, retry_in = ?backoff, "history feed not subscribed");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    };
    let _ = subscribed.send(());
    loop {
        tokio::select! {
            // Feed first: a replay covers exactly what was delivered before it.
            biased;
            () = stop.cancelled() => return,
            recorded = feed.recv() => match recorded {
                Some(recorded) => {
                    // Published before this node subscribed: never delivered here, replayed instead.
                    if last.as_deref().is_some_and(|l| cmp_offsets(&recorded.offset, l) != Ordering::Greater) {
                        continue;
                    }
                    deliver(&io, &recorded).await;
                    last = Some(recorded.offset);
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
                let up_to = last.as_deref();
                futures_util::future::join_all(
                    batch.into_iter().map(|r| replay(engine.as_ref(), r, up_to)),
                )
                .await;
            }
        }
    }
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
