//! Weighted random: each pick draws a backend with probability proportional to its weight, from a cumulative
//! table built with the backend set (a binary search per draw). A backend below its full share (slow start,
//! dynamic weights) is kept with that probability, else drawn again; one not admitted is drawn again too. After a
//! few draws a scan from a random start takes any admitted backend, so a pick always ends.

use super::rng::FastRng;
use super::Candidates;

/// Draws before a pick falls back to a scan.
const DRAWS: usize = 16;

/// Weighted draws of an admitted backend, shared by random and power of two choices.
#[derive(Debug)]
pub struct WeightedDraw {
    /// `cumulative[i]`: the sum of the weights of backends 0..=i.
    cumulative: Vec<u64>,
    rng: FastRng,
}

impl WeightedDraw {
    pub fn new(weights: &[u32], seed: u64) -> WeightedDraw {
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &weight| {
                *sum += u64::from(weight);
                Some(*sum)
            })
            .collect();
        WeightedDraw {
            cumulative,
            rng: FastRng::new(seed),
        }
    }

    /// An admitted backend other than `other`, drawn by weight and kept with the probability of its share.
    pub fn draw(&self, candidates: &impl Candidates, other: Option<usize>) -> Option<usize> {
        let count = self.cumulative.len();
        let total = *self.cumulative.last()?;
        let usable = |index: usize| Some(index) != other && candidates.admitted(index);
        if total > 0 {
            for _ in 0..DRAWS {
                let ticket = self.rng.next_u64() % total;
                let index = self.cumulative.partition_point(|&sum| sum <= ticket);
                if usable(index) && self.rng.unit() < candidates.share(index) {
                    return Some(index);
                }
            }
        }
        let start = self.rng.below(count);
        (0..count)
            .map(|step| (start + step) % count)
            .find(|&index| usable(index))
    }
}

/// A backend drawn at random by weight.
#[derive(Debug)]
pub struct WeightedRandom(WeightedDraw);

impl WeightedRandom {
    pub fn new(weights: &[u32], seed: u64) -> WeightedRandom {
        WeightedRandom(WeightedDraw::new(weights, seed))
    }

    pub fn pick(&self, candidates: &impl Candidates) -> Option<usize> {
        self.0.draw(candidates, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Shares(Vec<f64>);

    impl Candidates for Shares {
        fn admitted(&self, index: usize) -> bool {
            self.0[index] > 0.0
        }
        fn takes_turn(&self, _: usize) -> bool {
            true
        }
        fn share(&self, index: usize) -> f64 {
            self.0[index]
        }
        fn in_flight(&self, _: usize) -> u32 {
            0
        }
    }

    fn counts(balancer: &WeightedRandom, candidates: &Shares, picks: usize) -> Vec<usize> {
        let mut seen = vec![0; candidates.0.len()];
        for _ in 0..picks {
            seen[balancer.pick(candidates).unwrap()] += 1;
        }
        seen
    }

    #[test]
    fn picks_follow_the_weights_with_a_fixed_seed() {
        let balancer = WeightedRandom::new(&[5, 3, 1, 1], 42);
        let seen = counts(&balancer, &Shares(vec![1.0; 4]), 100_000);
        for (index, expected) in [50_000, 30_000, 10_000, 10_000].into_iter().enumerate() {
            assert!(seen[index].abs_diff(expected) < 1_000, "{seen:?}");
        }
    }

    #[test]
    fn a_refused_backend_is_never_picked_and_a_share_thins_it_out() {
        let balancer = WeightedRandom::new(&[1, 1, 1], 7);
        let seen = counts(&balancer, &Shares(vec![0.0, 1.0, 0.25]), 50_000);
        assert_eq!(seen[0], 0);
        // 1 : 0.25 of the draws that land on them: a fifth for backend 2.
        assert!(seen[2].abs_diff(10_000) < 700, "{seen:?}");
        assert_eq!(balancer.pick(&Shares(vec![0.0; 3])), None);
    }
}
