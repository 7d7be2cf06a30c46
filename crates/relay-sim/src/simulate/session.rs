//! One simulated user's Socket.IO connection, kept up: connect with
//! backoff, move on to the next URL when a node is gone, come back with
//! `last_event_id` so that missed events are replayed, drop duplicates.

use std::{
    collections::{HashSet, VecDeque},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    Ctx,
    clock::{Stopped, real_sleep},
    stats::bump,
};
use relay::auth::Role;
use relay_client::{Client, ClientError, ConnectOptions, Event, Transport};

/// Who connects, and how.
#[derive(Debug, Clone)]
pub struct Identity {
    pub sub: String,
    pub role: Role,
    pub store_ids: Vec<String>,
    pub transport: Transport,
    /// Index of this user's first URL; later tries move on round-robin.
    pub home: usize,
}

impl Identity {
    pub fn new(sub: impl Into<String>, role: Role, transport: Transport, home: usize) -> Self {
        Self {
            sub: sub.into(),
            role,
            store_ids: Vec::new(),
            transport,
            home,
        }
    }
}

/// A connection that lasts across reconnects: the same user, the events
/// already seen, the URL in use.
pub struct Link {
    pub who: Identity,
    seen: Seen,
    tries: usize,
    connected_before: bool,
}

/// How a connected session ended.
pub enum SessionEnd {
    Stopped,
    Lost,
}

/// Bounds a handshake, and the goodbye on the way out.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Failed tries in a row before a user's trouble is worth a warning.
const WARN_AFTER: u32 = 5;

impl Link {
    pub fn new(who: Identity) -> Self {
        Self {
            who,
            seen: Seen::default(),
            tries: 0,
            connected_before: false,
        }
    }

    /// The base URL the next connection goes to.
    pub fn url<'a>(&self, ctx: &'a Ctx) -> &'a str {
        &ctx.urls[(self.who.home + self.tries) % ctx.urls.len()]
    }

    /// Connects, retrying with backoff until it works or the run stops.
    pub async fn connect(&mut self, ctx: &Ctx) -> Result<Client, Stopped> {
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0u32;
        loop {
            if ctx.stop.is_cancelled() {
                return Err(Stopped);
            }
            let url = self.url(ctx).to_owned();
            let mut auth =
                json!({ "token": ctx.token(&self.who.sub, self.who.role, &self.who.store_ids) });
            if let Some(last) = self.seen.last_event_id() {
                auth["last_event_id"] = Value::from(last);
            }
            let options = ConnectOptions::new(url.clone())
                .transport(self.who.transport)
                .auth(auth)
                .timeout(CONNECT_TIMEOUT)
                .http_client(ctx.http.clone());
            match Client::connect(options).await {
                Ok(client) => {
                    bump(&ctx.stats.connects);
                    if self.connected_before {
                        bump(&ctx.stats.reconnects);
                    }
                    if failures >= WARN_AFTER {
                        tracing::info!(user = %self.who.sub, %url, failures, "connected again");
                    }
                    tracing::debug!(user = %self.who.sub, %url, last_event_id = ?self.seen.last_event_id(), "connected");
                    self.connected_before = true;
                    return Ok(client);
                }
                Err(e) => {
                    failures += 1;
                    self.tries += 1;
                    log_failure(&self.who, &url, failures, &e);
                    real_sleep(backoff, &ctx.stop).await?;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The session ended on its own: the next connection tries another URL
    /// first, as a client behind a load balancer would land elsewhere.
    pub fn lost(&mut self, ctx: &Ctx, client: &Client) {
        tracing::debug!(user = %self.who.sub, url = self.url(ctx), reason = ?client.close_reason(), "connection lost");
        self.tries += 1;
    }

    /// The user closed the app: the next connection is an app opening, not
    /// a reconnect.
    pub fn went_away(&mut self) {
        self.connected_before = false;
    }

    /// Counts the event and says whether it is new (not a redelivery).
    pub fn first_time(&mut self, ctx: &Ctx, event: &Event) -> bool {
        bump(&ctx.stats.events_received);
        let new = self.seen.first_time(event.data());
        if !new {
            bump(&ctx.stats.duplicates);
        }
        new
    }
}

fn log_failure(who: &Identity, url: &str, failures: u32, e: &ClientError) {
    match e {
        // A refused handshake will not fix itself by waiting; the first one
        // is worth an error line with the reason.
        ClientError::Rejected { message, .. } if failures == 1 => {
            tracing::error!(user = %who.sub, role = ?who.role, %url, %message, "handshake refused");
        }
        _ if failures == WARN_AFTER => {
            tracing::warn!(user = %who.sub, role = ?who.role, %url, error = %e, "cannot connect; still trying");
        }
        _ => tracing::debug!(user = %who.sub, %url, error = %e, "connect failed"),
    }
}

/// Wakes a session loop: whichever comes first.
pub enum Wake {
    Stop,
    Event(Result<Event, ClientError>),
    Timer,
}

/// The next thing a session must react to: the run stopping, a server
/// event, or `deadline` (the actor's next timer).
pub async fn wake(ctx: &Ctx, client: &mut Client, deadline: Instant) -> Wake {
    tokio::select! {
        () = ctx.stop.cancelled() => Wake::Stop,
        event = client.next_event(Duration::from_secs(3600)) => Wake::Event(event),
        () = tokio::time::sleep_until(deadline) => Wake::Timer,
    }
}

/// Event ids already seen by one user, and the newest of them for
/// `last_event_id` on reconnect.
#[derive(Debug, Default)]
pub struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
    newest: Option<((u64, u64), String)>,
}

/// Enough to catch any redelivery: they come within seconds.
const SEEN_CAPACITY: usize = 512;

impl Seen {
    /// False for an `event_id` seen before. Events without one are new.
    pub fn first_time(&mut self, data: &Value) -> bool {
        let Some(id) = data.get("event_id").and_then(Value::as_str) else {
            return true;
        };
        if self.ids.contains(id) {
            return false;
        }
        if let Some(key) = stream_id(id)
            && self.newest.as_ref().is_none_or(|(newest, _)| key > *newest)
        {
            self.newest = Some((key, id.to_owned()));
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        if self.order.len() > SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }

    pub fn last_event_id(&self) -> Option<&str> {
        self.newest.as_ref().map(|(_, id)| id.as_str())
    }
}

/// A stream id `ms-seq` as a sortable pair.
fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Acks a user sends later, as people take a moment to decide.
#[derive(Default)]
pub struct Replies {
    due: Vec<(Instant, Event, Value)>,
}

impl Replies {
    pub fn schedule(&mut self, at: Instant, event: Event, answer: Value) {
        self.due.push((at, event, answer));
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.due.iter().map(|(at, _, _)| *at).min()
    }

    /// Sends the acks that are due; false when the connection is gone.
    pub async fn send_due(&mut self, client: &Client) -> bool {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.due.drain(..).partition(|(at, _, _)| *at <= now);
        self.due = later;
        for (_, event, answer) in due {
            if client.ack(&event, answer).await.is_err() {
                return false;
            }
        }
        true
    }

    /// A new connection cannot ack the old one's events: the relay offers
    /// them again on the new one.
    pub fn clear(&mut self) {
        self.due.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Value {
        json!({"event_id": id, "status": "preparing"})
    }

    #[test]
    fn duplicates_are_caught_and_the_newest_id_is_kept() {
        let mut seen = Seen::default();
        assert!(seen.first_time(&event("1700000000000-1")));
        assert!(seen.first_time(&event("1700000000005-0")));
        // Replays can come in any order across rooms: the newest stays.
        assert!(seen.first_time(&event("1700000000001-9")));
        assert!(!seen.first_time(&event("1700000000005-0")));
        assert_eq!(seen.last_event_id(), Some("1700000000005-0"));
        let no_id = json!({"lat": 1.0});
        assert!(seen.first_time(&no_id));
        assert!(seen.first_time(&no_id));
    }

    #[test]
    fn the_memory_of_ids_is_bounded() {
        let mut seen = Seen::default();
        for i in 0..(SEEN_CAPACITY as u64 + 10) {
            assert!(seen.first_time(&event(&format!("{i}-0"))));
        }
        assert_eq!(seen.ids.len(), SEEN_CAPACITY);
        assert!(seen.first_time(&event("0-0")), "forgotten long ago");
    }
}
