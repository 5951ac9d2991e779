//! What the control thread and the workers say to each other. Workers receive immutable snapshots; they never read
//! the control thread's state.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;

/// One applied configuration, with everything a worker needs resolved in advance (no DNS on a worker).
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub config: Arc<Config>,
    /// The address of each of `config.backends`, in order.
    pub backend_addrs: Vec<SocketAddr>,
    /// The concrete address of each of `config.frontends` (port 0 already replaced).
    pub frontend_addrs: Vec<SocketAddr>,
}

/// The I/O driver a worker's event loop runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// One backend as one worker sees it right now.
#[derive(Debug, Clone)]
pub struct BackendReport {
    pub id: String,
    pub in_flight: u32,
    pub idle_connections: usize,
    /// Marked down after a failed connect.
    pub down: bool,
}

/// A worker's answer to [`ToWorker::Report`].
#[derive(Debug, Clone)]
pub struct WorkerReport {
    pub worker: usize,
    pub version: u64,
    pub active_connections: usize,
    pub backends: Vec<BackendReport>,
}

/// Rate-limit demand one worker saw since it was last asked: per policy, and per client for client scope.
#[derive(Debug, Clone, Default)]
pub struct RateDemand {
    pub worker: usize,
    pub per_policy: Vec<u64>,
    /// (policy, client, requests)
    pub clients: Vec<(usize, std::net::IpAddr, u64)>,
}

/// One worker's part of each rate limit, computed by the control thread from every worker's demand.
#[derive(Debug, Clone, Default)]
pub struct RateShares {
    pub per_policy: Vec<crate::ratelimit::Share>,
    /// (policy, client, this worker's fraction of that client's limit) for clients seen on several workers.
    pub clients: Vec<(usize, std::net::IpAddr, f64)>,
}

#[derive(Debug)]
pub enum ToWorker {
    Apply(Arc<Snapshot>),
    /// Send a [`WorkerReport`] on the given channel.
    Report(crossbeam_channel::Sender<WorkerReport>),
    /// Send a copy of the worker's metrics on the given channel.
    CollectMetrics(crossbeam_channel::Sender<crate::metrics::WorkerMetrics>),
    /// Report rate-limit demand since the last report on the given channel.
    RateDemand(crossbeam_channel::Sender<RateDemand>),
    /// Install new rate-limit shares.
    RateShares(RateShares),
    /// Stop accepting, finish in-flight requests, exit.
    Shutdown,
}

#[derive(Debug)]
pub enum FromWorker {
    Ready { worker: usize, driver: Driver },
    StartFailed { worker: usize, error: String },
    Applied { worker: usize, version: u64 },
    Stopped { worker: usize },
}
