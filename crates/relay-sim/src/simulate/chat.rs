//! Order chat (CONTRACT §7) in the city: a customer whose order got a
//! driver sometimes writes to them, the driver answers, either may show
//! "typing" first. The backend reads `{prefix}chat` (with `--redis-url`) as
//! a production backend would to store and moderate messages, and checks
//! that every message the relay accepted is there exactly once.

use std::{
    collections::HashMap,
    sync::{Mutex, atomic::Ordering},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Ctx, rng::Rng, stats::bump, tail};
use relay_client::{Client, ClientError};

const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// A message the relay accepted this long ago and still not in
/// `{prefix}chat` is missing (the stream is written before the ack).
const LOG_SLACK: Duration = Duration::from_secs(3);

const CUSTOMER_LINES: [&str; 5] = [
    "Hi! Please ring the bell, the intercom is broken.",
    "Could you leave it at the gate?",
    "Third floor, the door on the left.",
    "Is it far? The app shows you stopped.",
    "Please bring extra napkins if the store has them.",
];
const DRIVER_LINES: [&str; 4] = [
    "Sure, no problem.",
    "On my way, about ten minutes.",
    "Okay, noted!",
    "Traffic near the junction, there soon.",
];
/// Said by the driver at pickup, unasked, now and then.
const PICKED_UP_LINE: &str = "Picked up your order, heading to you now.";

/// One message a user is about to write.
#[derive(Debug, Clone, PartialEq)]
struct Draft {
    at: Instant,
    order_id: String,
    text: String,
    /// "typing" shown already.
    typed: bool,
}

impl Draft {
    fn typing_at(&self) -> Instant {
        self.at.checked_sub(TYPING_FOR).unwrap_or(self.at)
    }
}

/// One user's messages in the making: each shows "typing" first (most of
/// the time), then goes out a moment later.
#[derive(Debug, Default)]
pub struct Chatter {
    drafts: Vec<Draft>,
}

/// Wall-clock time between "typing" and the message.
const TYPING_FOR: Duration = Duration::from_millis(600);

impl Chatter {
    /// Writes `text` to `order_id` after `after` (wall clock).
    pub fn write(&mut self, order_id: &str, text: &str, after: Duration, rng: &mut Rng) {
        self.drafts.push(Draft {
            at: Instant::now() + after,
            order_id: order_id.to_owned(),
            text: text.to_owned(),
            // Some people type fast enough that nobody sees it.
            typed: rng.chance(0.2),
        });
    }

    /// The customer's line when their order gets a driver, if they write.
    pub fn customer_line(rng: &mut Rng) -> Option<&'static str> {
        rng.chance(0.6).then(|| *rng.pick(&CUSTOMER_LINES))
    }

    /// The driver's answer to the customer, if they answer.
    pub fn driver_answer(rng: &mut Rng) -> Option<&'static str> {
        rng.chance(0.8).then(|| *rng.pick(&DRIVER_LINES))
    }

    pub fn picked_up_line(rng: &mut Rng) -> Option<&'static str> {
        rng.chance(0.3).then_some(PICKED_UP_LINE)
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.drafts
            .iter()
            .map(|d| if d.typed { d.at } else { d.typing_at() })
            .min()
    }

    /// The order is over or the connection is new: what was not sent is
    /// dropped (a real app loses an unsent draft's "typing" too).
    pub fn forget(&mut self, order_id: &str) {
        self.drafts.retain(|d| d.order_id != order_id);
    }

    /// Shows "typing" and sends what is due; false when the connection is
    /// gone.
    pub async fn send_due(&mut self, ctx: &Ctx, client: &Client) -> bool {
        let now = Instant::now();
        let mut i = 0;
        while i < self.drafts.len() {
            let draft = &mut self.drafts[i];
            if !draft.typed && draft.typing_at() <= now {
                draft.typed = true;
                let typing = json!({"order_id": draft.order_id});
                if client.emit("chat:typing", typing).await.is_err() {
                    return false;
                }
                bump(&ctx.stats.typing_sent);
            }
            if draft.at <= now {
                let draft = self.drafts.swap_remove(i);
                if !send(ctx, client, &draft.order_id, &draft.text).await {
                    return false;
                }
            } else {
                i += 1;
            }
        }
        true
    }
}

/// Sends one message and counts the answer; false when the connection is gone.
async fn send(ctx: &Ctx, client: &Client, order_id: &str, text: &str) -> bool {
    let message = json!({"order_id": order_id, "text": text});
    match client
        .emit_with_ack("chat:send", message, ACK_TIMEOUT)
        .await
    {
        Ok(args) => {
            let ack = args.first().cloned().unwrap_or(Value::Null);
            match (ack["ok"].as_bool(), ack["error"].as_str()) {
                (Some(true), _) => {
                    bump(&ctx.stats.chat_sent);
                    if let Some(id) = ack["event_id"].as_str() {
                        ctx.chat_log.accepted(id);
                    }
                }
                // The order ended while the message was being written.
                (_, Some("order not active")) => bump(&ctx.stats.chat_too_late),
                _ => {
                    tracing::warn!(order_id, ack = %ack, "a chat message was refused");
                    bump(&ctx.stats.chat_refused);
                }
            }
            true
        }
        Err(ClientError::Timeout(_)) => {
            tracing::debug!(order_id, "no ack for a chat message");
            true
        }
        Err(_) => false,
    }
}

/// A `chat:message` or `chat:typing` one user received: counted when it
/// is someone else's. Returns the sender's role for a message from another.
pub fn heard(ctx: &Ctx, me: &str, name: &str, data: &Value) -> Option<String> {
    let from = data["from"]["id"].as_str()?;
    if from == me {
        return None;
    }
    match name {
        "chat:message" => {
            bump(&ctx.stats.chat_received);
            data["from"]["role"].as_str().map(str::to_owned)
        }
        "chat:typing" => {
            bump(&ctx.stats.typing_received);
            None
        }
        _ => None,
    }
}

/// The backend's view of `{prefix}chat`: messages the relay accepted (their
/// `event_id` from the sender's ack) and how often each was logged.
#[derive(Debug, Default)]
pub struct ChatLog {
    entries: Mutex<HashMap<String, Logged>>,
}

#[derive(Debug, Clone, Copy)]
struct Logged {
    accepted: Option<Instant>,
    times: u32,
}

/// What the backend found in `{prefix}chat`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogCheck {
    pub logged: u64,
    /// Entries logged more than once (an `event_id` seen again).
    pub repeats: u64,
    /// Accepted more than [`LOG_SLACK`] ago and not logged.
    pub missing: u64,
}

impl ChatLog {
    pub fn accepted(&self, event_id: &str) {
        self.lock()
            .entry(event_id.to_owned())
            .or_insert(Logged {
                accepted: None,
                times: 0,
            })
            .accepted = Some(Instant::now());
    }

    pub fn logged(&self, event_id: &str) {
        self.lock()
            .entry(event_id.to_owned())
            .or_insert(Logged {
                accepted: None,
                times: 0,
            })
            .times += 1;
    }

    /// Only messages of this run count: a log entry never accepted here is
    /// another client's (the same Redis may serve other runs).
    pub fn check(&self, now: Instant) -> LogCheck {
        let mut check = LogCheck::default();
        for logged in self.lock().values() {
            if logged.accepted.is_none() {
                continue;
            }
            if logged.times > 0 {
                check.logged += 1;
            }
            check.repeats += u64::from(logged.times.saturating_sub(1));
            if logged.times == 0
                && logged
                    .accepted
                    .is_some_and(|at| now.duration_since(at) > LOG_SLACK)
            {
                check.missing += 1;
            }
        }
        check
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Logged>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads `{prefix}chat` until the run stops (nothing to read without
/// Redis: an embedded node keeps no such stream).
pub async fn read_log(ctx: &Ctx, redis: Option<(String, String)>) {
    let Some((url, prefix)) = redis else { return };
    let key = format!("{prefix}chat");
    tail::follow(ctx, &url, &key, |(_, fields)| {
        if let Some(id) = fields.get("event_id") {
            ctx.chat_log.logged(id);
        }
        ctx.stats
            .chat_logged
            .store(ctx.chat_log.check(Instant::now()).logged, Ordering::Relaxed);
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_check_counts_once_repeats_and_missing_of_this_run_only() {
        let log = ChatLog::default();
        let start = Instant::now();
        log.accepted("1-0");
        log.accepted("2-0");
        log.accepted("3-0");
        log.logged("1-0");
        log.logged("2-0");
        log.logged("2-0");
        // Someone else's message in the same stream.
        log.logged("9-0");
        assert_eq!(
            log.check(start),
            LogCheck {
                logged: 2,
                repeats: 1,
                missing: 0
            },
            "3-0 may still be on its way"
        );
        let later = start + LOG_SLACK + Duration::from_secs(1);
        assert_eq!(log.check(later).missing, 1);
    }

    #[tokio::test]
    async fn typing_comes_before_the_message() {
        let mut rng = Rng::new(3);
        let mut chatter = Chatter::default();
        chatter.write("o1", "hi", Duration::from_secs(5), &mut rng);
        chatter.drafts[0].typed = false;
        let due = chatter.next_due().expect("a draft");
        assert!(due + TYPING_FOR <= Instant::now() + Duration::from_secs(5));
        chatter.write("o2", "hi", Duration::from_secs(9), &mut rng);
        chatter.forget("o1");
        assert_eq!(chatter.drafts.len(), 1);
        assert_eq!(chatter.drafts[0].order_id, "o2");
    }
}
