//! One backend's health as its probes tell it, and when the next probe is due: pure, fed results and random
//! numbers, unit-tested without a clock.

use std::time::Duration;

pub use crate::upstream::backoff::Jitter;

/// A backend's checked health. It starts healthy (HAProxy's and Envoy's default: a new backend takes traffic at
/// once, and `unhealthy_threshold` failed probes take it out); it flips only after `unhealthy_threshold`
/// consecutive failed probes, and back after `healthy_threshold` consecutive passed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracker {
    healthy: bool,
    /// Consecutive probes that disagree with `healthy`.
    against: u32,
}

impl Default for Tracker {
    fn default() -> Tracker {
        Tracker {
            healthy: true,
            against: 0,
        }
    }
}

impl Tracker {
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Takes one probe's result; the new health when it flipped.
    pub fn observe(&mut self, passed: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> Option<bool> {
        if passed == self.healthy {
            self.against = 0;
            return None;
        }
        self.against += 1;
        let needed = if self.healthy {
            unhealthy_threshold
        } else {
            healthy_threshold
        };
        if self.against < needed.max(1) {
            return None;
        }
        self.healthy = passed;
        self.against = 0;
        Some(passed)
    }
}

/// The wait before a backend's first probe: `fraction` (in `0..1`) of the interval, so the first probes of many
/// backends spread over the first interval instead of all leaving at once.
pub fn first_wait(interval: Duration, fraction: f64) -> Duration {
    interval.mul_f64(fraction.clamp(0.0, 1.0))
}

/// The wait between two probes: the interval stretched or shrunk by up to `jitter` (a fraction), with `random`
/// in `0..1` choosing where.
pub fn next_wait(interval: Duration, jitter: f64, random: f64) -> Duration {
    let factor = 1.0 + jitter.clamp(0.0, 0.5) * (2.0 * random.clamp(0.0, 1.0) - 1.0);
    interval.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_flips_only_after_the_thresholds_of_consecutive_results() {
        let mut tracker = Tracker::default();
        assert!(tracker.healthy(), "a new backend is healthy");
        assert_eq!(tracker.observe(false, 2, 3), None);
        assert_eq!(tracker.observe(false, 2, 3), None);
        assert_eq!(
            tracker.observe(true, 2, 3),
            None,
            "a pass in between starts the count over"
        );
        assert_eq!(tracker.observe(false, 2, 3), None);
        assert_eq!(tracker.observe(false, 2, 3), None);
        assert_eq!(tracker.observe(false, 2, 3), Some(false));
        assert!(!tracker.healthy());
        assert_eq!(tracker.observe(false, 2, 3), None, "no flip while it stays down");
        assert_eq!(tracker.observe(true, 2, 3), None);
        assert_eq!(tracker.observe(true, 2, 3), Some(true));
    }

    #[test]
    fn waits_spread_the_first_probes_and_jitter_each_interval_within_bounds() {
        let interval = Duration::from_secs(10);
        assert_eq!(first_wait(interval, 0.25), Duration::from_millis(2500));
        assert_eq!(next_wait(interval, 0.15, 0.0), Duration::from_millis(8500));
        assert_eq!(next_wait(interval, 0.15, 0.5), interval);
        assert_eq!(next_wait(interval, 0.15, 1.0), Duration::from_millis(11500));
        let mut jitter = Jitter::new(7);
        for _ in 0..1000 {
            let wait = next_wait(interval, 0.15, jitter.fraction());
            assert!((Duration::from_millis(8500)..=Duration::from_millis(11500)).contains(&wait));
        }
    }
}
