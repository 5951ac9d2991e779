//! Rate limiting without shared state: token bucket and sliding window algorithms fed the time by the caller, a
//! bounded per-client table, an allow-list, and the share computation with which the control thread splits one
//! process-wide limit over the workers according to the demand each observed. ARCHITECTURE.md describes the scheme
//! and its worst case.

pub mod allow;
pub mod clients;
pub mod shard;
pub mod shares;
pub mod sliding_window;
pub mod token_bucket;

use std::time::{Duration, Instant};

pub use allow::AllowList;
pub use clients::ClientTable;
pub use shard::{RateDemand, RateLimitShard, RateShares};
pub use shares::{rebalance, split, Share};
pub use sliding_window::SlidingWindow;
pub use token_bucket::TokenBucket;

use crate::config::RateLimitAlgorithm;

/// The answer for one request, with what the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests that could still be made right now.
    pub remaining: u64,
    /// When the limiter will have capacity again (for `Retry-After` and `RateLimit-Reset`).
    pub reset_after: Duration,
}

/// One limiter of either algorithm.
#[derive(Debug, Clone)]
pub enum Limiter {
    TokenBucket(TokenBucket),
    SlidingWindow(SlidingWindow),
}

impl Limiter {
    pub fn new(algorithm: RateLimitAlgorithm, share: Share, now: Instant) -> Limiter {
        match algorithm {
            RateLimitAlgorithm::TokenBucket => Limiter::TokenBucket(TokenBucket::new(share.rate, share.burst, now)),
            RateLimitAlgorithm::SlidingWindow => Limiter::SlidingWindow(SlidingWindow::new(share.rate, now)),
        }
    }

    pub fn check(&mut self, now: Instant) -> Decision {
        match self {
            Limiter::TokenBucket(bucket) => bucket.check(now),
            Limiter::SlidingWindow(window) => window.check(now),
        }
    }

    /// Changes the rate (and burst) this limiter enforces, keeping what it has counted.
    pub fn reshare(&mut self, share: Share, now: Instant) {
        match self {
            Limiter::TokenBucket(bucket) => bucket.set_rate(share.rate, share.burst, now),
            Limiter::SlidingWindow(window) => window.set_rate(share.rate),
        }
    }
}

/// The limits a config defines: policy 0 is the global limit, then one per enabled frontend override; and which
/// policy each frontend uses (`None`: not limited). Workers and the control thread both derive them from the config,
/// so they agree on the indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct Policies {
    pub limits: Vec<Share>,
    pub frontend_policy: Vec<Option<usize>>,
}

pub fn policies(config: &crate::config::Config) -> Policies {
    let limit = &config.ratelimit;
    let mut limits = vec![Share {
        rate: limit.rate,
        burst: f64::from(limit.burst),
    }];
    let frontend_policy = config
        .frontends
        .iter()
        .map(|frontend| {
            if !limit.enabled {
                return None;
            }
            match limit.overrides.iter().find(|item| item.frontend == frontend.name) {
                Some(item) if !item.enabled => None,
                Some(item) => {
                    limits.push(Share {
                        rate: item.rate,
                        burst: f64::from(item.burst),
                    });
                    Some(limits.len() - 1)
                }
                None => Some(0),
            }
        })
        .collect();
    Policies {
        limits,
        frontend_policy,
    }
}
