//! socket.io-client's reconnection delay, so that tests and load generators
//! come back after a lost node the way the official client does: the same
//! randomised exponential back-off, and on top of it the pause a shedding
//! node asks for in `Retry-After`.

use std::time::Duration;

use crate::ClientError;

/// socket.io-client 4's `Backoff` (its `contrib/backo2`): the n-th delay is
/// `min * 2^n`, moved up or down by a random share of up to `jitter` of
/// itself, then capped at `max`. A successful connect resets it.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: f64,
    attempts: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// socket.io-client's defaults: `reconnectionDelay` 1000 ms,
    /// `reconnectionDelayMax` 5000 ms, `randomizationFactor` 0.5. A fixed
    /// seed gives the same delays on every run.
    pub fn socket_io(seed: u64) -> Self {
        Self::new(
            Duration::from_millis(1000),
            Duration::from_millis(5000),
            0.5,
            seed,
        )
    }

    pub fn new(min: Duration, max: Duration, jitter: f64, seed: u64) -> Self {
        Self {
            min,
            max,
            jitter: jitter.clamp(0.0, 1.0),
            attempts: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The delay before the next attempt (socket.io-client waits this long
    /// before its first reconnect too).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.min.as_secs_f64() * 1000.0 * 2f64.powi(self.attempts.min(31) as i32);
        self.attempts = self.attempts.saturating_add(1);
        let rand = self.rng.f64();
        let deviation = (rand * self.jitter * base).floor();
        // backo2 picks the sign from a digit of the same random number.
        let ms = if ((rand * 10.0).floor() as u64) & 1 == 0 {
            base - deviation
        } else {
            base + deviation
        };
        Duration::from_millis(ms.min(self.max.as_secs_f64() * 1000.0) as u64)
    }

    /// The delay after a failed attempt: the back-off, or longer when the
    /// node asked for a longer pause with `Retry-After`. socket.io-client in
    /// a browser cannot read that header (a refused WebSocket upgrade only
    /// shows as an error); its back-off starts at 0.5 to 1.5 s, which is as
    /// long as relay's `Retry-After: 1` on average.
    pub fn delay_after(&mut self, error: &ClientError) -> Duration {
        let delay = self.next_delay();
        error.retry_after().map_or(delay, |asked| delay.max(asked))
    }

    /// Attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_the_jitter_and_stop_at_the_cap() {
        for seed in 0..200 {
            let mut b = Backoff::socket_io(seed);
            let ms: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
            assert!((500..=1500).contains(&ms[0]), "{ms:?}");
            assert!((1000..=3000).contains(&ms[1]), "{ms:?}");
            assert!((2000..=5000).contains(&ms[2]), "{ms:?}");
            assert!(ms[3..].iter().all(|d| (4000..=5000).contains(d)), "{ms:?}");
            b.reset();
            assert!((500..=1500).contains(&b.next_delay().as_millis()));
        }
    }

    #[test]
    fn a_longer_retry_after_wins_over_the_back_off() {
        let refused = ClientError::Refused {
            status: 503,
            retry_after: Some(Duration::from_secs(4)),
        };
        let mut b = Backoff::socket_io(7);
        assert_eq!(b.delay_after(&refused), Duration::from_secs(4));
        let closed = ClientError::Closed;
        assert!(b.delay_after(&closed) >= Duration::from_secs(1));
    }
}
