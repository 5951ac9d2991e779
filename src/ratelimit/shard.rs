//! A worker's rate-limit shard: its part of each configured limit, enforced with no shared state. The control
//! thread periodically asks for the demand this worker saw ([`RateLimitShard::take_demand`]) and sends back this
//! worker's new shares ([`RateLimitShard::apply_shares`]); between those, every decision is local.

use rustc_hash::FxHashMap as HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::{policies, split, AllowList, ClientTable, Decision, Limiter, Share};
use crate::config::{Config, RateLimitAlgorithm, RateLimitConfig, RateLimitScope};

/// Distinct clients whose demand a worker reports per period; the busiest are the ones that matter.
const MAX_REPORTED_CLIENTS: usize = 1024;

/// Rate-limit demand one worker saw since it was last asked: per policy, and per client for client scope.
#[derive(Debug, Clone, Default)]
pub struct RateDemand {
    pub worker: usize,
    pub per_policy: Vec<u64>,
    /// (policy, client, requests)
    pub clients: Vec<(usize, IpAddr, u64)>,
}

/// One worker's part of each rate limit, computed by the control thread from every worker's demand.
#[derive(Debug, Clone, Default)]
pub struct RateShares {
    pub per_policy: Vec<Share>,
    /// (policy, client, this worker's fraction of that client's limit) for clients seen on several workers.
    pub clients: Vec<(usize, IpAddr, f64)>,
}

struct Policy {
    /// The whole configured limit.
    limit: Share,
    /// This worker's part of it (global scope).
    share: Share,
    global: Limiter,
    /// Per client: its limiter and the requests it made since the last report.
    clients: ClientTable<IpAddr, (Limiter, u64)>,
    /// Requests seen since the last report.
    demand: u64,
    /// This worker's fraction of a client's limit, for clients seen on several workers.
    client_fraction: HashMap<IpAddr, f64>,
}

pub struct RateLimitShard {
    config: RateLimitConfig,
    algorithm: RateLimitAlgorithm,
    scope: RateLimitScope,
    allow: AllowList,
    frontend_policy: Vec<Option<usize>>,
    policies: Vec<Policy>,
}

impl RateLimitShard {
    /// A shard starting with an equal split over `workers`.
    pub fn new(config: &Config, workers: usize, now: Instant) -> RateLimitShard {
        let limit = &config.ratelimit;
        let derived = policies(config);
        let equal = vec![0; workers.max(1)];
        let policies = derived
            .limits
            .iter()
            .map(|&whole| {
                let share = split(whole.rate, whole.burst, &equal)[0];
                Policy {
                    limit: whole,
                    share,
                    global: Limiter::new(limit.algorithm, share, now),
                    clients: ClientTable::new(limit.max_clients),
                    demand: 0,
                    client_fraction: HashMap::default(),
                }
            })
            .collect();
        RateLimitShard {
            config: limit.clone(),
            algorithm: limit.algorithm,
            scope: limit.scope,
            allow: AllowList::new(&limit.allow),
            frontend_policy: derived.frontend_policy,
            policies,
        }
    }

    /// The shard was built for this config (a config change elsewhere keeps the counted state).
    pub fn matches(&self, config: &Config) -> bool {
        self.config == config.ratelimit
    }

    /// Decides a request from `client` on `frontend`. `None`: not subject to any limit.
    pub fn check(&mut self, frontend: usize, client: IpAddr, now: Instant) -> Option<(Decision, f64)> {
        let index = (*self.frontend_policy.get(frontend)?)?;
        if !self.allow.is_empty() && self.allow.contains(client) {
            return None;
        }
        let algorithm = self.algorithm;
        let policy = &mut self.policies[index];
        policy.demand += 1;
        let decision = match self.scope {
            RateLimitScope::Global => policy.global.check(now),
            RateLimitScope::ClientIp => {
                let whole = policy.limit;
                let fractions = &policy.client_fraction;
                let (limiter, demand) = policy.clients.get_or_insert_with(&client, || {
                    let fraction = fractions.get(&client).copied().unwrap_or(1.0);
                    (Limiter::new(algorithm, scaled(whole, fraction), now), 0)
                });
                *demand += 1;
                limiter.check(now)
            }
        };
        Some((decision, policy.limit.rate))
    }

    /// The demand seen since the last call, then counting starts again.
    pub fn take_demand(&mut self, worker: usize) -> RateDemand {
        let mut clients = Vec::new();
        let per_policy = self
            .policies
            .iter_mut()
            .enumerate()
            .map(|(index, policy)| {
                for (client, (_, seen)) in policy.clients.iter_mut() {
                    if *seen > 0 && clients.len() < MAX_REPORTED_CLIENTS {
                        clients.push((index, *client, *seen));
                    }
                    *seen = 0;
                }
                std::mem::take(&mut policy.demand)
            })
            .collect();
        RateDemand {
            worker,
            per_policy,
            clients,
        }
    }

    /// Installs this worker's shares; ignored when they were computed for another set of policies.
    pub fn apply_shares(&mut self, shares: &RateShares, now: Instant) {
        if shares.per_policy.len() != self.policies.len() {
            return;
        }
        for (policy, &share) in self.policies.iter_mut().zip(&shares.per_policy) {
            policy.share = share;
            policy.global.reshare(share, now);
            // Clients no longer shared across workers get their whole limit back.
            let previous = std::mem::take(&mut policy.client_fraction);
            for client in previous.keys() {
                if let Some((limiter, _)) = policy.clients.get_mut(client) {
                    limiter.reshare(policy.limit, now);
                }
            }
        }
        for &(index, client, fraction) in &shares.clients {
            if let Some(policy) = self.policies.get_mut(index) {
                policy.client_fraction.insert(client, fraction);
                if let Some((limiter, _)) = policy.clients.get_mut(&client) {
                    limiter.reshare(scaled(policy.limit, fraction), now);
                }
            }
        }
    }
}

fn scaled(whole: Share, fraction: f64) -> Share {
    Share {
        rate: whole.rate * fraction,
        burst: (whole.burst * fraction).max(1.0),
    }
}
