//! Token bucket: `rate` tokens per second flow into a bucket holding at most `burst`; a request takes one.

use std::time::{Duration, Instant};

use super::Decision;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        let capacity = burst.max(1.0);
        TokenBucket {
            rate: rate.max(0.0),
            capacity,
            tokens: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.updated = now.max(self.updated);
    }

    pub fn check(&mut self, now: Instant) -> Decision {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Decision {
                allowed: true,
                remaining: self.tokens as u64,
                reset_after: self.time_to(self.capacity),
            }
        } else {
            Decision {
                allowed: false,
                remaining: 0,
                reset_after: self.time_to(1.0),
            }
        }
    }

    /// Time until the bucket holds `level` tokens.
    fn time_to(&self, level: f64) -> Duration {
        if self.tokens >= level {
            return Duration::ZERO;
        }
        if self.rate <= 0.0 {
            return Duration::from_secs(3600);
        }
        Duration::from_secs_f64(((level - self.tokens) / self.rate).min(3600.0))
    }

    pub fn set_rate(&mut self, rate: f64, burst: f64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(0.0);
        self.capacity = burst.max(1.0);
        self.tokens = self.tokens.min(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, start);
        let allowed = (0..8).filter(|_| bucket.check(start).allowed).count();
        assert_eq!(allowed, 5, "the burst, all at once");
        // 0.35 s later 3.5 tokens have flowed in: three requests pass.
        let later = start + Duration::from_millis(350);
        let allowed = (0..8).filter(|_| bucket.check(later).allowed).count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100.0, 4.0, start);
        for _ in 0..4 {
            bucket.check(start);
        }
        let much_later = start + Duration::from_secs(60);
        let allowed = (0..10).filter(|_| bucket.check(much_later).allowed).count();
        assert_eq!(allowed, 4);
    }

    #[test]
    fn reports_when_to_retry() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 1.0, start);
        assert!(bucket.check(start).allowed);
        let refused = bucket.check(start);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.reset_after, Duration::from_millis(500));
    }

    #[test]
    fn a_new_rate_keeps_the_tokens_counted() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 10.0, start);
        for _ in 0..10 {
            bucket.check(start);
        }
        bucket.set_rate(100.0, 10.0, start);
        assert!(!bucket.check(start).allowed, "an empty bucket stays empty");
        assert!(
            bucket.check(start + Duration::from_millis(10)).allowed,
            "and refills at the new rate"
        );
    }
}
