//! A small seeded random source (SplitMix64): every actor of the city gets
//! its own, derived from `--seed` and the actor's name, so a run's choices
//! do not depend on how the tasks happen to be scheduled.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// An independent stream for one actor (`"driver"`, 7) of the run.
    pub fn derive(seed: u64, actor: &str, index: u64) -> Self {
        // FNV-1a over the name, mixed with the index, then one round of
        // SplitMix so that neighbouring indices start far apart.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in actor.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut rng = Self::new(seed ^ h ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in [0, n); `n` must not be 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Exponentially distributed with the given mean: the gaps between
    /// independent arrivals (a Poisson process).
    pub fn exponential(&mut self, mean: Duration) -> Duration {
        let u = 1.0 - self.unit(); // (0, 1]
        mean.mul_f64(-u.ln())
    }

    /// Uniform duration in [lo, hi).
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        Duration::from_secs_f64(self.range(lo.as_secs_f64(), hi.as_secs_f64()))
    }

    /// `d` scaled by a factor in [1 - spread, 1 + spread).
    pub fn jitter(&mut self, d: Duration, spread: f64) -> Duration {
        d.mul_f64(self.range(1.0 - spread, 1.0 + spread).max(0.0))
    }

    /// Index chosen with probability proportional to its weight.
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len().saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_actors_differ() {
        let a: Vec<u64> = (0..5).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut d1 = Rng::derive(7, "driver", 1);
        let mut d1_again = Rng::derive(7, "driver", 1);
        let mut d2 = Rng::derive(7, "driver", 2);
        let mut m1 = Rng::derive(7, "merchant", 1);
        let x = d1.next_u64();
        assert_eq!(x, d1_again.next_u64());
        assert_ne!(x, d2.next_u64());
        assert_ne!(x, m1.next_u64());
    }

    #[test]
    fn draws_stay_in_range_and_look_uniform() {
        let mut rng = Rng::new(42);
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
            buckets[(u * 10.0) as usize] += 1;
            assert!(rng.below(3) < 3);
        }
        assert!(
            buckets.iter().all(|b| (800..1200).contains(b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn exponential_gaps_have_the_mean_asked_for() {
        let mut rng = Rng::new(1);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| rng.exponential(Duration::from_secs(2)).as_secs_f64())
            .sum();
        let mean = total / f64::from(n);
        assert!((1.9..2.1).contains(&mean), "{mean}");
    }

    #[test]
    fn weighted_prefers_heavy_items_and_never_picks_zero_weights() {
        let mut rng = Rng::new(3);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[rng.weighted(&[1.0, 0.0, 3.0])] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!(counts[2] > counts[0] * 2, "{counts:?}");
    }
}
