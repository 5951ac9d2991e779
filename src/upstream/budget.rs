//! The retry budget (Finagle's and Linkerd's): retries may add at most `ratio` of the requests seen over the last
//! `window`, plus a small reserve of `min_per_second` so that a quiet service can still retry. So when every
//! backend fails, retries cannot multiply the load on them: upstream attempts stay at most `1 + ratio` times the
//! client requests, plus the reserve. One budget per core, each with its share of the reserve (the way rate-limit
//! shares split a process-wide limit), so nothing is shared on the request path. Pure: time is passed in.

use std::time::{Duration, Instant};

use super::window::SlidingCounts;

/// What the budget is set to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    /// Retries allowed per request seen in the window (0.2: one retry per five requests).
    pub ratio: f64,
    /// Retries allowed per second besides, for this core.
    pub min_per_second: f64,
    pub window: Duration,
}

/// One core's retry budget: requests and retries over the window.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    settings: BudgetSettings,
    counts: SlidingCounts,
}

impl RetryBudget {
    pub fn new(settings: BudgetSettings, now: Instant) -> RetryBudget {
        RetryBudget {
            settings,
            counts: SlidingCounts::new(settings.window, now),
        }
    }

    pub fn settings(&self) -> BudgetSettings {
        self.settings
    }

    /// Counts a client request.
    pub fn request(&mut self, now: Instant) {
        self.counts.add(now, 1, 0);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.counts.sums(now);
        let reserve = self.settings.min_per_second * self.settings.window.as_secs_f64();
        let allowed = self.settings.ratio * requests as f64 + reserve;
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        self.counts.add(now, 0, 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(min_per_second: f64, now: Instant) -> RetryBudget {
        RetryBudget::new(
            BudgetSettings {
                ratio: 0.2,
                min_per_second,
                window: Duration::from_secs(10),
            },
            now,
        )
    }

    #[test]
    fn retries_are_a_fifth_of_the_requests_plus_the_reserve() {
        let now = Instant::now();
        let mut budget = budget(1.0, now);
        for _ in 0..100 {
            budget.request(now);
        }
        let granted = (0..1000).filter(|_| budget.try_retry(now)).count();
        assert_eq!(granted, 30, "0.2 x 100 requests + 1/s x 10 s");
    }

    #[test]
    fn without_requests_only_the_reserve_is_left_and_old_counts_leave_the_window() {
        let start = Instant::now();
        let mut budget = budget(0.5, start);
        assert_eq!((0..100).filter(|_| budget.try_retry(start)).count(), 5);
        // Ten seconds on, the spent retries have left the window.
        let later = start + Duration::from_secs(10);
        assert_eq!((0..100).filter(|_| budget.try_retry(later)).count(), 5);
        for _ in 0..50 {
            budget.request(later);
        }
        assert_eq!((0..100).filter(|_| budget.try_retry(later)).count(), 10);
    }

    #[test]
    fn under_a_full_outage_attempts_stay_within_the_ratio_plus_the_reserve() {
        let start = Instant::now();
        let mut budget = budget(1.0, start);
        let mut attempts = 0u64;
        let requests = 5000u64;
        for request in 0..requests {
            // 500 requests a second, each failing and asking for up to two retries.
            let now = start + Duration::from_millis(request * 2);
            budget.request(now);
            attempts += 1;
            for _ in 0..2 {
                if budget.try_retry(now) {
                    attempts += 1;
                }
            }
        }
        let ratio = attempts as f64 / requests as f64;
        assert!(ratio <= 1.2 + 10.0 / requests as f64 * 2.0, "amplification {ratio}");
        assert!(ratio > 1.15, "the budget is used, not refused: {ratio}");
    }
}
