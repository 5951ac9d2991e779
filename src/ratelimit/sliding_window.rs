//! Sliding window counter: the count of the current one-second window plus the previous window's count weighted by
//! how much of it still overlaps the last second. Smooth at window edges, two counters of memory.

use std::time::{Duration, Instant};

use super::Decision;

const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct SlidingWindow {
    /// Requests allowed per second.
    limit: f64,
    window_start: Instant,
    current: f64,
    previous: f64,
}

impl SlidingWindow {
    pub fn new(rate: f64, now: Instant) -> SlidingWindow {
        SlidingWindow {
            limit: rate.max(0.0),
            window_start: now,
            current: 0.0,
            previous: 0.0,
        }
    }

    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW * 2 {
            self.previous = 0.0;
            self.current = 0.0;
            self.window_start = now;
        } else if elapsed >= WINDOW {
            self.previous = self.current;
            self.current = 0.0;
            self.window_start += WINDOW;
        }
    }

    pub fn check(&mut self, now: Instant) -> Decision {
        self.advance(now);
        let into = now.saturating_duration_since(self.window_start).as_secs_f64() / WINDOW.as_secs_f64();
        let estimate = self.previous * (1.0 - into) + self.current;
        let reset_after = (self.window_start + WINDOW).saturating_duration_since(now);
        if estimate + 1.0 <= self.limit {
            self.current += 1.0;
            Decision {
                allowed: true,
                remaining: (self.limit - estimate - 1.0).max(0.0) as u64,
                reset_after,
            }
        } else {
            Decision {
                allowed: false,
                remaining: 0,
                reset_after,
            }
        }
    }

    pub fn set_rate(&mut self, rate: f64) {
        self.limit = rate.max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_limit_per_window() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(10.0, start);
        let allowed = (0..20).filter(|_| window.check(start).allowed).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn the_previous_window_weighs_in_at_the_edge() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(10.0, start);
        for _ in 0..10 {
            window.check(start);
        }
        // A quarter into the next window, 7.5 of the previous 10 still count: 2 more fit.
        let edge = start + Duration::from_millis(1250);
        let allowed = (0..10).filter(|_| window.check(edge).allowed).count();
        assert_eq!(allowed, 2);
        // Two windows later everything has slid out.
        let later = start + Duration::from_millis(3100);
        assert_eq!((0..20).filter(|_| window.check(later).allowed).count(), 10);
    }

    #[test]
    fn refusals_say_when_the_window_turns() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(1.0, start);
        assert!(window.check(start).allowed);
        let refused = window.check(start + Duration::from_millis(400));
        assert!(!refused.allowed);
        assert_eq!(refused.reset_after, Duration::from_millis(600));
    }
}
