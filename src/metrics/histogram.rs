//! A fixed-bucket latency histogram kept in plain per-core memory. Buckets suit a sub-millisecond proxy: from 50 µs
//! to 10 s. Merging is bucket-wise addition, so merged counts are exact.

/// Upper bounds, in seconds, of the finite buckets.
pub const BUCKETS: [f64; 18] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        let index = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        self.counts[index] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Cumulative counts per finite bucket, as Prometheus exposes them.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut running = 0;
        BUCKETS.iter().zip(&self.counts).map(move |(&bound, &count)| {
            running += count;
            (bound, running)
        })
    }

    /// The `q` quantile (0..=1), as the upper bound of the bucket it falls in; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut running = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            running += count;
            if running >= rank {
                return Some(BUCKETS.get(index).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observes_into_the_right_bucket_and_merges_exactly() {
        let mut first = Histogram::default();
        first.observe(0.00004);
        first.observe(0.0003);
        let mut second = Histogram::default();
        second.observe(20.0);
        first.merge(&second);
        assert_eq!(first.count(), 3);
        let cumulative: Vec<(f64, u64)> = first.cumulative().collect();
        assert_eq!(cumulative[0], (0.00005, 1));
        assert_eq!(cumulative[3], (0.0005, 2));
        assert_eq!(cumulative.last().unwrap().1, 2, "20s lands in +Inf only");
        assert!((first.sum() - 20.00034).abs() < 1e-9);
    }

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        let mut histogram = Histogram::default();
        assert_eq!(histogram.quantile(0.5), None);
        for _ in 0..99 {
            histogram.observe(0.0002);
        }
        histogram.observe(0.3);
        assert_eq!(histogram.quantile(0.5), Some(0.00025));
        assert_eq!(histogram.quantile(0.99), Some(0.00025));
        assert_eq!(histogram.quantile(1.0), Some(0.5));
    }
}
