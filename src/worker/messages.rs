//! What the control thread and the workers say to each other. Workers receive immutable snapshots; they never read
//! the control thread's state.

use std::sync::Arc;

use crate::ratelimit::{RateDemand, RateShares};
use crate::shard::{BackendReport, HealthTable, Snapshot};

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
    /// The health table version the worker applies.
    pub health_version: u64,
    pub active_connections: usize,
    pub backends: Vec<BackendReport>,
}

#[derive(Debug)]
pub enum ToWorker {
    /// Build the generation for this snapshot beside the current one and answer `Prepared`; nothing changes for
    /// requests until `Commit`.
    Prepare(Arc<Snapshot>),
    /// Install the generation prepared for this version and answer `Applied`.
    Commit { version: u64 },
    /// Drop the generation prepared for this version: the change did not reach every worker.
    Abort { version: u64 },
    /// Send a [`WorkerReport`] on the given channel.
    Report(crossbeam_channel::Sender<WorkerReport>),
    /// Send a copy of the worker's metrics on the given channel.
    CollectMetrics(crossbeam_channel::Sender<crate::metrics::WorkerMetrics>),
    /// Report rate-limit demand since the last report on the given channel.
    RateDemand(crossbeam_channel::Sender<RateDemand>),
    /// Install new rate-limit shares.
    RateShares(RateShares),
    /// The active health checks' latest table.
    Health(Arc<HealthTable>),
    /// Stop traffic to a backend until then: the workers' circuit breakers together saw enough failures.
    StopTraffic { backend: String, until: std::time::Instant },
    /// Passive outlier detection's order: the backend at `addr` is ejected until then, or back now (`None`).
    Eject {
        backend: String,
        addr: std::net::SocketAddr,
        until: Option<std::time::Instant>,
    },
    /// New session-ticket keys (a rotation): new handshakes make tickets with them.
    TicketKeys(Arc<crate::tls::tickets::TicketKeys>),
    /// Stop accepting, finish in-flight requests, exit.
    Shutdown,
}

#[derive(Debug)]
pub enum FromWorker {
    Ready { worker: usize, driver: Driver },
    StartFailed { worker: usize, error: String },
    Prepared { worker: usize, version: u64 },
    Applied { worker: usize, version: u64 },
    Stopped { worker: usize },
}
