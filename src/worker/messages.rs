//! What the control thread and the workers say to each other. Workers receive immutable snapshots; they never read
//! the control thread's state.

use std::sync::Arc;

use crate::ratelimit::{RateDemand, RateShares};
use crate::shard::{BackendReport, Snapshot};

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

/// A worker's answer to [`ToWorker::Report`].
#[derive(Debug, Clone)]
pub struct WorkerReport {
    pub worker: usize,
    pub version: u64,
    pub active_connections: usize,
    pub backends: Vec<BackendReport>,
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
