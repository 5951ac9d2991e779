//! A worker's own state: the generation (config + backend set + balancer) new requests use, the backends' idle
//! connection pools and passive failure marks, and the counters graceful shutdown waits on. Owned by one thread;
//! `Cell`/`RefCell` only, never held across an `.await`.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::messages::{BackendReport, Snapshot};
use crate::access_log::LogMessage;
use crate::balance::Balancer;
use crate::config::{BackendConfig, Config};
use crate::http::head::HeadLimits;
use crate::metrics::WorkerMetrics;
use crate::net::slots::{Slot, Slots};
use crate::net::{BufferedStream, PipePool, Watchdog};
use crate::proxy::limit::RateLimitShard;
use crate::proxy::request_id::RequestIds;
use crate::upstream::IdlePool;

/// One backend as seen by one worker. Carried from one generation to the next while its id and address stay, so
/// idle connections and failure marks survive config changes.
pub struct BackendState {
    pub id: String,
    /// Where this worker counts this backend's metrics.
    pub metrics_slot: usize,
    pub addr: SocketAddr,
    /// `host:port`, the `Host` sent for requests that came without one.
    pub authority: Vec<u8>,
    idle: RefCell<IdlePool<BufferedStream>>,
    /// Until when this worker skips the backend after a failed connect.
    down_until: Cell<Option<Instant>>,
    in_flight: Cell<u32>,
    /// The last attempt to reach it failed (see [`BackendState::failed`]).
    failed: Cell<bool>,
    /// Warnings about this backend from this worker.
    warnings: WarningGate,
}

/// Warnings of one kind are logged at most this often per worker.
const WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// Lets one warning of a kind through a second, so a backend that is down does not flood the log (and the worker)
/// with a line per request; counts what it held back.
#[derive(Debug, Default)]
pub struct WarningGate {
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl WarningGate {
    /// `Some(held back since the last one)` when a warning may be logged now.
    pub fn open(&self, now: Instant) -> Option<u64> {
        match self.last.get() {
            Some(last) if now.saturating_duration_since(last) < WARNING_INTERVAL => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
            }
        }
    }
}

impl BackendState {
    fn new(config: &BackendConfig, addr: SocketAddr, metrics_slot: usize) -> BackendState {
        BackendState {
            id: config.id.clone(),
            metrics_slot,
            addr,
            authority: config.authority().into_bytes(),
            idle: RefCell::new(IdlePool::default()),
            down_until: Cell::new(None),
            in_flight: Cell::new(0),
            failed: Cell::new(false),
            warnings: WarningGate::default(),
        }
    }

    /// Counts a request in flight to this backend until the guard is dropped.
    pub fn begin_request(self: &Rc<Self>) -> InFlightGuard {
        self.in_flight.set(self.in_flight.get() + 1);
        InFlightGuard {
            backend: Rc::clone(self),
        }
    }

    pub fn report(&self) -> BackendReport {
        BackendReport {
            id: self.id.clone(),
            in_flight: self.in_flight.get(),
            idle_connections: self.idle.borrow().len(),
            down: self.failed(),
        }
    }

    /// Whether this worker's last attempt to reach the backend failed (and none has succeeded since). The skip
    /// window of [`available`](Self::available) ends after `fail_timeout`; this stays until the backend answers,
    /// so health reports tell the truth in between.
    pub fn failed(&self) -> bool {
        self.failed.get()
    }

    /// Not marked down by a recent connect failure.
    pub fn available(&self, now: Instant) -> bool {
        self.down_until.get().is_none_or(|until| now >= until)
    }

    pub fn mark_failed(&self, until: Instant) {
        self.down_until.set(Some(until));
        self.failed.set(true);
        self.idle.borrow_mut().clear();
    }

    pub fn mark_succeeded(&self) {
        if self.down_until.get().is_some() {
            self.down_until.set(None);
        }
        self.failed.set(false);
    }

    /// Drops every idle connection to this backend on this worker (one of them just failed).
    pub fn purge_idle(&self) {
        self.idle.borrow_mut().clear();
    }

    pub fn take_idle(&self, now: Instant, max_idle: Duration) -> Option<BufferedStream> {
        self.idle.borrow_mut().take(now, max_idle)
    }

    pub fn put_idle(&self, connection: BufferedStream, now: Instant, capacity: usize) {
        self.idle.borrow_mut().put(connection, now, capacity);
    }

    pub fn evict_idle(&self, now: Instant, max_idle: Duration) -> usize {
        self.idle.borrow_mut().evict_expired(now, max_idle)
    }
}

pub struct InFlightGuard {
    backend: Rc<BackendState>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let count = &self.backend.in_flight;
        count.set(count.get().saturating_sub(1));
    }
}

/// Everything a request needs that changes only with the config. A request keeps the `Rc<Generation>` it started
/// with, so a config change never alters a request in flight.
pub struct Generation {
    pub version: u64,
    pub config: Arc<Config>,
    pub backends: Vec<Rc<BackendState>>,
    pub balancer: Balancer,
    pub limits: HeadLimits,
    /// Per backend: may take new requests (not draining).
    pub accepting: Vec<bool>,
}

impl Generation {
    /// Builds the generation for `snapshot`, keeping the state of backends that `previous` already had.
    ///
    /// Each worker starts its rotation `worker` picks in, so that N workers do not all send their first request
    /// to the first backend. Both algorithms are periodic, so every window of one period stays exact.
    pub fn build(
        snapshot: &Snapshot,
        previous: Option<&Generation>,
        worker: usize,
        metrics: &mut WorkerMetrics,
    ) -> Generation {
        let config = &snapshot.config;
        let backends = config
            .backends
            .iter()
            .zip(&snapshot.backend_addrs)
            .map(|(backend, &addr)| {
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
                        Rc::new(BackendState::new(backend, addr, slot))
                    })
            })
            .collect();
        let weights: Vec<u32> = config.backends.iter().map(|backend| backend.weight).collect();
        let balancer = Balancer::new(config.balancer.algorithm, &weights);
        for _ in 0..worker {
            balancer.pick(|_| true);
        }
        Generation {
            version: snapshot.version,
            config: Arc::clone(config),
            backends,
            balancer,
            accepting: config.backends.iter().map(|backend| !backend.drain).collect(),
            limits: HeadLimits {
                max_head_bytes: config.limits.max_header_bytes,
                max_request_line: config.limits.max_request_line,
                max_headers: config.limits.max_headers,
            },
        }
    }
}

/// The worker-wide state shared by its tasks.
pub struct WorkerContext {
    pub index: usize,
    pub request_ids: RequestIds,
    /// How many workers share the process-wide rate limits.
    pub workers: usize,
    pub rate_limit: RefCell<RateLimitShard>,
    metrics: RefCell<WorkerMetrics>,
    /// Access log lines not yet handed to the writer thread.
    access_log: RefCell<String>,
    access_log_writer: crossbeam_channel::Sender<LogMessage>,
    generation: RefCell<Rc<Generation>>,
    draining: Cell<bool>,
    /// The most client connections held at once since [`take_peak_connections`](Self::take_peak_connections).
    peak_connections: Cell<usize>,
    /// Keeps every socket timeout of this worker; also ends idle keep-alive waits when shutdown begins.
    pub watchdog: Rc<Watchdog>,
    /// Empty pipes for splicing large bodies.
    pub pipes: PipePool,
    /// Warnings that concern no backend (no backend available, out of descriptors).
    pub warnings: WarningGate,
    /// Client connections this worker holds against its share of `server.max_connections`.
    pub client_slots: Rc<Slots>,
    /// Upstream connections (in use and idle) this worker holds: `upstream.max_connections_per_backend` times
    /// the backends, within its share of the descriptor budget.
    pub upstream_slots: Rc<Slots>,
    limits: WorkerLimits,
}

/// The upstream connections a worker may hold under `generation`'s config.
fn upstream_limit(generation: &Generation, limits: WorkerLimits) -> usize {
    let per_backend = generation.config.upstream.max_connections_per_backend;
    per_backend
        .saturating_mul(generation.backends.len().max(1))
        .min(limits.upstream)
}

/// One worker's share of the descriptor budget (see `net::descriptors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    pub clients: usize,
    pub upstream: usize,
}

impl WorkerContext {
    pub fn new(
        index: usize,
        generation: Generation,
        metrics: WorkerMetrics,
        access_log_writer: crossbeam_channel::Sender<LogMessage>,
        process_seed: u64,
        workers: usize,
        limits: WorkerLimits,
    ) -> WorkerContext {
        WorkerContext {
            index,
            request_ids: RequestIds::new(process_seed, index),
            workers,
            rate_limit: RefCell::new(RateLimitShard::new(&generation.config, workers, Instant::now())),
            metrics: RefCell::new(metrics),
            access_log: RefCell::new(String::new()),
            access_log_writer,
            draining: Cell::new(false),
            peak_connections: Cell::new(0),
            watchdog: Watchdog::new(),
            pipes: PipePool::default(),
            warnings: WarningGate::default(),
            client_slots: Slots::new(limits.clients),
            upstream_slots: Slots::new(upstream_limit(&generation, limits)),
            generation: RefCell::new(Rc::new(generation)),
            limits,
        }
    }

    /// The generation new requests start on.
    pub fn generation(&self) -> Rc<Generation> {
        Rc::clone(&self.generation.borrow())
    }

    /// Builds and installs the generation for `snapshot`, carrying state over from the current one.
    pub fn apply(&self, snapshot: &Snapshot) {
        let current = self.generation();
        let next = Generation::build(snapshot, Some(&current), self.index, &mut self.metrics.borrow_mut());
        // A limits change rebuilds the shard; any other change keeps what it has counted.
        if !self.rate_limit.borrow().matches(&next.config) {
            *self.rate_limit.borrow_mut() = RateLimitShard::new(&next.config, self.workers, Instant::now());
        }
        self.upstream_slots.set_limit(upstream_limit(&next, self.limits));
        *self.generation.borrow_mut() = Rc::new(next);
    }

    /// Logs a warning about `backend`, at most one a second per backend (see [`WarningGate`]).
    pub fn warn_backend(&self, backend: &BackendState, error: &dyn std::fmt::Display, message: &str) {
        if let Some(suppressed) = backend.warnings.open(Instant::now()) {
            tracing::warn!(backend = %backend.id, error = %error, suppressed, worker = self.index, "{message}");
        }
    }

    /// Updates this worker's metrics; the borrow ends before the closure returns.
    pub fn with_metrics(&self, update: impl FnOnce(&mut WorkerMetrics)) {
        update(&mut self.metrics.borrow_mut());
    }

    /// A copy of this worker's metrics with the gauges (idle connections, health, weight) filled in.
    pub fn metrics_snapshot(&self) -> WorkerMetrics {
        let mut snapshot = self.metrics.borrow().clone();
        snapshot.spliced_bytes = self.pipes.spliced_bytes();
        let generation = self.generation();
        for series in &mut snapshot.backends {
            series.configured = false;
        }
        for (state, config) in generation.backends.iter().zip(&generation.config.backends) {
            if let Some(series) = snapshot.backends.get_mut(state.metrics_slot) {
                let idle = state.idle.borrow().len() as u64;
                series.connections_idle = idle;
                series.connections_open = idle + u64::from(state.in_flight.get());
                series.up = !state.failed();
                series.weight = config.weight;
                series.configured = true;
            }
        }
        snapshot
    }

    /// Appends access log lines produced by `write`; hands the buffer to the writer thread when it is full.
    pub fn access_log(&self, write: impl FnOnce(&mut String)) {
        let full = {
            let mut buffer = self.access_log.borrow_mut();
            write(&mut buffer);
            buffer.len() >= crate::access_log::FLUSH_BYTES
        };
        if full {
            self.flush_access_log();
        }
    }

    /// Hands buffered access log lines to the writer thread.
    pub fn flush_access_log(&self) {
        let lines = std::mem::take(&mut *self.access_log.borrow_mut());
        if !lines.is_empty() {
            let _ = self.access_log_writer.send(LogMessage::Lines(lines.into_bytes()));
        }
    }

    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// Starts a graceful shutdown: connections finish their current exchange and close; idle ones close now.
    pub fn start_draining(&self) {
        self.draining.set(true);
        // Waits that start after this see `draining` and do not begin.
        self.watchdog.end_idle_waits();
        // An accept loop paused at the connection cap wakes to see `draining` and stops.
        self.client_slots.freed.wake_all();
    }

    /// Client connections open on this worker (each holds a client slot).
    pub fn active_connections(&self) -> usize {
        self.client_slots.held()
    }

    /// The most client connections held at once since the last call; starts over from the count now.
    pub fn take_peak_connections(&self) -> usize {
        self.peak_connections.replace(self.active_connections())
    }

    /// Counts a client connection on `frontend` (its `slot` already counts it open) until the guard is dropped.
    pub fn connection_opened(self: &Rc<Self>, frontend: usize, slot: Slot) -> ConnectionGuard {
        self.peak_connections
            .set(self.peak_connections.get().max(self.active_connections()));
        self.with_metrics(|metrics| metrics.connection_opened(frontend));
        ConnectionGuard {
            context: Rc::clone(self),
            frontend,
            _slot: slot,
        }
    }

    /// Closes the upstream connection idle longest on this worker, whichever backend it goes to, to free its
    /// descriptor slot for a request that needs one; false when none is idle.
    pub fn close_an_idle_upstream(&self) -> bool {
        let generation = self.generation();
        let fullest = generation
            .backends
            .iter()
            .max_by_key(|backend| backend.idle.borrow().len());
        fullest.is_some_and(|backend| backend.idle.borrow_mut().drop_oldest())
    }
}

pub struct ConnectionGuard {
    context: Rc<WorkerContext>,
    frontend: usize,
    _slot: Slot,
}

impl Drop for ConnectionGuard {
    // The count of open connections drops with the slot, released after this.
    fn drop(&mut self) {
        self.context
            .with_metrics(|metrics| metrics.connection_closed(self.frontend));
    }
}
