//! Splitting one process-wide limit over workers by observed demand.
//!
//! Every rebalance period each worker reports how many requests it saw (allowed and limited). Each worker's share
//! of the rate and burst is its fraction of the total demand, with a floor so that an idle worker can still admit
//! the first requests that reach it. The shares always add up to the configured limit.

/// The part of a limit one worker enforces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// Requests per second.
    pub rate: f64,
    pub burst: f64,
}

/// Smallest fraction of the limit any worker keeps, as a fraction of an equal split.
const FLOOR_OF_EQUAL: f64 = 0.05;

/// Splits `rate` and `burst` over workers in proportion to `demand` (one entry per worker).
pub fn split(rate: f64, burst: f64, demand: &[u64]) -> Vec<Share> {
    let workers = demand.len().max(1);
    let total: u64 = demand.iter().sum();
    let floor = FLOOR_OF_EQUAL / workers as f64;
    let weights: Vec<f64> = if total == 0 {
        vec![1.0 / workers as f64; demand.len()]
    } else {
        demand
            .iter()
            .map(|&seen| (seen as f64 / total as f64).max(floor))
            .collect()
    };
    let sum: f64 = weights.iter().sum();
    weights
        .iter()
        .map(|weight| Share {
            rate: rate * weight / sum,
            burst: (burst * weight / sum).max(1.0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(shares: &[Share]) -> Vec<f64> {
        shares
            .iter()
            .map(|share| (share.rate * 100.0).round() / 100.0)
            .collect()
    }

    #[test]
    fn idle_workers_split_evenly() {
        assert_eq!(rates(&split(100.0, 10.0, &[0, 0])), [50.0, 50.0]);
    }

    #[test]
    fn shares_follow_demand_and_add_up() {
        let shares = split(100.0, 20.0, &[300, 100]);
        assert_eq!(rates(&shares), [75.0, 25.0]);
        let total: f64 = shares.iter().map(|share| share.rate).sum();
        assert!((total - 100.0).abs() < 1e-9);
    }

    #[test]
    fn all_traffic_on_one_core_leaves_the_others_a_floor() {
        let shares = split(100.0, 10.0, &[1000, 0]);
        assert!(shares[0].rate > 97.0, "{shares:?}");
        assert!(
            shares[1].rate > 2.0,
            "an idle worker can still admit a first request: {shares:?}"
        );
        assert!((shares[0].rate + shares[1].rate - 100.0).abs() < 1e-9);
        assert!(shares[1].burst >= 1.0);
    }
}
