//! Two counts over a sliding window of time, kept as ten buckets so that old counts leave it a bucket at a time:
//! requests and retries for the retry budget, requests and failures for outlier detection. Pure: time is passed
//! in.

use std::time::{Duration, Instant};

/// The window is kept as this many buckets.
const BUCKETS: usize = 10;

/// What one bucket counted.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which stretch of time it counts (time since `start` divided by the bucket width).
    index: u64,
    counts: [u64; 2],
}

/// Two counts over the last `window`.
#[derive(Debug, Clone)]
pub struct SlidingCounts {
    start: Instant,
    width: Duration,
    buckets: [Bucket; BUCKETS],
}

impl SlidingCounts {
    pub fn new(window: Duration, now: Instant) -> SlidingCounts {
        SlidingCounts {
            start: now,
            width: (window / BUCKETS as u32).max(Duration::from_millis(1)),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    /// Adds to both counts at `now`.
    pub fn add(&mut self, now: Instant, first: u64, second: u64) {
        let index = self.index(now);
        let bucket = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if bucket.index != index {
            *bucket = Bucket { index, counts: [0; 2] };
        }
        bucket.counts[0] += first;
        bucket.counts[1] += second;
    }

    /// Both counts over the window that ends at `now`.
    pub fn sums(&self, now: Instant) -> (u64, u64) {
        let current = self.index(now);
        self.buckets
            .iter()
            .filter(|bucket| bucket.index <= current && current - bucket.index < BUCKETS as u64)
            .fold((0, 0), |(first, second), bucket| {
                (first + bucket.counts[0], second + bucket.counts[1])
            })
    }

    /// Forgets everything counted.
    pub fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
        // Index 0 may be current again; a cleared bucket counts nothing either way.
    }

    fn index(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_nanos() / self.width.as_nanos().max(1)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_leave_the_window_a_bucket_at_a_time() {
        let start = Instant::now();
        let mut counts = SlidingCounts::new(Duration::from_secs(10), start);
        counts.add(start, 5, 1);
        counts.add(start + Duration::from_secs(5), 3, 2);
        assert_eq!(counts.sums(start + Duration::from_secs(5)), (8, 3));
        assert_eq!(
            counts.sums(start + Duration::from_secs(10)),
            (3, 2),
            "the first second has left"
        );
        assert_eq!(counts.sums(start + Duration::from_secs(15)), (0, 0));
        counts.add(start + Duration::from_secs(15), 1, 1);
        counts.clear();
        assert_eq!(counts.sums(start + Duration::from_secs(15)), (0, 0));
    }
}
