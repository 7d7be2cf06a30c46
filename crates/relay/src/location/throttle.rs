//! Per-driver spacing of location updates: the pipeline's admission rule.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Mutex,
    time::Duration,
};

use tokio::time::Instant;

const SHARDS: usize = 32;

/// Per driver on this node: updates closer together than the minimum
/// interval are dropped. Sharded so that thousands of drivers updating at
/// once rarely meet on a lock.
pub struct DriverThrottle {
    min_interval: Duration,
    shards: Vec<Mutex<HashMap<String, Instant>>>,
    hasher: RandomState,
}

impl DriverThrottle {
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    /// True when the update may go; records it as the driver's last.
    pub fn admit(&self, driver: &str, now: Instant) -> bool {
        if self.min_interval.is_zero() {
            return true;
        }
        let shard = &self.shards[self.hasher.hash_one(driver) as usize % SHARDS];
        let mut last = shard.lock().unwrap_or_else(|e| e.into_inner());
        match last.get_mut(driver) {
            Some(at) if now.duration_since(*at) < self.min_interval => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                last.insert(driver.to_owned(), now);
                true
            }
        }
    }

    /// Forgets drivers not heard from for `idle`, so the map stays the size
    /// of the active fleet.
    pub fn forget_idle(&self, now: Instant, idle: Duration) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, at| now.duration_since(*at) < idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_spaces_each_drivers_updates() {
        let throttle = DriverThrottle::new(Duration::from_millis(1000));
        let t0 = Instant::now();
        assert!(throttle.admit("d1", t0));
        assert!(!throttle.admit("d1", t0 + Duration::from_millis(999)));
        assert!(throttle.admit("d2", t0 + Duration::from_millis(10)));
        assert!(throttle.admit("d1", t0 + Duration::from_millis(1000)));
        throttle.forget_idle(t0 + Duration::from_secs(100), Duration::from_secs(60));
        assert!(throttle.admit("d1", t0 + Duration::from_secs(100)));
    }

    #[test]
    fn zero_interval_means_no_limit() {
        let throttle = DriverThrottle::new(Duration::ZERO);
        let t0 = Instant::now();
        assert!(throttle.admit("d1", t0) && throttle.admit("d1", t0));
    }
}
