//! The backend's view of presence (CONTRACT §7): which stores can take an
//! order right now. With `--redis-url` it reads `{prefix}presence` as a
//! production backend does (every change, once, in order per id); without
//! (an embedded node has no stream) it polls `GET /api/presence` for the
//! city's stores and counts the changes it sees.

use std::{collections::HashMap, time::Duration};

use super::{Ctx, clock::real_sleep, stats::bump, tail};

/// The last known state per `kind:id`, to tell a change from a repeat.
#[derive(Debug, Default)]
pub struct Board {
    online: HashMap<String, bool>,
}

/// What one observation means.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// A transition (or the first word on an id).
    Change { online: bool },
    /// The same state again: on the stream that would break "once per
    /// change" (polling sees no repeats: it only reports changes).
    Repeat,
}

impl Board {
    pub fn observe(&mut self, kind: &str, id: &str, online: bool) -> Seen {
        match self.online.insert(format!("{kind}:{id}"), online) {
            Some(before) if before == online => Seen::Repeat,
            _ => Seen::Change { online },
        }
    }

    pub fn stores_online(&self) -> usize {
        self.online
            .iter()
            .filter(|(k, online)| k.starts_with("store:") && **online)
            .count()
    }
}

fn count(ctx: &Ctx, board: &mut Board, kind: &str, id: &str, online: bool) {
    match board.observe(kind, id, online) {
        Seen::Change { online } => {
            let counter = match (kind, online) {
                ("store", true) => &ctx.stats.stores_online_seen,
                ("store", false) => &ctx.stats.stores_offline_seen,
                _ => &ctx.stats.driver_presence_seen,
            };
            bump(counter);
        }
        Seen::Repeat => {
            tracing::warn!(
                kind,
                id,
                online,
                "presence entry repeats the state before it"
            );
            bump(&ctx.stats.presence_repeats);
        }
    }
    ctx.stats.stores_online.store(
        board.stores_online() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Watches presence until the run stops.
pub async fn watch(ctx: &Ctx, redis: Option<(String, String)>) {
    let mut board = Board::default();
    match redis {
        Some((url, prefix)) => read_stream(ctx, &mut board, &url, &prefix).await,
        None => poll_api(ctx, &mut board).await,
    }
}

async fn read_stream(ctx: &Ctx, board: &mut Board, url: &str, prefix: &str) {
    let key = format!("{prefix}presence");
    tail::follow(ctx, url, &key, |(_, fields)| {
        let field = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
        count(
            ctx,
            board,
            field("kind"),
            field("id"),
            field("online") == "true",
        );
    })
    .await;
}

async fn poll_api(ctx: &Ctx, board: &mut Board) {
    let ids: Vec<String> = ctx.city.stores.iter().map(|s| s.id.clone()).collect();
    // An offline spell lasts at least half a grace (see `merchants`):
    // polled often enough to see each.
    let every = (ctx.presence_grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match ctx.api.presence(&ids).await {
            Ok(stores) => {
                for (id, online) in stores {
                    let key = format!("store:{id}");
                    match board.online.get(&key) {
                        Some(before) if *before == online => {}
                        // A store first seen offline has not gone offline:
                        // it was not open yet.
                        None if !online => {
                            board.online.insert(key, false);
                        }
                        _ => count(ctx, board, "store", &id, online),
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "GET /api/presence failed");
                bump(&ctx.stats.errors);
            }
        }
        if real_sleep(every, &ctx.stop).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_counted_and_a_repeat_is_told_apart() {
        let mut board = Board::default();
        assert_eq!(
            board.observe("store", "s1", true),
            Seen::Change { online: true }
        );
        assert_eq!(board.observe("store", "s1", true), Seen::Repeat);
        assert_eq!(
            board.observe("driver", "s1", true),
            Seen::Change { online: true }
        );
        assert_eq!(board.stores_online(), 1);
        assert_eq!(
            board.observe("store", "s1", false),
            Seen::Change { online: false }
        );
        assert_eq!(board.stores_online(), 0);
    }
}
