//! Per socket: how many client events a second it may send (every event
//! counts, whatever its name), so one socket cannot flood the node.

use std::sync::Mutex;

use tokio::time::Instant;

/// Per socket: a token bucket of `rate` events a second with a burst of
/// `rate` (at least one). Clone-able for the socket's extensions.
#[derive(Debug)]
pub struct EventBudget {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl EventBudget {
    /// `rate` 0 means no limit.
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        Self {
            rate,
            state: Mutex::new((rate.max(1.0), Instant::now())),
        }
    }

    pub fn admit(&self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *state;
        let refill = now.duration_since(*last).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.rate.max(1.0));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn budget_allows_its_rate_and_refills() {
        let budget = EventBudget::new(5);
        let t0 = Instant::now();
        let admitted = (0..10).filter(|_| budget.admit(t0)).count();
        assert_eq!(admitted, 5);
        assert!(budget.admit(t0 + Duration::from_millis(200)));
        assert!(!budget.admit(t0 + Duration::from_millis(200)));
        assert!(EventBudget::new(0).admit(t0));
    }
}
