//! A per-backend circuit breaker, as a state machine fed `(outcome, now)`: no clock, no I/O, so every transition
//! is unit-tested with time passed in. The states are named by what traffic does:
//!
//! - **Flowing** (closed): every request passes; `threshold` consecutive failures stop the traffic.
//! - **Stopped** (open): nothing passes until `until`; then the next request is a trial.
//! - **Trial** (half-open): at most `max_trials` requests at once pass as trials. A trial's success lets traffic
//!   flow again; a trial's failure stops it again, for twice as long as the last time (capped at
//!   [`MAX_OPEN_FACTOR`] times the configured open time), so a backend that keeps failing is tried less and less.
//!
//! Wiring it into `BackendState::admits`/`record` (and combining the cores' observations) is issue 13's next step;
//! this module is the part with no I/O.

use std::time::{Duration, Instant};

/// The open time doubles with each failed trial, up to this many times the configured one.
pub const MAX_OPEN_FACTOR: u32 = 16;

/// What the breaker is set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that stop the traffic (at least 1).
    pub threshold: u32,
    /// How long traffic stays stopped the first time.
    pub open_for: Duration,
    /// Trial requests allowed at once (at least 1).
    pub max_trials: u32,
}

/// What the breaker lets traffic do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    Flowing {
        consecutive_failures: u32,
    },
    Stopped {
        until: Instant,
    },
    Trial {
        /// Trials admitted and not yet reported.
        in_flight: u32,
    },
}

/// Whether one request may go to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Passes as one of the trials; its outcome decides what traffic does next.
    PassAsTrial,
    /// Refused until then (the breaker is open).
    Refuse {
        until: Instant,
    },
    /// Refused: every trial slot is taken, and the trials' outcomes will decide.
    TrialsFull,
}

/// How a request the breaker let pass ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Succeeded,
    Failed,
}

/// One backend's breaker on one core.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    traffic: Traffic,
    /// How long the next stop lasts: `open_for`, doubled after each failed trial, reset when traffic flows again.
    next_open_for: Duration,
    /// Times traffic was stopped, for the trips counter.
    trips: u64,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        let settings = BreakerSettings {
            threshold: settings.threshold.max(1),
            max_trials: settings.max_trials.max(1),
            ..settings
        };
        Breaker {
            settings,
            traffic: Traffic::Flowing {
                consecutive_failures: 0,
            },
            next_open_for: settings.open_for,
            trips: 0,
        }
    }

    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// The state's name in metrics and `ctl`: `closed`, `open` or `half_open`.
    pub fn state_name(&self) -> &'static str {
        match self.traffic {
            Traffic::Flowing { .. } => "closed",
            Traffic::Stopped { .. } => "open",
            Traffic::Trial { .. } => "half_open",
        }
    }

    /// How many times traffic was stopped.
    pub fn trips(&self) -> u64 {
        self.trips
    }

    /// Whether a request may pass at `now`. A [`Verdict::PassAsTrial`] must be followed by its [`record`].
    ///
    /// [`record`]: Breaker::record
    pub fn admit(&mut self, now: Instant) -> Verdict {
        match self.traffic {
            Traffic::Flowing { .. } => Verdict::Pass,
            Traffic::Stopped { until } if now < until => Verdict::Refuse { until },
            Traffic::Stopped { .. } => {
                self.traffic = Traffic::Trial { in_flight: 1 };
                Verdict::PassAsTrial
            }
            Traffic::Trial { in_flight } if in_flight < self.settings.max_trials => {
                self.traffic = Traffic::Trial {
                    in_flight: in_flight + 1,
                };
                Verdict::PassAsTrial
            }
            Traffic::Trial { .. } => Verdict::TrialsFull,
        }
    }

    /// Reports how a request that passed ended.
    pub fn record(&mut self, attempt: Attempt, now: Instant) {
        self.traffic = match (self.traffic, attempt) {
            (Traffic::Flowing { .. }, Attempt::Succeeded) => Traffic::Flowing {
                consecutive_failures: 0,
            },
            (Traffic::Flowing { consecutive_failures }, Attempt::Failed) => {
                let failures = consecutive_failures + 1;
                if failures >= self.settings.threshold {
                    self.stop(now)
                } else {
                    Traffic::Flowing {
                        consecutive_failures: failures,
                    }
                }
            }
            (Traffic::Trial { .. }, Attempt::Succeeded) => {
                self.next_open_for = self.settings.open_for;
                Traffic::Flowing {
                    consecutive_failures: 0,
                }
            }
            (Traffic::Trial { .. }, Attempt::Failed) => {
                let ceiling = self.settings.open_for.saturating_mul(MAX_OPEN_FACTOR);
                self.next_open_for = self.next_open_for.saturating_mul(2).min(ceiling);
                self.stop(now)
            }
            // A request admitted before the stop that ends after it changes nothing: the stop stands.
            (stopped @ Traffic::Stopped { .. }, _) => stopped,
        };
    }

    fn stop(&mut self, now: Instant) -> Traffic {
        self.trips += 1;
        Traffic::Stopped {
            until: now + self.next_open_for,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, max_trials: u32) -> Breaker {
        Breaker::new(BreakerSettings {
            threshold,
            open_for: Duration::from_secs(10),
            max_trials,
        })
    }

    #[test]
    fn traffic_stops_after_threshold_consecutive_failures_only() {
        let start = Instant::now();
        let mut breaker = breaker(3, 1);
        for _ in 0..2 {
            breaker.record(Attempt::Failed, start);
        }
        breaker.record(Attempt::Succeeded, start);
        for _ in 0..2 {
            breaker.record(Attempt::Failed, start);
        }
        assert_eq!(
            breaker.admit(start),
            Verdict::Pass,
            "a success in between resets the count"
        );
        breaker.record(Attempt::Failed, start);
        let until = start + Duration::from_secs(10);
        assert_eq!(breaker.traffic(), Traffic::Stopped { until });
        assert_eq!(breaker.admit(start + Duration::from_secs(9)), Verdict::Refuse { until });
        assert_eq!((breaker.state_name(), breaker.trips()), ("open", 1));
    }

    #[test]
    fn after_the_stop_at_most_max_trials_pass_and_a_success_lets_traffic_flow() {
        let start = Instant::now();
        let mut breaker = breaker(1, 2);
        breaker.record(Attempt::Failed, start);
        let later = start + Duration::from_secs(10);
        assert_eq!(breaker.admit(later), Verdict::PassAsTrial);
        assert_eq!(breaker.admit(later), Verdict::PassAsTrial);
        assert_eq!(breaker.admit(later), Verdict::TrialsFull, "only two trials at once");
        assert_eq!(breaker.state_name(), "half_open");
        breaker.record(Attempt::Succeeded, later);
        assert_eq!(breaker.admit(later), Verdict::Pass);
        assert_eq!(breaker.state_name(), "closed");
    }

    #[test]
    fn each_failed_trial_doubles_the_stop_up_to_a_ceiling_and_flowing_resets_it() {
        let mut now = Instant::now();
        let mut breaker = breaker(1, 1);
        breaker.record(Attempt::Failed, now);
        let mut stops = Vec::new();
        for _ in 0..7 {
            let Traffic::Stopped { until } = breaker.traffic() else {
                panic!("expected stopped traffic, got {:?}", breaker.traffic());
            };
            stops.push((until - now).as_secs());
            now = until;
            assert_eq!(breaker.admit(now), Verdict::PassAsTrial);
            breaker.record(Attempt::Failed, now);
        }
        assert_eq!(stops, [10, 20, 40, 80, 160, 160, 160]);
        // Recovery: the next stop is the configured one again.
        let Traffic::Stopped { until } = breaker.traffic() else {
            panic!("expected stopped traffic");
        };
        assert_eq!(breaker.admit(until), Verdict::PassAsTrial);
        breaker.record(Attempt::Succeeded, until);
        breaker.record(Attempt::Failed, until);
        assert_eq!(
            breaker.traffic(),
            Traffic::Stopped {
                until: until + Duration::from_secs(10)
            }
        );
        assert_eq!(breaker.trips(), 9);
    }

    #[test]
    fn a_late_outcome_does_not_end_a_stop() {
        let start = Instant::now();
        let mut breaker = breaker(1, 1);
        breaker.record(Attempt::Failed, start);
        breaker.record(Attempt::Succeeded, start + Duration::from_secs(1));
        assert_eq!(breaker.state_name(), "open");
    }
}
