//! New sessions per client address a second: one address cannot take the
//! node's whole new-session budget.
//!
//! A token bucket per address (IPv6 per /64), of `rate` a second with a
//! burst of `rate`. A bucket that has filled up again is the same as no
//! bucket, so it is forgotten: memory follows the addresses active in about
//! the last second, and never exceeds [`MAX_ADDRESSES`] buckets.

use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// Buckets held at most (about 64 bytes each). Beyond, a new address is
/// admitted without a bucket of its own (only the node-wide budget applies
/// to it): refusing every new address would let a flood from many
/// addresses lock out everyone.
const MAX_ADDRESSES: usize = 100_000;

/// How often full buckets are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// At the cap, sweeps are tried at most this often.
const SWEEP_AT_CAP_EVERY: Duration = Duration::from_millis(100);

pub struct AddressBudgets {
    /// Sessions a second per address (0 = no limit).
    rate: f64,
    max_addresses: usize,
    state: Mutex<State>,
}

struct State {
    buckets: HashMap<IpAddr, Bucket>,
    last_sweep: Instant,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl AddressBudgets {
    pub fn new(rate: u32) -> Self {
        Self::with_cap(rate, MAX_ADDRESSES)
    }

    fn with_cap(rate: u32, max_addresses: usize) -> Self {
        Self {
            rate: f64::from(rate),
            max_addresses,
            state: Mutex::new(State {
                buckets: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    fn burst(&self) -> f64 {
        self.rate.max(1.0)
    }

    /// Takes one session from `addr`'s budget; false when it has none left.
    pub fn admit(&self, addr: IpAddr, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let burst = self.burst();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let since_sweep = now.saturating_duration_since(state.last_sweep);
        if since_sweep >= SWEEP_EVERY
            || (state.buckets.len() >= self.max_addresses && since_sweep >= SWEEP_AT_CAP_EVERY)
        {
            let rate = self.rate;
            state.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
            state.last_sweep = now;
        }
        if let Some(bucket) = state.buckets.get_mut(&addr) {
            let refill = now.saturating_duration_since(bucket.last).as_secs_f64() * self.rate;
            bucket.tokens = (bucket.tokens + refill).min(burst);
            bucket.last = now;
            if bucket.tokens < 1.0 {
                return false;
            }
            bucket.tokens -= 1.0;
            return true;
        }
        if state.buckets.len() < self.max_addresses {
            state.buckets.insert(
                addr,
                Bucket {
                    tokens: burst - 1.0,
                    last: now,
                },
            );
        }
        true
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .buckets
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(i.into())
    }

    #[test]
    fn each_address_has_its_own_budget() {
        let budgets = AddressBudgets::new(3);
        let t0 = Instant::now();
        let a = (0..10).filter(|_| budgets.admit(ip(1), t0)).count();
        assert_eq!(a, 3);
        assert!(budgets.admit(ip(2), t0), "another address is not affected");
        assert!(!budgets.admit(ip(1), t0 + Duration::from_millis(100)));
        assert!(budgets.admit(ip(1), t0 + Duration::from_millis(400)));
        assert!(AddressBudgets::new(0).admit(ip(1), t0));
    }

    #[test]
    fn idle_addresses_are_forgotten_and_the_map_is_capped() {
        let budgets = AddressBudgets::with_cap(2, 100);
        let t0 = Instant::now();
        for i in 0..1000 {
            budgets.admit(ip(i), t0);
        }
        assert_eq!(budgets.tracked(), 100, "capped");
        // Beyond the cap an address is still admitted (node-wide budget only).
        assert!(budgets.admit(ip(5000), t0));
        // Once their buckets are full again they go.
        assert!(budgets.admit(ip(7), t0 + Duration::from_secs(2)));
        assert_eq!(budgets.tracked(), 1);
    }
}
