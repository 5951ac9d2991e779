//! A generation: everything a request needs that changes only with the config, built from the control thread's
//! [`Snapshot`] and carrying each backend's state over from the previous generation.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::backend::{BackendState, Settings, StatusSet};
use super::sticky::StickyRoutes;
use crate::balance::dynamic::DynamicSettings;
use crate::balance::hash::Method;
use crate::balance::{Balancer, Everyone};
use crate::config::{capacity_share, Algorithm, BackendConfig, Config, HashMethod};
use crate::http::head::HeadLimits;
use crate::metrics::WorkerMetrics;
use crate::tls::termination::Termination;
use crate::tls::tickets::TicketKeys;
use crate::tls::upstream::UpstreamTls;
use crate::upstream::breaker::BreakerSettings;

/// One applied configuration, with everything a worker needs resolved in advance (no DNS on a worker).
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub config: Arc<Config>,
    /// The address of each of `config.backends`, in order.
    pub backend_addrs: Vec<SocketAddr>,
    /// The concrete address of each of `config.frontends` (port 0 already replaced).
    pub frontend_addrs: Vec<SocketAddr>,
    /// Each backend's sticky-session cookie value, in order (signed on the control thread; empty when sticky
    /// sessions are off).
    pub sticky_cookies: Vec<String>,
    /// Each frontend's TLS, in order (`None`: plain HTTP), read and checked on the control thread.
    pub tls: Vec<Option<Arc<Termination>>>,
    /// The session-ticket keys in force when this snapshot was made (`None`: tickets off).
    pub ticket_keys: Option<Arc<TicketKeys>>,
    /// `[upstream.tls]` as read, when a backend is `https://`.
    pub upstream_tls: Option<Arc<UpstreamTls>>,
}

/// Which worker a generation is built for, of how many: process-wide limits are split by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub index: usize,
    pub workers: usize,
}

/// Everything a request needs that changes only with the config. A request keeps the `Rc<Generation>` it started
/// with, so a config change never alters a request in flight.
pub struct Generation {
    pub version: u64,
    pub config: Arc<Config>,
    /// One view per backend, in config order: the balancer's indexes point here.
    pub backends: Vec<Rc<BackendState>>,
    pub balancer: Balancer,
    pub limits: HeadLimits,
    /// Sticky sessions, when they are on.
    pub sticky: Option<StickyRoutes>,
    /// The snapshot's TLS, which the core's [`CoreTls`](super::tls::CoreTls) follows when this is installed.
    pub tls: Vec<Option<Arc<Termination>>>,
    pub ticket_keys: Option<Arc<TicketKeys>>,
    pub upstream_tls: Option<Arc<UpstreamTls>>,
    place: Place,
}

impl Generation {
    /// Builds the generation for `snapshot`, keeping the state of backends that `previous` already had. Carried
    /// states keep their settings until [`configure_backends`](Self::configure_backends), so a generation that is
    /// built and then dropped (an aborted change) leaves them as they were.
    ///
    /// Each worker starts its rotation `worker` picks in, so that N workers do not all send their first request
    /// to the first backend. Both algorithms are periodic, so every window of one period stays exact.
    pub fn build(
        snapshot: &Snapshot,
        previous: Option<&Generation>,
        place: Place,
        metrics: &mut WorkerMetrics,
    ) -> Generation {
        let worker = place.index;
        let config = &snapshot.config;
        let backends = config
            .backends
            .iter()
            .zip(&snapshot.backend_addrs)
            .map(|(backend, &addr)| {
                let settings = settings_for(backend, config, place);
                previous
                    .and_then(|previous| {
                        previous
                            .backends
                            .iter()
                            .find(|state| state.id == backend.id && state.addr == addr)
                            .cloned()
                    })
                    .unwrap_or_else(|| {
                        let slot = metrics.backend_slot(&backend.id);
                        let state = BackendState::new(backend, addr, slot, settings);
                        if previous.is_some() {
                            // Joined a running service: it ramps up (slow start); the first config's do not.
                            state.start_slow_start(Instant::now());
                        }
                        Rc::new(state)
                    })
            })
            .collect();
        let weights: Vec<u32> = config.backends.iter().map(|backend| backend.weight).collect();
        // Each worker draws its own random numbers (power of two, random, tie-breaks), different on every start.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        let ids: Vec<&str> = config.backends.iter().map(|backend| backend.id.as_str()).collect();
        let method = match config.balancer.hash_method {
            HashMethod::Maglev => Method::Maglev,
            HashMethod::Rendezvous => Method::Rendezvous,
        };
        let seed = nonce ^ ((worker as u64) << 48);
        let balancer = Balancer::new(config.balancer.algorithm, method, &ids, &weights, seed);
        for _ in 0..worker {
            balancer.pick(&Everyone);
        }
        Generation {
            version: snapshot.version,
            config: Arc::clone(config),
            backends,
            balancer,
            limits: HeadLimits {
                max_head_bytes: config.limits.max_header_bytes,
                max_request_line: config.limits.max_request_line,
                max_headers: config.limits.max_headers,
            },
            sticky: StickyRoutes::new(&config.balancer.sticky, &snapshot.sticky_cookies),
            tls: snapshot.tls.clone(),
            ticket_keys: snapshot.ticket_keys.clone(),
            upstream_tls: snapshot.upstream_tls.clone(),
            place,
        }
    }

    /// Each frontend's `client_identity_header`, in order.
    pub fn identity_headers(&self) -> Vec<Option<String>> {
        self.config
            .frontends
            .iter()
            .map(|frontend| frontend.tls.as_ref().and_then(|tls| tls.client_identity_header.clone()))
            .collect()
    }

    /// Gives every backend this generation's settings; called when it is installed.
    pub fn configure_backends(&self) {
        for (state, backend) in self.backends.iter().zip(&self.config.backends) {
            state.configure(settings_for(backend, &self.config, self.place));
        }
    }
}

fn settings_for(backend: &BackendConfig, config: &Config, place: Place) -> Settings {
    Settings {
        weight: backend.weight,
        capacity: backend
            .max_connections
            .map_or(u32::MAX, |limit| capacity_share(limit, place.index, place.workers)),
        draining: backend.drain,
        fail_timeout: config.upstream.fail_timeout,
        breaker: config.circuitbreaker.enabled.then_some(BreakerSettings {
            threshold: config.circuitbreaker.threshold,
            open_for: config.circuitbreaker.timeout,
            max_trials: config.circuitbreaker.max_half_open,
        }),
        failure_statuses: StatusSet::of(&config.circuitbreaker.failure_statuses),
        slow_start: config.upstream.slow_start,
        outlier_statuses: config
            .outlier_detection
            .enabled
            .then(|| StatusSet::of(&config.outlier_detection.failure_statuses)),
        response_time: config.balancer.algorithm == Algorithm::LeastResponseTime,
        dynamic: config.balancer.dynamic_weights.enabled.then(|| {
            let dynamic = config.balancer.dynamic_weights;
            DynamicSettings {
                decay: dynamic.decay,
                latency_slack: dynamic.latency_slack,
                min_share: dynamic.min_share,
            }
        }),
    }
}
