//! Rate-limited warnings: a backend that is down, or a worker out of descriptors, must not flood the log (and the
//! worker) with a line per request.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Warnings of one kind are logged at most this often per worker.
const WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// Lets one warning of a kind through a second, so a backend that is down does not flood the log (and the worker)
/// with a line per request; counts what it held back.
#[derive(Debug, Default)]
pub struct WarningGate {
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl WarningGate {
    /// `Some(held back since the last one)` when a warning may be logged now.
    pub fn open(&self, now: Instant) -> Option<u64> {
        match self.last.get() {
            Some(last) if now.saturating_duration_since(last) < WARNING_INTERVAL => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
            }
        }
    }
}
