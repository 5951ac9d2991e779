//! A per-backend circuit breaker, as a state machine fed `(outcome, now)`: no clock, no I/O, so every transition
//! is unit-tested with time passed in. The states are named by what traffic does:
//!
//! - **Flowing** (closed): every request passes; `threshold` consecutive failures stop the traffic.
//! - **Stopped** (open): nothing passes until `until`; then the next request is a trial.
//! - **Trial** (half-open): at most `max_trials` requests at once pass as trials. A trial's success lets traffic
//!   flow again; a trial's failure stops it again, for twice as long as the last time (capped at
//!   [`MAX_OPEN_FACTOR`] times the configured open time), so a backend that keeps failing is tried less and less.
//!
//! `shard::BackendState` owns one per backend per core and feeds it every attempt's outcome; how the cores'
//! breakers combine is the control thread's (`control::breakers`, and ARCHITECTURE.md, "Circuit breaker").

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

/// Which trial period a trial was admitted in, so that giving one back ([`Breaker::give_back_trial`]) never frees
/// a slot of a later period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrialRound(u64);

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
    /// Trial periods begun; see [`TrialRound`].
    rounds: u64,
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
            rounds: 0,
        }
    }

    /// Takes new settings and keeps what traffic does now.
    pub fn reconfigure(&mut self, settings: BreakerSettings) {
        let fresh = Breaker::new(settings);
        if fresh.settings != self.settings {
            self.settings = fresh.settings;
            self.next_open_for = self.next_open_for.clamp(
                self.settings.open_for,
                self.settings.open_for.saturating_mul(MAX_OPEN_FACTOR),
            );
        }
    }

    pub fn settings(&self) -> BreakerSettings {
        self.settings
    }

    /// Consecutive failures counted while traffic flows (0 otherwise).
    pub fn consecutive_failures(&self) -> u32 {
        match self.traffic {
            Traffic::Flowing { consecutive_failures } => consecutive_failures,
            _ => 0,
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

    /// What [`admit`](Self::admit) would answer at `now`, changing nothing: for choosing among backends.
    pub fn peek(&self, now: Instant) -> Verdict {
        match self.traffic {
            Traffic::Flowing { .. } => Verdict::Pass,
            Traffic::Stopped { until } if now < until => Verdict::Refuse { until },
            Traffic::Stopped { .. } => Verdict::PassAsTrial,
            Traffic::Trial { in_flight } if in_flight < self.settings.max_trials => Verdict::PassAsTrial,
            Traffic::Trial { .. } => Verdict::TrialsFull,
        }
    }

    /// Whether a request may pass at `now`, taking a trial slot when it passes as a trial. A trial must be
    /// followed by its [`record`](Self::record), or given back with [`give_back_trial`](Self::give_back_trial)
    /// when it ended in a way that says nothing about the backend.
    pub fn admit(&mut self, now: Instant) -> (Verdict, TrialRound) {
        let verdict = self.peek(now);
        match (verdict, self.traffic) {
            (Verdict::PassAsTrial, Traffic::Stopped { .. }) => {
                self.rounds += 1;
                self.traffic = Traffic::Trial { in_flight: 1 };
            }
            (Verdict::PassAsTrial, Traffic::Trial { in_flight }) => {
                self.traffic = Traffic::Trial {
                    in_flight: in_flight + 1,
                };
            }
            _ => {}
        }
        (verdict, TrialRound(self.rounds))
    }

    /// Frees the slot of a trial of `round` that ended without an outcome (the client left, or the connection was
    /// a stale pooled one). Nothing happens when that trial period is over.
    pub fn give_back_trial(&mut self, round: TrialRound) {
        if let Traffic::Trial { in_flight } = self.traffic {
            if round.0 == self.rounds {
                self.traffic = Traffic::Trial {
                    in_flight: in_flight.saturating_sub(1),
                };
            }
        }
    }

    /// Stops traffic until `until` because the breakers of every core together saw enough failures (the control
    /// thread's order); a stop that already lasts longer stands. Counted as a trip when traffic was not stopped.
    pub fn stop_until(&mut self, until: Instant) {
        self.traffic = match self.traffic {
            Traffic::Stopped { until: own } => Traffic::Stopped { until: own.max(until) },
            _ => {
                self.trips += 1;
                Traffic::Stopped { until }
            }
        };
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
            breaker.admit(start).0,
            Verdict::Pass,
            "a success in between resets the count"
        );
        breaker.record(Attempt::Failed, start);
        let until = start + Duration::from_secs(10);
        assert_eq!(breaker.traffic(), Traffic::Stopped { until });
        assert_eq!(
            breaker.admit(start + Duration::from_secs(9)).0,
            Verdict::Refuse { until }
        );
        assert_eq!((breaker.state_name(), breaker.trips()), ("open", 1));
    }

    #[test]
    fn after_the_stop_at_most_max_trials_pass_and_a_success_lets_traffic_flow() {
        let start = Instant::now();
        let mut breaker = breaker(1, 2);
        breaker.record(Attempt::Failed, start);
        let later = start + Duration::from_secs(10);
        assert_eq!(breaker.admit(later).0, Verdict::PassAsTrial);
        assert_eq!(breaker.admit(later).0, Verdict::PassAsTrial);
        assert_eq!(breaker.admit(later).0, Verdict::TrialsFull, "only two trials at once");
        assert_eq!(breaker.state_name(), "half_open");
        breaker.record(Attempt::Succeeded, later);
        assert_eq!(breaker.admit(later).0, Verdict::Pass);
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
            assert_eq!(breaker.admit(now).0, Verdict::PassAsTrial);
            breaker.record(Attempt::Failed, now);
        }
        assert_eq!(stops, [10, 20, 40, 80, 160, 160, 160]);
        // Recovery: the next stop is the configured one again.
        let Traffic::Stopped { until } = breaker.traffic() else {
            panic!("expected stopped traffic");
        };
        assert_eq!(breaker.admit(until).0, Verdict::PassAsTrial);
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

    #[test]
    fn a_trial_given_back_frees_its_slot_but_never_one_of_a_later_period() {
        let start = Instant::now();
        let mut breaker = breaker(1, 1);
        breaker.record(Attempt::Failed, start);
        let later = start + Duration::from_secs(10);
        let (verdict, first_round) = breaker.admit(later);
        assert_eq!(verdict, Verdict::PassAsTrial);
        assert_eq!(breaker.admit(later).0, Verdict::TrialsFull);
        breaker.give_back_trial(first_round);
        assert_eq!(breaker.peek(later), Verdict::PassAsTrial, "the slot is free again");
        let (_, round) = breaker.admit(later);
        breaker.record(Attempt::Failed, later);
        let after = later + Duration::from_secs(20);
        assert_eq!(breaker.admit(after).0, Verdict::PassAsTrial, "a new trial period");
        breaker.give_back_trial(round);
        assert_eq!(breaker.peek(after), Verdict::TrialsFull, "an old round frees nothing");
    }

    #[test]
    fn an_order_to_stop_keeps_the_longer_stop_and_counts_one_trip() {
        let start = Instant::now();
        let mut breaker = breaker(1, 1);
        breaker.stop_until(start + Duration::from_secs(5));
        assert_eq!(
            breaker.peek(start),
            Verdict::Refuse {
                until: start + Duration::from_secs(5)
            }
        );
        breaker.stop_until(start + Duration::from_secs(1));
        assert_eq!(
            breaker.traffic(),
            Traffic::Stopped {
                until: start + Duration::from_secs(5)
            }
        );
        assert_eq!(
            breaker.trips(),
            1,
            "the second order extends nothing and is no new trip"
        );
        assert_eq!(breaker.admit(start + Duration::from_secs(5)).0, Verdict::PassAsTrial);
    }
}
