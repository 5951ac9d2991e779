//! Backend selection. A [`Balancer`] is built once per backend-set change and owned by one worker, so its state is
//! plain `Cell`s; each pick is a few lines. Health, breakers, ejection and draining are applied outside the
//! algorithm through [`Candidates::admitted`]; slow start and dynamic weights through [`Candidates::takes_turn`]
//! (the rotations: a declined turn passes on) or [`Candidates::share`] (the load-based and random algorithms: a
//! backend's weight counts times its share).
//!
//! Every algorithm decides per worker, from what that worker knows: its own requests in flight, its own random
//! draws. Nothing on the request path is shared between cores.

use std::cell::Cell;

pub mod dynamic;
pub mod hash;
pub mod least;
pub mod peak;
pub mod random;
pub mod rng;

use crate::config::Algorithm;
use hash::{ConsistentHash, Method};
use least::{LeastConnections, LeastResponseTime, PowerOfTwo};
use random::WeightedRandom;

/// What a balancer may ask about backend `index` while it picks.
pub trait Candidates {
    /// Whether it may take this request at all (health, breaker, ejection, draining, already tried). No side
    /// effect: a balancer may ask it of every backend.
    fn admitted(&self, index: usize) -> bool;
    /// Whether it takes the turn it is offered: slow start and dynamic weights let it take only a share of its
    /// turns, by a credit counter that this spends. Asked only of the one backend a rotation is about to pick.
    fn takes_turn(&self, index: usize) -> bool;
    /// The share of its weight it has now (slow start × dynamic weights), 0 to 1.
    fn share(&self, index: usize) -> f64;
    /// Requests this worker has in flight to it.
    fn in_flight(&self, index: usize) -> u32;
    /// Its response time as `least_response_time` counts it (peak EWMA, seconds); only that algorithm asks.
    fn response_time(&self, _index: usize) -> f64 {
        0.0
    }
    /// The request's hash key (`ip_hash`, `consistent_hash`); only those algorithms ask.
    fn hash_key(&self) -> u64 {
        0
    }
}

/// Every backend admitted, at its full share and idle: for warming a rotation up, and for benchmarks.
pub struct Everyone;

impl Candidates for Everyone {
    fn admitted(&self, _: usize) -> bool {
        true
    }
    fn takes_turn(&self, _: usize) -> bool {
        true
    }
    fn share(&self, _: usize) -> f64 {
        1.0
    }
    fn in_flight(&self, _: usize) -> u32 {
        0
    }
}

/// Per-worker selection state for one backend set.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
    Weighted(SmoothWeighted),
    LeastConnections(LeastConnections),
    PowerOfTwo(PowerOfTwo),
    Random(WeightedRandom),
    LeastResponseTime(LeastResponseTime),
    Hashed(ConsistentHash),
}

impl Balancer {
    /// The balancer for backends with these `ids` and `weights` (in config order); `seed` starts the worker's
    /// random draws, `method` is how the hashing algorithms map keys.
    pub fn new(algorithm: Algorithm, method: Method, ids: &[&str], weights: &[u32], seed: u64) -> Balancer {
        match algorithm {
            Algorithm::IpHash | Algorithm::ConsistentHash => {
                Balancer::Hashed(ConsistentHash::new(method, ids, weights))
            }
            Algorithm::RoundRobin => Balancer::RoundRobin(RoundRobin::new(weights.len())),
            Algorithm::WeightedRoundRobin => Balancer::Weighted(SmoothWeighted::new(weights)),
            Algorithm::LeastConnections => Balancer::LeastConnections(LeastConnections::new(weights, seed)),
            Algorithm::PowerOfTwo => Balancer::PowerOfTwo(PowerOfTwo::new(weights, seed)),
            Algorithm::Random => Balancer::Random(WeightedRandom::new(weights, seed)),
            Algorithm::LeastResponseTime => Balancer::LeastResponseTime(LeastResponseTime::new(weights, seed)),
        }
    }

    /// Picks the index of a backend the candidates admit, or `None` when they admit none.
    pub fn pick(&self, candidates: &impl Candidates) -> Option<usize> {
        let rotation = |index| candidates.admitted(index) && candidates.takes_turn(index);
        match self {
            Balancer::RoundRobin(round_robin) => round_robin.pick(rotation),
            Balancer::Weighted(weighted) => weighted.pick(rotation),
            Balancer::LeastConnections(least) => least.pick(candidates),
            Balancer::PowerOfTwo(two) => two.pick(candidates),
            Balancer::Random(random) => random.pick(candidates),
            Balancer::LeastResponseTime(fastest) => fastest.pick(candidates),
            Balancer::Hashed(hashed) => hashed.pick(candidates.hash_key(), candidates),
        }
    }
}

/// Each admitted backend in turn.
#[derive(Debug)]
pub struct RoundRobin {
    count: usize,
    next: Cell<usize>,
}

impl RoundRobin {
    pub fn new(count: usize) -> RoundRobin {
        RoundRobin {
            count,
            next: Cell::new(0),
        }
    }

    pub fn pick(&self, admit: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.next.get();
        for step in 0..self.count {
            let index = (start + step) % self.count;
            if admit(index) {
                self.next.set((index + 1) % self.count);
                return Some(index);
            }
        }
        None
    }
}

/// Longest precomputed schedule; beyond it (huge weight sums) picks run the algorithm live.
const MAX_SCHEDULE: u64 = 1 << 16;

/// nginx's smooth weighted round-robin: every pick adds each admitted backend's weight to its running score, takes
/// the highest, and subtracts the total from the winner. Over any window of `sum(weights)` picks each backend is
/// chosen exactly `weight` times, interleaved rather than in bursts.
///
/// With every backend admitted the sequence is periodic, so it is computed once when the backend set changes and a
/// pick is an index into it: O(1) whatever the number of backends. A refused backend is skipped in the sequence,
/// which keeps the others' proportions. Weight sums above `MAX_SCHEDULE` run the algorithm per pick.
#[derive(Debug)]
pub struct SmoothWeighted {
    weights: Vec<i64>,
    current: Vec<Cell<i64>>,
    schedule: Vec<u32>,
    cursor: Cell<usize>,
}

impl SmoothWeighted {
    pub fn new(weights: &[u32]) -> SmoothWeighted {
        let mut balancer = SmoothWeighted {
            weights: weights.iter().map(|&weight| i64::from(weight)).collect(),
            current: weights.iter().map(|_| Cell::new(0)).collect(),
            schedule: Vec::new(),
            cursor: Cell::new(0),
        };
        let total: u64 = weights.iter().map(|&weight| u64::from(weight)).sum();
        if total <= MAX_SCHEDULE {
            balancer.schedule = (0..total)
                .filter_map(|_| balancer.pick_live(|_| true))
                .map(|index| index as u32)
                .collect();
        }
        balancer
    }

    pub fn pick(&self, admit: impl Fn(usize) -> bool) -> Option<usize> {
        if self.schedule.is_empty() {
            return self.pick_live(admit);
        }
        let start = self.cursor.get();
        let length = self.schedule.len();
        for step in 0..length {
            let position = (start + step) % length;
            let index = self.schedule[position] as usize;
            if admit(index) {
                self.cursor.set((position + 1) % length);
                return Some(index);
            }
        }
        None
    }

    fn pick_live(&self, admit: impl Fn(usize) -> bool) -> Option<usize> {
        let mut total = 0;
        let mut best: Option<(usize, i64)> = None;
        for (index, (&weight, current)) in self.weights.iter().zip(&self.current).enumerate() {
            if !admit(index) {
                continue;
            }
            let score = current.get() + weight;
            current.set(score);
            total += weight;
            if best.is_none_or(|(_, best_score)| score > best_score) {
                best = Some((index, score));
            }
        }
        let (index, score) = best?;
        self.current[index].set(score - total);
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every backend admitted except those `refused` lists.
    struct Refusing(Vec<usize>);

    impl Candidates for Refusing {
        fn admitted(&self, index: usize) -> bool {
            !self.0.contains(&index)
        }
        fn takes_turn(&self, _: usize) -> bool {
            true
        }
        fn share(&self, _: usize) -> f64 {
            1.0
        }
        fn in_flight(&self, _: usize) -> u32 {
            0
        }
    }

    fn picks(balancer: &Balancer, count: usize) -> Vec<usize> {
        (0..count).map(|_| balancer.pick(&Everyone).unwrap()).collect()
    }

    #[test]
    fn round_robin_cycles_in_order() {
        let balancer = Balancer::new(Algorithm::RoundRobin, Method::Maglev, &[], &[1, 1, 1], 1);
        assert_eq!(picks(&balancer, 7), [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn round_robin_skips_refused_backends() {
        let balancer = Balancer::new(Algorithm::RoundRobin, Method::Maglev, &[], &[1, 1, 1], 1);
        let chosen: Vec<usize> = (0..4).map(|_| balancer.pick(&Refusing(vec![1])).unwrap()).collect();
        assert_eq!(chosen, [0, 2, 0, 2]);
        assert_eq!(balancer.pick(&Refusing(vec![0, 1, 2])), None);
    }

    #[test]
    fn smooth_weighted_is_exact_and_interleaved_in_every_window() {
        let balancer = Balancer::new(Algorithm::WeightedRoundRobin, Method::Maglev, &[], &[5, 3, 1], 1);
        let sequence = picks(&balancer, 9 * 20);
        for window in sequence.chunks(9) {
            let count = |backend| window.iter().filter(|&&index| index == backend).count();
            assert_eq!((count(0), count(1), count(2)), (5, 3, 1), "{window:?}");
        }
        // nginx's documented order for 5:3:1 (a a b a c a b a b in its example, by index).
        assert_eq!(&sequence[..9], [0, 1, 0, 2, 0, 1, 0, 1, 0]);
        // Never more than two of the heaviest in a row: interleaved, not bursts.
        assert!(sequence.windows(3).all(|run| run.iter().any(|&index| index != 0)));
    }

    #[test]
    fn huge_weight_sums_run_the_algorithm_live_with_the_same_proportions() {
        let balancer = Balancer::new(Algorithm::WeightedRoundRobin, Method::Maglev, &[], &[1000; 100], 1);
        let picks = picks(&balancer, 100);
        let mut sorted = picks.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 100, "each of 100 equal backends once per 100 picks");
    }

    #[test]
    fn smooth_weighted_redistributes_when_a_backend_is_refused() {
        let balancer = Balancer::new(Algorithm::WeightedRoundRobin, Method::Maglev, &[], &[5, 3, 1], 1);
        let chosen: Vec<usize> = (0..8).map(|_| balancer.pick(&Refusing(vec![0])).unwrap()).collect();
        assert_eq!(chosen.iter().filter(|&&index| index == 1).count(), 6);
        assert_eq!(chosen.iter().filter(|&&index| index == 2).count(), 2);
    }
}
