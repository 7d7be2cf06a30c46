//! The simulated backend's order book: one inbox per open order, where the
//! order's lifecycle task hears what happened to it (offer outcomes read
//! from the relay, and the driver app's "arrived" taps).

use std::{collections::HashMap, sync::Mutex};

use tokio::sync::mpsc;

use super::{api::OfferOutcome, rng::Rng};

#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// What the relay reported for one offer of the order.
    Outcome(OfferOutcome),
    /// The driver app reports arriving at the store. (Driver apps talk to
    /// the platform's backend for this, not to the relay; in-process here.)
    AtStore { driver_id: String },
    /// ... and at the customer's door.
    AtDrop { driver_id: String },
}

#[derive(Default)]
pub struct Desk {
    inboxes: Mutex<HashMap<String, mpsc::UnboundedSender<Signal>>>,
}

impl Desk {
    /// Opens an order's inbox.
    pub fn open(&self, order_id: &str) -> mpsc::UnboundedReceiver<Signal> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(order_id.to_owned(), tx);
        rx
    }

    /// The order is over: later news about it is dropped.
    pub fn close(&self, order_id: &str) {
        self.lock().remove(order_id);
    }

    /// False when the order is not open (another run's, or over).
    pub fn deliver(&self, order_id: &str, signal: Signal) -> bool {
        self.lock()
            .get(order_id)
            .is_some_and(|tx| tx.send(signal).is_ok())
    }

    pub fn open_orders(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.sort_unstable();
        ids
    }

    pub fn random_open(&self, rng: &mut Rng) -> Option<String> {
        let ids = self.open_orders();
        (!ids.is_empty()).then(|| rng.pick(&ids).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Signal>>> {
        self.inboxes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_reaches_open_orders_only() {
        let desk = Desk::default();
        let mut inbox = desk.open("o1");
        let at_store = Signal::AtStore {
            driver_id: "d1".into(),
        };
        assert!(desk.deliver("o1", at_store.clone()));
        assert!(!desk.deliver("o2", at_store.clone()));
        assert_eq!(inbox.try_recv().ok(), Some(at_store.clone()));
        assert_eq!(desk.open_orders(), ["o1"]);
        desk.close("o1");
        assert!(!desk.deliver("o1", at_store));
        assert!(desk.random_open(&mut Rng::new(1)).is_none());
    }
}
