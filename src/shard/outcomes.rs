//! What one worker saw of each backend's answers since its last report, for passive outlier detection. The worker
//! only counts (two cells per backend, no message per request); every [`REPORT_INTERVAL`] it sends the counts of
//! the backends that had traffic to the control thread, which adds up every worker's counts and decides on
//! ejections (`control::outliers`), the way it combines the workers' breakers.

use std::net::SocketAddr;
use std::time::Duration;

/// How often a worker sends its counts (only when there is something to send).
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);
// A gateway error is reported at once rather than at the next interval: a hung backend costs a per-try timeout
// for every request picked for it before its ejection, so the ejection must not wait for the interval. A worker
// sends at most `outlier_detection.consecutive_errors` such early reports per interval, so that a backend failing
// all the time does not cost a message per request (`WorkerContext::record`).

/// One backend's answers on one worker since the last report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Attempts that ended (a response, or a failure).
    pub requests: u32,
    /// Attempts that ended in a gateway error: a failed connect, a fresh connection lost before any answer, a
    /// late or malformed answer, or one of `outlier_detection.failure_statuses`.
    pub failures: u32,
    /// Gateway errors in a row right now (a success ends the run).
    pub consecutive: u32,
    /// The longest run of gateway errors since the last report, so that a run ended by a success between two
    /// reports is still seen.
    pub longest_run: u32,
}

impl Tally {
    /// Counts one ended attempt.
    pub fn count(&mut self, failed: bool) {
        self.requests = self.requests.saturating_add(1);
        if failed {
            self.failures = self.failures.saturating_add(1);
            self.consecutive = self.consecutive.saturating_add(1);
            self.longest_run = self.longest_run.max(self.consecutive);
        } else {
            self.consecutive = 0;
        }
    }

    /// Whether a gateway error waits to be reported.
    pub fn has_failures(&self) -> bool {
        self.failures > 0
    }

    /// Whether there is anything to report.
    pub fn has_news(&self) -> bool {
        self.requests > 0
    }

    /// The counts to report; what stays is the current run, which the next report goes on from.
    pub fn take(&mut self) -> Tally {
        let taken = *self;
        *self = Tally {
            consecutive: self.consecutive,
            longest_run: self.consecutive,
            ..Tally::default()
        };
        taken
    }
}

/// One backend's counts in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTally {
    pub backend: String,
    pub addr: SocketAddr,
    pub tally: Tally,
}

/// One worker's counts since its last report, on their way to the control thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeReport {
    pub worker: usize,
    pub backends: Vec<BackendTally>,
}

impl OutcomeReport {
    /// Whether any backend failed: worth deciding on at once.
    pub fn has_failures(&self) -> bool {
        self.backends.iter().any(|entry| entry.tally.has_failures())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_keeps_the_longest_run_between_reports_and_carries_the_current_one() {
        let mut tally = Tally::default();
        assert!(!tally.has_news());
        for failed in [true, true, true, false, true] {
            tally.count(failed);
        }
        let taken = tally.take();
        assert_eq!(
            taken,
            Tally {
                requests: 5,
                failures: 4,
                consecutive: 1,
                longest_run: 3
            }
        );
        assert!(!tally.has_news(), "counted once");
        tally.count(true);
        assert_eq!(tally.take().consecutive, 2, "the run goes on across reports");
    }
}
