//! Waits between tries, and the small random source they and the health checks' jitter draw from. Pure: the
//! random number is passed in.

use std::time::Duration;

/// The wait before retry number `retry` (1 for the first): `base` doubled for each retry before it, capped at
/// `max`, then "equal jitter" — half of it fixed, half at random (`random` in `0..1`) — so that clients that
/// failed together do not retry together, and no retry comes at once after a failure.
pub fn backoff(base: Duration, max: Duration, retry: u32, random: f64) -> Duration {
    let doubled = base.saturating_mul(1u32 << retry.saturating_sub(1).min(16));
    let capped = doubled.min(max);
    capped / 2 + (capped / 2).mul_f64(random.clamp(0.0, 1.0))
}

/// A small xorshift generator: one per thread, no dependency, no shared state.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// A number in `0..1`.
    pub fn fraction(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_half_of_it_at_random() {
        let (base, max) = (Duration::from_millis(25), Duration::from_millis(250));
        let waits: Vec<u128> = (1..=6)
            .map(|retry| backoff(base, max, retry, 1.0).as_millis())
            .collect();
        assert_eq!(waits, [25, 50, 100, 200, 250, 250]);
        assert_eq!(backoff(base, max, 3, 0.0), Duration::from_millis(50), "half is fixed");
        let mut jitter = Jitter::new(3);
        for _ in 0..1000 {
            let fraction = jitter.fraction();
            assert!((0.0..1.0).contains(&fraction));
        }
    }
}
