//! How the workers' circuit breakers combine. Each worker keeps its own breaker per backend and stops traffic on
//! its own the moment it has seen `threshold` consecutive failures (fast, nothing shared). Each worker also tells
//! the control thread when its count of consecutive failures moves, when it trips and when a trial closes it
//! again (`shard::BreakerNews`; nothing is sent while a backend answers well). Here those counts are summed per
//! backend: once the workers together have seen `threshold` consecutive failures, or any one of them tripped,
//! every worker is told to stop traffic to the backend. So a dead backend costs about `threshold` failed requests
//! in all, not `threshold` per worker; the exact bound is in ARCHITECTURE.md ("Circuit breaker").
//!
//! Pure bookkeeping, fed `(news, now)`, unit-tested with time passed in; the control loop sends the orders.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::shard::{BreakerChange, BreakerNews};

/// What the control thread does about one piece of news.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Tell every worker to stop traffic to `backend` until `until`.
    StopEverywhere {
        backend: String,
        until: Instant,
        /// Consecutive failures the workers had counted together.
        failures: u32,
        /// The worker whose own breaker tripped, when one did.
        tripped_on: Option<usize>,
    },
    /// A worker's trial succeeded after a stop: traffic flows again (the other workers try on their own).
    Recovered { backend: String, worker: usize },
}

/// One backend's combined view.
#[derive(Debug, Default)]
struct Combined {
    /// Consecutive failures each worker has counted.
    failures: Vec<u32>,
    /// Until when every worker was last told to stop.
    stopped_until: Option<Instant>,
    /// Stopped since the last recovery: the next trial success is logged.
    awaiting_recovery: bool,
}

/// Every backend's combined breaker view.
#[derive(Debug, Default)]
pub struct Breakers {
    backends: HashMap<String, Combined>,
}

impl Breakers {
    /// Takes one worker's news. `threshold` and `open_for` are the current `[circuitbreaker]` settings.
    pub fn observe(
        &mut self,
        news: &BreakerNews,
        workers: usize,
        threshold: u32,
        open_for: Duration,
        now: Instant,
    ) -> Option<Decision> {
        let combined = self.backends.entry(news.backend.clone()).or_default();
        combined.failures.resize(workers.max(news.worker + 1), 0);
        let stopped = combined.stopped_until.is_some_and(|until| now < until);
        match news.change {
            BreakerChange::FailureCounted { consecutive } => {
                // Failures of requests that passed before the stop reached their worker: the stop stands.
                if stopped {
                    combined.failures[news.worker] = 0;
                    return None;
                }
                combined.failures[news.worker] = consecutive;
                let failures: u32 = combined.failures.iter().sum();
                if failures < threshold {
                    return None;
                }
                Some(stop_everywhere(combined, &news.backend, now + open_for, failures, None))
            }
            BreakerChange::Cleared => {
                combined.failures[news.worker] = 0;
                None
            }
            BreakerChange::Tripped { until } => {
                let failures = combined.failures.iter().sum::<u32>().max(threshold);
                if stopped {
                    // Another worker tripped before the order reached it: every worker is stopped already.
                    combined.failures.fill(0);
                    return None;
                }
                Some(stop_everywhere(
                    combined,
                    &news.backend,
                    until,
                    failures,
                    Some(news.worker),
                ))
            }
            BreakerChange::Closed => {
                combined.failures[news.worker] = 0;
                let first = std::mem::replace(&mut combined.awaiting_recovery, false);
                first.then(|| Decision::Recovered {
                    backend: news.backend.clone(),
                    worker: news.worker,
                })
            }
        }
    }

    /// Forgets backends no longer configured.
    pub fn retain(&mut self, configured: impl Fn(&str) -> bool) {
        self.backends.retain(|id, _| configured(id));
    }
}

fn stop_everywhere(
    combined: &mut Combined,
    backend: &str,
    until: Instant,
    failures: u32,
    tripped_on: Option<usize>,
) -> Decision {
    combined.failures.fill(0);
    combined.stopped_until = Some(until);
    combined.awaiting_recovery = true;
    Decision::StopEverywhere {
        backend: backend.to_string(),
        until,
        failures,
        tripped_on,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(30);

    fn news(worker: usize, change: BreakerChange) -> BreakerNews {
        BreakerNews {
            worker,
            backend: "a".into(),
            change,
        }
    }

    fn failures(worker: usize, consecutive: u32) -> BreakerNews {
        news(worker, BreakerChange::FailureCounted { consecutive })
    }

    #[test]
    fn failures_on_several_workers_add_up_to_one_stop_everywhere() {
        let now = Instant::now();
        let mut breakers = Breakers::default();
        assert_eq!(breakers.observe(&failures(0, 1), 2, 4, OPEN_FOR, now), None);
        assert_eq!(breakers.observe(&failures(1, 1), 2, 4, OPEN_FOR, now), None);
        assert_eq!(breakers.observe(&failures(0, 2), 2, 4, OPEN_FOR, now), None);
        let decision = breakers.observe(&failures(1, 2), 2, 4, OPEN_FOR, now);
        assert_eq!(
            decision,
            Some(Decision::StopEverywhere {
                backend: "a".into(),
                until: now + OPEN_FOR,
                failures: 4,
                tripped_on: None,
            })
        );
        // A failure of a request that passed before the order arrived changes nothing.
        assert_eq!(breakers.observe(&failures(0, 3), 2, 4, OPEN_FOR, now), None);
    }

    #[test]
    fn a_success_on_one_worker_takes_its_failures_out_of_the_sum() {
        let now = Instant::now();
        let mut breakers = Breakers::default();
        breakers.observe(&failures(0, 3), 2, 4, OPEN_FOR, now);
        breakers.observe(&news(0, BreakerChange::Cleared), 2, 4, OPEN_FOR, now);
        assert_eq!(breakers.observe(&failures(1, 1), 2, 4, OPEN_FOR, now), None);
    }

    #[test]
    fn one_trip_is_ordered_everywhere_once_and_one_recovery_is_reported_once() {
        let now = Instant::now();
        let until = now + Duration::from_secs(10);
        let mut breakers = Breakers::default();
        let tripped = breakers.observe(&news(1, BreakerChange::Tripped { until }), 2, 4, OPEN_FOR, now);
        assert!(matches!(
            tripped,
            Some(Decision::StopEverywhere { tripped_on: Some(1), until: at, .. }) if at == until
        ));
        assert_eq!(
            breakers.observe(&news(0, BreakerChange::Tripped { until }), 2, 4, OPEN_FOR, now),
            None,
            "the second worker's trip is the same stop"
        );
        let recovered = breakers.observe(&news(0, BreakerChange::Closed), 2, 4, OPEN_FOR, until);
        assert_eq!(
            recovered,
            Some(Decision::Recovered {
                backend: "a".into(),
                worker: 0
            })
        );
        assert_eq!(
            breakers.observe(&news(1, BreakerChange::Closed), 2, 4, OPEN_FOR, until),
            None
        );
        // A failed trial after the stop ended reopens it everywhere.
        let again = until + Duration::from_secs(20);
        let reopened = breakers.observe(&news(1, BreakerChange::Tripped { until: again }), 2, 4, OPEN_FOR, until);
        assert!(matches!(reopened, Some(Decision::StopEverywhere { .. })));
    }
}
