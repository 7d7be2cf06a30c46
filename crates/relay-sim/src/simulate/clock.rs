//! Simulated time: the city runs `speed` times faster than the wall clock.
//! Durations in the simulation (a rider's think time, a kitchen's prep
//! time, a ride) are stated in city time and slept in real time.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    speed: f64,
}

/// Why a sleep ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

impl Clock {
    pub fn new(speed: f64) -> Self {
        Self {
            speed: speed.max(f64::MIN_POSITIVE),
        }
    }

    /// The wall-clock time that `city` of city time takes.
    pub fn real(self, city: Duration) -> Duration {
        city.div_f64(self.speed)
    }

    /// The city time that passes in `real` wall-clock time.
    pub fn city(self, real: Duration) -> Duration {
        real.mul_f64(self.speed)
    }

    /// A timer the relay runs on the wall clock (`accept_timeout_s`,
    /// `timer_s`), for a city-time timeout: whole seconds, at least
    /// `floor_s` so that an accelerated city still leaves people time to
    /// answer over the network.
    pub fn timer_s(self, city: Duration, floor_s: u32) -> u32 {
        let s = self.real(city).as_secs_f64().ceil();
        (s as u32).max(floor_s)
    }

    /// Sleeps `city` of city time; `Err(Stopped)` when the run ends first.
    pub async fn sleep(self, city: Duration, stop: &CancellationToken) -> Result<(), Stopped> {
        real_sleep(self.real(city), stop).await
    }
}

/// Sleeps `real` wall-clock time; `Err(Stopped)` when the run ends first.
pub async fn real_sleep(real: Duration, stop: &CancellationToken) -> Result<(), Stopped> {
    tokio::select! {
        () = tokio::time::sleep(real) => Ok(()),
        () = stop.cancelled() => Err(Stopped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_both_ways() {
        let clock = Clock::new(10.0);
        assert_eq!(clock.real(Duration::from_secs(60)), Duration::from_secs(6));
        assert_eq!(clock.city(Duration::from_secs(6)), Duration::from_secs(60));
    }

    #[test]
    fn relay_timers_are_whole_seconds_with_a_floor() {
        let clock = Clock::new(10.0);
        assert_eq!(clock.timer_s(Duration::from_secs(60), 3), 6);
        assert_eq!(clock.timer_s(Duration::from_secs(61), 3), 7);
        assert_eq!(clock.timer_s(Duration::from_secs(5), 3), 3);
        assert_eq!(Clock::new(1.0).timer_s(Duration::from_secs(30), 3), 30);
    }

    #[tokio::test]
    async fn a_sleep_ends_early_when_the_run_stops() {
        let clock = Clock::new(1000.0);
        let stop = CancellationToken::new();
        let started = std::time::Instant::now();
        assert_eq!(clock.sleep(Duration::from_secs(10), &stop).await, Ok(()));
        assert!(started.elapsed() >= Duration::from_millis(10));
        stop.cancel();
        // An hour of city time would be 3.6 s: the stop ends it at once.
        let started = std::time::Instant::now();
        assert_eq!(
            clock.sleep(Duration::from_secs(3600), &stop).await,
            Err(Stopped)
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
