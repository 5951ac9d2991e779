//! The load-based balancers: least connections and power of two choices. Both read the requests *this worker* has
//! in flight to each backend, so they balance each core's share of the traffic, as nginx's `least_conn` does
//! without a shared zone. With SO_REUSEPORT spreading connections evenly over the cores, the per-core views add up
//! to a balanced whole; a core that got more connections sends more, everywhere, in proportion.
//!
//! A backend's capacity is its weight times its share (slow start, dynamic weights), and its load is
//! `in_flight / capacity`. Equal loads (idle backends, above all) are broken at random in proportion to capacity,
//! so that sequential requests spread by weight instead of all going to one backend, and cores never herd.

use super::random::WeightedDraw;
use super::rng::FastRng;
use super::Candidates;

/// Backend `index`'s capacity and load; `None` when it has no capacity.
fn load(candidates: &impl Candidates, weights: &[u32], index: usize) -> Option<(f64, f64)> {
    let capacity = f64::from(weights[index]) * candidates.share(index);
    (capacity > 0.0).then(|| (capacity, f64::from(candidates.in_flight(index)) / capacity))
}

/// The admitted backend with the least load; ties broken at random by capacity (by index, every core would herd
/// onto the first of them: Sozu's #1437). O(backends) per pick.
#[derive(Debug)]
pub struct LeastConnections {
    weights: Vec<u32>,
    rng: FastRng,
}

impl LeastConnections {
    pub fn new(weights: &[u32], seed: u64) -> LeastConnections {
        LeastConnections {
            weights: weights.to_vec(),
            rng: FastRng::new(seed),
        }
    }

    pub fn pick(&self, candidates: &impl Candidates) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        // The capacity of the backends tied at the best load so far.
        let mut tied = 0.0;
        for index in 0..self.weights.len() {
            if !candidates.admitted(index) {
                continue;
            }
            let Some((capacity, load)) = load(candidates, &self.weights, index) else {
                continue;
            };
            match best {
                Some((_, best_load)) if load > best_load => {}
                Some((_, best_load)) if load == best_load => {
                    // Weighted reservoir sampling: each tied backend ends up kept in proportion to its capacity.
                    tied += capacity;
                    if self.rng.unit() * tied < capacity {
                        best = Some((index, load));
                    }
                }
                _ => {
                    best = Some((index, load));
                    tied = capacity;
                }
            }
        }
        best.map(|(index, _)| index)
    }
}

/// What the better of two drawn backends is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judge {
    /// Fewer requests in flight per unit of capacity.
    Load,
    /// A shorter expected wait: response time × (in flight + 1) / capacity.
    Wait,
}

/// Two distinct admitted backends drawn at random by weight, the better one taken, the first on a tie. O(1) per
/// pick whatever the number of backends, and it never herds: two cores drawing independently rarely see the same
/// pair.
#[derive(Debug)]
struct TwoChoices {
    weights: Vec<u32>,
    draws: WeightedDraw,
    judge: Judge,
}

impl TwoChoices {
    fn new(weights: &[u32], seed: u64, judge: Judge) -> TwoChoices {
        TwoChoices {
            weights: weights.to_vec(),
            draws: WeightedDraw::new(weights, seed),
            judge,
        }
    }

    fn pick(&self, candidates: &impl Candidates) -> Option<usize> {
        let first = self.draws.draw(candidates, None)?;
        let Some(second) = self.draws.draw(candidates, Some(first)) else {
            return Some(first);
        };
        let score = |index: usize| {
            let (capacity, load) = load(candidates, &self.weights, index)?;
            Some(match self.judge {
                Judge::Load => load,
                // response_time × (in_flight + 1) / capacity.
                Judge::Wait => candidates.response_time(index) * (load + 1.0 / capacity),
            })
        };
        Some(match (score(first), score(second)) {
            (Some(a), Some(b)) if b < a => second,
            (None, Some(_)) => second,
            _ => first,
        })
    }
}

/// Power of two choices (Mitzenmacher; Envoy's and Finagle's default): of two backends drawn by weight, the one
/// with fewer requests in flight per unit of capacity.
#[derive(Debug)]
pub struct PowerOfTwo(TwoChoices);

impl PowerOfTwo {
    pub fn new(weights: &[u32], seed: u64) -> PowerOfTwo {
        PowerOfTwo(TwoChoices::new(weights, seed, Judge::Load))
    }

    pub fn pick(&self, candidates: &impl Candidates) -> Option<usize> {
        self.0.pick(candidates)
    }
}

/// Least response time: of two backends drawn by weight, the shorter expected wait,
/// `response_time × (in_flight + 1) / capacity`, with the response time a peak EWMA (`balance::peak`; Finagle's and
/// Linkerd's). A backend that turns slow loses its share at its first slow answer, and regains it as its average
/// fades.
#[derive(Debug)]
pub struct LeastResponseTime(TwoChoices);

impl LeastResponseTime {
    pub fn new(weights: &[u32], seed: u64) -> LeastResponseTime {
        LeastResponseTime(TwoChoices::new(weights, seed, Judge::Wait))
    }

    pub fn pick(&self, candidates: &impl Candidates) -> Option<usize> {
        self.0.pick(candidates)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Backends with given requests in flight and shares; `refused` are not admitted.
    struct Loaded {
        in_flight: RefCell<Vec<u32>>,
        shares: Vec<f64>,
        refused: Vec<usize>,
        times: Vec<f64>,
    }

    impl Loaded {
        fn idle(count: usize) -> Loaded {
            Loaded {
                in_flight: RefCell::new(vec![0; count]),
                shares: vec![1.0; count],
                refused: Vec::new(),
                times: vec![0.001; count],
            }
        }
    }

    impl Candidates for Loaded {
        fn admitted(&self, index: usize) -> bool {
            !self.refused.contains(&index)
        }
        fn takes_turn(&self, _: usize) -> bool {
            true
        }
        fn share(&self, index: usize) -> f64 {
            self.shares[index]
        }
        fn in_flight(&self, index: usize) -> u32 {
            self.in_flight.borrow()[index]
        }
        fn response_time(&self, index: usize) -> f64 {
            self.times[index]
        }
    }

    #[test]
    fn least_connections_takes_the_least_loaded_by_weight_and_skips_the_refused() {
        let balancer = LeastConnections::new(&[1, 1, 3], 1);
        let loaded = Loaded {
            in_flight: RefCell::new(vec![2, 1, 3]),
            ..Loaded::idle(3)
        };
        // Loads 2, 1 and 1: a tie between 1 and 2, broken by capacity (1 : 3); never 0.
        let mut seen = [0usize; 3];
        for _ in 0..4000 {
            seen[balancer.pick(&loaded).unwrap()] += 1;
        }
        assert_eq!(seen[0], 0);
        assert!(seen[1].abs_diff(1000) < 150, "ties split by capacity: {seen:?}");
        let refusing = Loaded {
            refused: vec![1, 2],
            ..loaded
        };
        assert_eq!(balancer.pick(&refusing), Some(0));
        let none = Loaded {
            refused: vec![0, 1, 2],
            ..Loaded::idle(3)
        };
        assert_eq!(balancer.pick(&none), None);
    }

    #[test]
    fn idle_backends_take_sequential_requests_in_proportion_to_their_weights() {
        let balancer = LeastConnections::new(&[5, 3, 1, 1], 2);
        let idle = Loaded::idle(4);
        let mut seen = [0usize; 4];
        for _ in 0..10_000 {
            seen[balancer.pick(&idle).unwrap()] += 1;
        }
        for (index, expected) in [5000usize, 3000, 1000, 1000].into_iter().enumerate() {
            assert!(seen[index].abs_diff(expected) < 300, "{seen:?}");
        }
    }

    #[test]
    fn least_connections_fills_backends_in_proportion_to_their_weights() {
        // Requests that never end: each pick adds one in flight. Weights 1:2:3 end with 10:20:30.
        let balancer = LeastConnections::new(&[1, 2, 3], 9);
        let loaded = Loaded::idle(3);
        for _ in 0..60 {
            let index = balancer.pick(&loaded).unwrap();
            loaded.in_flight.borrow_mut()[index] += 1;
        }
        let in_flight = loaded.in_flight.borrow().clone();
        for (index, expected) in [10, 20, 30].into_iter().enumerate() {
            assert!(in_flight[index].abs_diff(expected) <= 1, "{in_flight:?}");
        }
    }

    #[test]
    fn with_idle_equal_backends_two_cores_do_not_herd_onto_the_first() {
        // Sozu #1437: ties broken by index send every core's first request to backend 0.
        let cores: Vec<LeastConnections> = (0..8).map(|seed| LeastConnections::new(&[1; 4], seed)).collect();
        let loaded = Loaded::idle(4);
        let firsts: Vec<usize> = cores.iter().map(|core| core.pick(&loaded).unwrap()).collect();
        let mut distinct = firsts.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 1, "eight cores all chose {firsts:?}");
    }

    #[test]
    fn a_backend_at_a_tenth_of_its_share_counts_as_ten_times_as_loaded() {
        let balancer = LeastConnections::new(&[1, 1], 3);
        let loaded = Loaded {
            in_flight: RefCell::new(vec![1, 8]),
            shares: vec![0.1, 1.0],
            ..Loaded::idle(2)
        };
        // 1 / 0.1 = 10 against 8 / 1.
        assert_eq!(balancer.pick(&loaded), Some(1));
        loaded.in_flight.borrow_mut()[1] = 11;
        assert_eq!(balancer.pick(&loaded), Some(0));
    }

    #[test]
    fn power_of_two_prefers_the_less_loaded_of_two_and_spreads_idle_picks() {
        let balancer = PowerOfTwo::new(&[1; 3], 5);
        let loaded = Loaded {
            in_flight: RefCell::new(vec![0, 50, 50]),
            ..Loaded::idle(3)
        };
        // Backend 0 is in every pair it is drawn into and always wins them: 2 of 3 pairs.
        let wins = (0..3000).filter(|_| balancer.pick(&loaded) == Some(0)).count();
        assert!((1850..2150).contains(&wins), "{wins} of 3000");
        // Never the most loaded of all three: it loses every pair it is in.
        let loaded = Loaded {
            in_flight: RefCell::new(vec![1, 2, 9]),
            ..Loaded::idle(3)
        };
        assert!((0..300).all(|_| balancer.pick(&loaded) != Some(2)));
        let idle = Loaded::idle(3);
        let mut seen = [0; 3];
        for _ in 0..3000 {
            seen[balancer.pick(&idle).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&count| count > 800), "{seen:?}");
    }

    #[test]
    fn least_response_time_weighs_the_answer_time_against_the_queue() {
        let balancer = LeastResponseTime::new(&[1, 1], 6);
        let loaded = Loaded {
            times: vec![0.001, 0.050],
            ..Loaded::idle(2)
        };
        assert!(
            (0..100).all(|_| balancer.pick(&loaded) == Some(0)),
            "the fast one while it is idle"
        );
        // 1 ms × 61 in the queue is a longer wait than 50 ms × 1.
        loaded.in_flight.borrow_mut()[0] = 60;
        assert!((0..100).all(|_| balancer.pick(&loaded) == Some(1)));
    }

    #[test]
    fn power_of_two_spreads_idle_picks_by_weight() {
        let balancer = PowerOfTwo::new(&[3, 1], 4);
        let idle = Loaded::idle(2);
        let first = (0..4000).filter(|_| balancer.pick(&idle) == Some(0)).count();
        assert!(first.abs_diff(3000) < 150, "{first} of 4000");
    }

    #[test]
    fn power_of_two_finds_the_one_admitted_backend_among_many_refused() {
        let balancer = PowerOfTwo::new(&[1; 1000], 11);
        let loaded = Loaded {
            refused: (0..1000).filter(|&index| index != 777).collect(),
            ..Loaded::idle(1000)
        };
        assert_eq!(balancer.pick(&loaded), Some(777));
        let none = Loaded {
            refused: (0..1000).collect(),
            ..Loaded::idle(1000)
        };
        assert_eq!(balancer.pick(&none), None);
    }
}
