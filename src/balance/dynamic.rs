//! Dynamic weights: each worker thins out the turns of a backend that answers slower or fails more than its
//! peers, from what it observed itself. A backend's *share* is the fraction of the turns the balancer offers it
//! that it takes (the rest pass to the next backend in the rotation), so its effective weight is its configured
//! weight times its share: the configured weight is the ceiling.
//!
//! Per backend, a worker keeps an exponentially weighted moving average (EWMA, time constant `decay`) of its time
//! to the response head and of its error rate, folded in every 100 ms from the samples since the last fold. Then
//!
//! ```text
//! share = clamp( (best + slack) / (latency + slack)  ×  1 / (1 + 10 × error_rate),  min_share, 1 )
//! ```
//!
//! where `best` is the lowest latency average among this worker's backends and `slack` keeps differences well
//! under it from mattering (on loopback two healthy backends differ by tens of microseconds). A backend with no
//! latency sample yet counts as the best. The error term halves the share at 10 % errors. `min_share` keeps every
//! backend measured, so a recovered one is seen to recover: its averages move back at the pace of `decay`, and
//! its share with them, gradually.
//!
//! Pure: samples and elapsed time are passed in, so the arithmetic is unit-tested without a clock.

use std::time::Duration;

/// How much a 100 % error rate divides the share by, minus one: 1 / (1 + 10 × rate).
const ERROR_PENALTY: f64 = 10.0;

/// `[balancer.dynamic_weights]`, as the workers use it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamicSettings {
    /// The EWMAs' time constant: an observation's weight falls to 1/e after this long.
    pub decay: Duration,
    /// Latency differences well under this hardly change a share.
    pub latency_slack: Duration,
    /// The least share a backend keeps.
    pub min_share: f64,
}

/// What one backend did on one worker since the last fold: a few adds on the request path.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Samples {
    responses: u32,
    latency_total: Duration,
    errors: u32,
}

impl Samples {
    /// A response head arrived `latency` after the request was sent.
    pub fn responded(&mut self, latency: Duration) {
        self.responses = self.responses.saturating_add(1);
        self.latency_total = self.latency_total.saturating_add(latency);
    }

    /// An attempt failed: no usable response, or a 5xx.
    pub fn failed(&mut self) {
        self.errors = self.errors.saturating_add(1);
    }

    fn attempts(&self) -> u32 {
        self.responses.saturating_add(self.errors)
    }
}

/// One backend's averages on one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Performance {
    /// Seconds to the response head; `None` until the first response.
    latency: Option<f64>,
    /// Share of attempts that failed, 0 to 1.
    error_rate: f64,
}

impl Performance {
    /// Folds in the samples of the last `elapsed`. A backend with no sample keeps its averages: nothing new was
    /// learnt about it.
    pub fn fold(&mut self, samples: Samples, elapsed: Duration, decay: Duration) {
        if samples.attempts() == 0 {
            return;
        }
        let alpha = if decay.is_zero() {
            1.0
        } else {
            1.0 - (-elapsed.as_secs_f64() / decay.as_secs_f64()).exp()
        };
        if samples.responses > 0 {
            let mean = samples.latency_total.as_secs_f64() / f64::from(samples.responses);
            self.latency = Some(self.latency.map_or(mean, |average| average + alpha * (mean - average)));
        }
        let rate = f64::from(samples.errors) / f64::from(samples.attempts());
        self.error_rate += alpha * (rate - self.error_rate);
    }

    pub fn latency(&self) -> Option<Duration> {
        self.latency.map(Duration::from_secs_f64)
    }

    pub fn error_rate(&self) -> f64 {
        self.error_rate
    }
}

/// The lowest latency average among `performances`, the reference a share is measured against.
pub fn best_latency(performances: impl IntoIterator<Item = Performance>) -> Option<f64> {
    performances
        .into_iter()
        .filter_map(|performance| performance.latency)
        .min_by(f64::total_cmp)
}

/// The share of its turns a backend with `performance` takes, given the best latency among its peers.
pub fn share(performance: &Performance, best: Option<f64>, settings: &DynamicSettings) -> f64 {
    let slack = settings.latency_slack.as_secs_f64();
    let latency_term = match (performance.latency, best) {
        (Some(own), Some(best)) if own + slack > 0.0 => (best + slack) / (own + slack),
        _ => 1.0,
    };
    let error_term = 1.0 / (1.0 + ERROR_PENALTY * performance.error_rate);
    (latency_term * error_term).clamp(settings.min_share.min(1.0), 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    fn settings() -> DynamicSettings {
        DynamicSettings {
            decay: Duration::from_secs(1),
            latency_slack: Duration::from_millis(5),
            min_share: 0.05,
        }
    }

    fn samples(responses: u32, latency: Duration, errors: u32) -> Samples {
        let mut samples = Samples::default();
        for _ in 0..responses {
            samples.responded(latency);
        }
        for _ in 0..errors {
            samples.failed();
        }
        samples
    }

    /// `ticks` folds of the same samples.
    fn run(performance: &mut Performance, ticks: u32, sample: Samples) {
        for _ in 0..ticks {
            performance.fold(sample, TICK, settings().decay);
        }
    }

    #[test]
    fn equal_backends_and_small_differences_keep_their_whole_share() {
        let settings = settings();
        let mut fast = Performance::default();
        let mut a_bit_slower = Performance::default();
        run(&mut fast, 20, samples(50, Duration::from_micros(100), 0));
        run(&mut a_bit_slower, 20, samples(50, Duration::from_micros(300), 0));
        let best = best_latency([fast, a_bit_slower]);
        assert_eq!(share(&fast, best, &settings), 1.0);
        let share = share(&a_bit_slower, best, &settings);
        assert!(share > 0.95, "200 µs slower than its peer under a 5 ms slack: {share}");
    }

    #[test]
    fn a_slow_backend_loses_share_within_a_decay_and_never_falls_below_the_floor() {
        let settings = settings();
        let fast = {
            let mut fast = Performance::default();
            run(&mut fast, 10, samples(50, Duration::from_millis(1), 0));
            fast
        };
        let mut slow = fast;
        // Made 100 ms slow: after one decay (10 ticks) the average has moved 63 % of the way.
        run(&mut slow, 10, samples(5, Duration::from_millis(100), 0));
        let latency = slow.latency().unwrap();
        assert!(
            latency > Duration::from_millis(60) && latency < Duration::from_millis(66),
            "{latency:?}"
        );
        let after_one_decay = share(&slow, best_latency([fast, slow]), &settings);
        assert!(after_one_decay < 0.1, "(1 + 5) / (63.6 + 5) ≈ 0.087: {after_one_decay}");
        // 300 ms slow: (1 + 5) / (300 + 5) ≈ 0.02, held at the floor.
        run(&mut slow, 30, samples(5, Duration::from_millis(300), 0));
        assert_eq!(share(&slow, best_latency([fast, slow]), &settings), 0.05, "the floor");
    }

    #[test]
    fn errors_cost_share_and_a_recovered_backend_regains_it_gradually() {
        let settings = settings();
        let mut failing = Performance::default();
        // Half its attempts fail: the error rate converges on 0.5 and the share on 1 / (1 + 5).
        run(&mut failing, 60, samples(10, Duration::from_millis(1), 10));
        assert!((failing.error_rate() - 0.5).abs() < 0.01, "{}", failing.error_rate());
        let low = share(&failing, best_latency([failing]), &settings);
        assert!((low - 1.0 / 6.0).abs() < 0.01, "{low}");
        // Recovered: the share climbs back over a few decays, not at once.
        let mut climb = Vec::new();
        for _ in 0..4 {
            run(&mut failing, 10, samples(20, Duration::from_millis(1), 0));
            climb.push(share(&failing, best_latency([failing]), &settings));
        }
        assert!(
            climb.windows(2).all(|pair| pair[0] < pair[1]),
            "rises each decay: {climb:?}"
        );
        assert!(climb[0] < 0.5, "not at once: {climb:?}");
        assert!(climb[3] > 0.9, "nearly all of it after four decays: {climb:?}");
    }

    #[test]
    fn no_samples_teach_nothing_and_a_new_backend_counts_as_the_best() {
        let settings = settings();
        let mut known = Performance::default();
        run(&mut known, 5, samples(10, Duration::from_millis(40), 0));
        let before = known;
        known.fold(Samples::default(), Duration::from_secs(60), settings.decay);
        assert_eq!(known, before, "an idle minute changes nothing");
        let new = Performance::default();
        assert_eq!(share(&new, best_latency([known, new]), &settings), 1.0);
        assert_eq!(
            share(&known, best_latency([known, new]), &settings),
            1.0,
            "the only latency is the best"
        );
    }
}
