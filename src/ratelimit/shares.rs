//! Splitting one process-wide limit over workers by observed demand.
//!
//! Every rebalance period each worker reports how many requests it saw (allowed and limited). Each worker's share
//! of the rate and burst is its fraction of the total demand, with a floor so that an idle worker can still admit
//! the first requests that reach it. The shares always add up to the configured limit.

use std::collections::HashMap;
use std::net::IpAddr;

use super::shard::{RateDemand, RateShares};

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

/// Every worker's new shares from the demand each reported (`demand[worker]`, in worker order): each limit split by
/// its demand per worker, and each client seen on several workers split the same way.
pub fn rebalance(limits: &[Share], demand: &[RateDemand], workers: usize) -> Vec<RateShares> {
    let mut shares = vec![RateShares::default(); workers];
    for (index, limit) in limits.iter().enumerate() {
        let mut per_worker = vec![0u64; workers];
        for report in demand {
            if let Some(slot) = per_worker.get_mut(report.worker) {
                *slot = report.per_policy.get(index).copied().unwrap_or(0);
            }
        }
        for (worker, share) in split(limit.rate, limit.burst, &per_worker).into_iter().enumerate() {
            shares[worker].per_policy.push(share);
        }
    }
    let mut clients: HashMap<(usize, IpAddr), Vec<(usize, u64)>> = HashMap::new();
    for report in demand {
        for &(policy, client, seen) in &report.clients {
            clients.entry((policy, client)).or_default().push((report.worker, seen));
        }
    }
    for ((policy, client), seen_by) in clients {
        if seen_by.len() < 2 {
            continue;
        }
        let per_worker: Vec<u64> = (0..workers)
            .map(|worker| {
                seen_by
                    .iter()
                    .find(|(seen_on, _)| *seen_on == worker)
                    .map_or(0, |(_, count)| *count)
            })
            .collect();
        for (worker, fraction) in split(1.0, 1.0, &per_worker).into_iter().enumerate() {
            shares[worker].clients.push((policy, client, fraction.rate));
        }
    }
    shares
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

    #[test]
    fn rebalancing_follows_demand_and_splits_shared_clients() {
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let demand = vec![
            RateDemand {
                worker: 0,
                per_policy: vec![90],
                clients: vec![(0, client, 30)],
            },
            RateDemand {
                worker: 1,
                per_policy: vec![10],
                clients: vec![(0, client, 10)],
            },
        ];
        let limits = [Share {
            rate: 100.0,
            burst: 10.0,
        }];
        let shares = rebalance(&limits, &demand, 2);
        assert_eq!(shares.len(), 2);
        let rates: Vec<f64> = shares.iter().map(|share| share.per_policy[0].rate).collect();
        assert!(rates[0] > rates[1], "the busier worker gets more: {rates:?}");
        assert!(
            (rates[0] + rates[1] - 100.0).abs() < 1e-9,
            "shares add up to the limit: {rates:?}"
        );
        let fractions: Vec<f64> = shares.iter().map(|share| share.clients[0].2).collect();
        assert!((fractions[0] + fractions[1] - 1.0).abs() < 1e-9, "{fractions:?}");
        assert!(fractions[0] > fractions[1]);
    }

    #[test]
    fn a_client_seen_by_one_worker_keeps_its_whole_limit() {
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let demand = vec![
            RateDemand {
                worker: 0,
                per_policy: vec![5],
                clients: vec![(0, client, 5)],
            },
            RateDemand {
                worker: 1,
                ..RateDemand::default()
            },
        ];
        let limits = [Share { rate: 10.0, burst: 1.0 }];
        let shares = rebalance(&limits, &demand, 2);
        assert!(shares.iter().all(|share| share.clients.is_empty()));
    }
}
