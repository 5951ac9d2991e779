//! Peak EWMA of response time (Finagle's and Linkerd's, for `least_response_time`): a sample above the average
//! replaces it at once (the peak), one below pulls it down by the time since the last sample, and reading it decays
//! it towards zero by the time since then, so a backend nobody sent to lately looks cheaper and is tried again.
//! Time constant [`DECAY`]; a new backend starts at [`START`], pessimistic next to a fast local backend, so it is
//! drawn into the rotation gradually. Pure: time is passed in.

use std::time::{Duration, Instant};

/// The averages' time constant.
pub const DECAY: Duration = Duration::from_secs(10);

/// Where a backend with no sample starts (Linkerd's `default_rtt`).
pub const START: Duration = Duration::from_millis(30);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    /// Seconds.
    value: f64,
    stamp: Instant,
}

impl PeakEwma {
    pub fn new(now: Instant) -> PeakEwma {
        PeakEwma {
            value: START.as_secs_f64(),
            stamp: now,
        }
    }

    /// Takes a response time seen at `now`.
    pub fn observe(&mut self, latency: Duration, now: Instant) {
        let sample = latency.as_secs_f64();
        let kept = self.decayed(now);
        self.value = if sample > kept {
            sample
        } else {
            let weight = weight_of(now.saturating_duration_since(self.stamp));
            kept.mul_add(weight, sample * (1.0 - weight))
        };
        self.stamp = now;
    }

    /// The average at `now`, in seconds.
    pub fn get(&self, now: Instant) -> f64 {
        self.decayed(now)
    }

    fn decayed(&self, now: Instant) -> f64 {
        self.value * weight_of(now.saturating_duration_since(self.stamp))
    }
}

/// How much of the old value `elapsed` leaves: e^(-elapsed / DECAY).
fn weight_of(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_peak_counts_at_once_and_fades_with_time() {
        let start = Instant::now();
        let mut peak = PeakEwma::new(start);
        assert_eq!(peak.get(start), 0.030, "pessimistic start");
        peak.observe(200 * MS, start);
        assert_eq!(peak.get(start), 0.2, "a peak replaces the average at once");
        // Ten seconds later it has faded to 1/e.
        let later = start + DECAY;
        assert!((peak.get(later) - 0.2 / std::f64::consts::E).abs() < 1e-9);
    }

    #[test]
    fn fast_answers_pull_the_average_down_gradually() {
        let start = Instant::now();
        let mut peak = PeakEwma::new(start);
        peak.observe(100 * MS, start);
        let mut now = start;
        for _ in 0..100 {
            now += 100 * MS;
            peak.observe(MS, now);
        }
        // Ten seconds of 1 ms answers: 1 + 99 / e ≈ 37 ms (decay of the old value on both read and update).
        let value = peak.get(now);
        assert!(value > 0.001 && value < 0.040, "{value}");
        assert!(value < 0.1, "below the peak");
    }
}
