//! What the city did, counted as it happens: the status line and the
//! summary a run returns.

use std::{
    fmt,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
    time::Duration,
};

/// Live counters, shared by every actor.
#[derive(Debug, Default)]
pub struct Stats {
    pub orders_placed: AtomicU64,
    pub orders_delivered: AtomicU64,
    pub orders_rejected: AtomicU64,
    pub orders_cancelled: AtomicU64,
    /// Backend events accepted by `POST /api/events`.
    pub events_published: AtomicU64,
    pub merchant_offers: AtomicU64,
    pub driver_offers: AtomicU64,
    /// Drivers with an order assigned right now.
    pub drivers_busy: AtomicI64,
    pub locations_sent: AtomicU64,
    /// Updates the relay acked `{ok: true}`.
    pub locations_accepted: AtomicU64,
    /// Updates the relay refused, deliberate glitches included.
    pub locations_refused: AtomicU64,
    /// Server events received by all simulated clients.
    pub events_received: AtomicU64,
    /// Events whose `event_id` a client had already seen (at-least-once).
    pub duplicates: AtomicU64,
    pub alerts_received: AtomicU64,
    pub driver_locations_received: AtomicU64,
    pub glitches: AtomicU64,
    pub connects: AtomicU64,
    pub reconnects: AtomicU64,
    pub errors: AtomicU64,
    /// Orders still open when the run stopped, cancelled on the way out.
    pub cancelled_at_stop: AtomicU64,
    /// Store tablets that went away for a few seconds (within the grace).
    pub store_blips: AtomicU64,
    /// Store tablets that went away for longer (the store goes offline).
    pub store_breaks: AtomicU64,
    /// Presence as the backend saw it: store changes, driver changes, and
    /// stream entries that repeated the state before them (should be 0).
    pub stores_online_seen: AtomicU64,
    pub stores_offline_seen: AtomicU64,
    pub driver_presence_seen: AtomicU64,
    pub presence_repeats: AtomicU64,
    /// Stores online as the backend last saw it.
    pub stores_online: AtomicU64,
    /// Chat messages the relay accepted, refused because the order had just
    /// ended, and refused otherwise (should be 0).
    pub chat_sent: AtomicU64,
    pub chat_too_late: AtomicU64,
    pub chat_refused: AtomicU64,
    /// Chat messages and "typing" notices from someone else, received.
    pub chat_received: AtomicU64,
    pub typing_sent: AtomicU64,
    pub typing_received: AtomicU64,
    /// This run's accepted messages the backend found in `{prefix}chat`.
    pub chat_logged: AtomicU64,
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub elapsed: Duration,
    pub orders_placed: u64,
    pub orders_delivered: u64,
    pub orders_rejected: u64,
    pub orders_cancelled: u64,
    pub events_published: u64,
    pub merchant_offers: u64,
    pub driver_offers: u64,
    pub drivers_busy: u64,
    pub drivers: usize,
    pub locations_sent: u64,
    pub locations_accepted: u64,
    pub locations_refused: u64,
    pub events_received: u64,
    pub duplicates: u64,
    pub alerts_received: u64,
    pub driver_locations_received: u64,
    pub glitches: u64,
    pub connects: u64,
    pub reconnects: u64,
    pub errors: u64,
    pub cancelled_at_stop: u64,
    pub store_blips: u64,
    pub store_breaks: u64,
    pub stores_online_seen: u64,
    pub stores_offline_seen: u64,
    pub driver_presence_seen: u64,
    pub presence_repeats: u64,
    pub stores_online: u64,
    pub chat_sent: u64,
    pub chat_too_late: u64,
    pub chat_refused: u64,
    pub chat_received: u64,
    pub typing_sent: u64,
    pub typing_received: u64,
    pub chat_logged: u64,
    /// `{prefix}chat` entries that repeated a message (should be 0).
    pub chat_log_repeats: u64,
    /// Accepted messages missing from `{prefix}chat` a few seconds later
    /// (should be 0; always 0 without `--redis-url`).
    pub chat_log_missing: u64,
}

impl Summary {
    /// Orders neither delivered nor ended otherwise yet.
    pub fn orders_active(&self) -> u64 {
        self.orders_placed
            .saturating_sub(self.orders_delivered + self.orders_rejected + self.orders_cancelled)
    }
}

impl Stats {
    pub fn summary(&self, elapsed: Duration, drivers: usize) -> Summary {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Summary {
            elapsed,
            orders_placed: get(&self.orders_placed),
            orders_delivered: get(&self.orders_delivered),
            orders_rejected: get(&self.orders_rejected),
            orders_cancelled: get(&self.orders_cancelled),
            events_published: get(&self.events_published),
            merchant_offers: get(&self.merchant_offers),
            driver_offers: get(&self.driver_offers),
            drivers_busy: self.drivers_busy.load(Ordering::Relaxed).max(0) as u64,
            drivers,
            locations_sent: get(&self.locations_sent),
            locations_accepted: get(&self.locations_accepted),
            locations_refused: get(&self.locations_refused),
            events_received: get(&self.events_received),
            duplicates: get(&self.duplicates),
            alerts_received: get(&self.alerts_received),
            driver_locations_received: get(&self.driver_locations_received),
            glitches: get(&self.glitches),
            connects: get(&self.connects),
            reconnects: get(&self.reconnects),
            errors: get(&self.errors),
            cancelled_at_stop: get(&self.cancelled_at_stop),
            store_blips: get(&self.store_blips),
            store_breaks: get(&self.store_breaks),
            stores_online_seen: get(&self.stores_online_seen),
            stores_offline_seen: get(&self.stores_offline_seen),
            driver_presence_seen: get(&self.driver_presence_seen),
            presence_repeats: get(&self.presence_repeats),
            stores_online: get(&self.stores_online),
            chat_sent: get(&self.chat_sent),
            chat_too_late: get(&self.chat_too_late),
            chat_refused: get(&self.chat_refused),
            chat_received: get(&self.chat_received),
            typing_sent: get(&self.typing_sent),
            typing_received: get(&self.typing_received),
            chat_logged: get(&self.chat_logged),
            chat_log_repeats: 0,
            chat_log_missing: 0,
        }
    }
}

/// The one-line status: `[2m05s] orders 41 placed, 22 delivered, ...`.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs();
        write!(
            f,
            "[{}m{:02}s] orders {} placed, {} delivered, {} rejected, {} cancelled, {} active \
             | drivers {}/{} busy | locations {} sent, {} refused \
             | events {} published, {} received ({} dup), {} alerts \
             | stores {} online, {} went offline, {} blips \
             | chat {} sent, {} received, {} logged | reconnects {} | errors {}",
            secs / 60,
            secs % 60,
            self.orders_placed,
            self.orders_delivered,
            self.orders_rejected,
            self.orders_cancelled,
            self.orders_active(),
            self.drivers_busy,
            self.drivers,
            self.locations_sent,
            self.locations_refused,
            self.events_published,
            self.events_received,
            self.duplicates,
            self.alerts_received,
            self.stores_online,
            self.stores_offline_seen,
            self.store_blips,
            self.chat_sent,
            self.chat_received,
            self.chat_logged,
            self.reconnects,
            self.errors,
        )?;
        if self.presence_repeats > 0 {
            write!(
                f,
                " | {} presence entries repeated a state",
                self.presence_repeats
            )?;
        }
        if self.chat_refused > 0 {
            write!(f, " | {} chat messages refused", self.chat_refused)?;
        }
        if self.chat_log_repeats + self.chat_log_missing > 0 {
            write!(
                f,
                " | chat log: {} repeated, {} missing",
                self.chat_log_repeats, self.chat_log_missing
            )?;
        }
        if self.cancelled_at_stop > 0 {
            write!(
                f,
                " | {} open orders cancelled at stop",
                self.cancelled_at_stop
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_is_one_line_with_the_essentials() {
        let stats = Stats::default();
        for _ in 0..5 {
            bump(&stats.orders_placed);
        }
        bump(&stats.orders_delivered);
        bump(&stats.orders_rejected);
        stats.drivers_busy.fetch_add(2, Ordering::Relaxed);
        let line = stats.summary(Duration::from_secs(125), 30).to_string();
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with(
                "[2m05s] orders 5 placed, 1 delivered, 1 rejected, 0 cancelled, 3 active"
            ),
            "{line}"
        );
        assert!(line.contains("drivers 2/30 busy"), "{line}");
    }
}
