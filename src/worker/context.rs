//! A worker's own state: the generation (config + backend set + balancer) new requests use, the backends' idle
//! connection pools and passive failure marks, and the counters graceful shutdown waits on. Owned by one thread;
//! `Cell`/`RefCell` only, never held across an `.await`.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::{CancelHandle, Canceller};

use super::messages::{BackendReport, Snapshot};
use crate::balance::Balancer;
use crate::config::{BackendConfig, Config};
use crate::http::head::HeadLimits;
use crate::net::BufferedStream;
use crate::upstream::IdlePool;

/// One backend as seen by one worker. Carried from one generation to the next while its id and address stay, so
/// idle connections and failure marks survive config changes.
pub struct BackendState {
    pub id: String,
    pub addr: SocketAddr,
    /// `host:port`, the `Host` sent for requests that came without one.
    pub authority: Vec<u8>,
    idle: RefCell<IdlePool<BufferedStream>>,
    /// Until when this worker skips the backend after a failed connect.
    down_until: Cell<Option<Instant>>,
    in_flight: Cell<u32>,
}

impl BackendState {
    fn new(config: &BackendConfig, addr: SocketAddr) -> BackendState {
        BackendState {
            id: config.id.clone(),
            addr,
            authority: config.authority().into_bytes(),
            idle: RefCell::new(IdlePool::default()),
            down_until: Cell::new(None),
            in_flight: Cell::new(0),
        }
    }

    /// Counts a request in flight to this backend until the guard is dropped.
    pub fn begin_request(self: &Rc<Self>) -> InFlightGuard {
        self.in_flight.set(self.in_flight.get() + 1);
        InFlightGuard {
            backend: Rc::clone(self),
        }
    }

    pub fn report(&self, now: Instant) -> BackendReport {
        BackendReport {
            id: self.id.clone(),
            in_flight: self.in_flight.get(),
            idle_connections: self.idle.borrow().len(),
            down: !self.available(now),
        }
    }

    /// Not marked down by a recent connect failure.
    pub fn available(&self, now: Instant) -> bool {
        self.down_until.get().is_none_or(|until| now >= until)
    }

    pub fn mark_failed(&self, until: Instant) {
        self.down_until.set(Some(until));
        self.idle.borrow_mut().clear();
    }

    pub fn mark_succeeded(&self) {
        if self.down_until.get().is_some() {
            self.down_until.set(None);
        }
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
    pub fn build(snapshot: &Snapshot, previous: Option<&Generation>, worker: usize) -> Generation {
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
                    .unwrap_or_else(|| Rc::new(BackendState::new(backend, addr)))
            })
            .collect();
        let weights: Vec<u32> = config
            .backends
            .iter()
            .map(|backend| backend.weight)
            .collect();
        let balancer = Balancer::new(config.balancer.algorithm, &weights);
        for _ in 0..worker {
            balancer.pick(|_| true);
        }
        Generation {
            version: snapshot.version,
            config: Arc::clone(config),
            backends,
            balancer,
            accepting: config
                .backends
                .iter()
                .map(|backend| !backend.drain)
                .collect(),
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
    generation: RefCell<Rc<Generation>>,
    draining: Cell<bool>,
    active_connections: Cell<usize>,
    /// Cancels idle keep-alive waits when shutdown begins.
    idle_waits: RefCell<Canceller>,
}

impl WorkerContext {
    pub fn new(index: usize, generation: Generation) -> WorkerContext {
        WorkerContext {
            index,
            generation: RefCell::new(Rc::new(generation)),
            draining: Cell::new(false),
            active_connections: Cell::new(0),
            idle_waits: RefCell::new(Canceller::new()),
        }
    }

    /// The generation new requests start on.
    pub fn generation(&self) -> Rc<Generation> {
        Rc::clone(&self.generation.borrow())
    }

    pub fn replace_generation(&self, generation: Generation) {
        *self.generation.borrow_mut() = Rc::new(generation);
    }

    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// Starts a graceful shutdown: connections finish their current exchange and close; idle ones close now.
    pub fn start_draining(&self) {
        self.draining.set(true);
        let cancelled = std::mem::replace(&mut *self.idle_waits.borrow_mut(), Canceller::new());
        // The returned canceller is fresh and unused: waits started after this point are not cancelled.
        let _ = cancelled.cancel();
    }

    pub fn idle_wait_handle(&self) -> CancelHandle {
        self.idle_waits.borrow().handle()
    }

    pub fn active_connections(&self) -> usize {
        self.active_connections.get()
    }

    /// Counts a client connection until the returned guard is dropped.
    pub fn connection_opened(self: &Rc<Self>) -> ConnectionGuard {
        self.active_connections
            .set(self.active_connections.get() + 1);
        ConnectionGuard {
            context: Rc::clone(self),
        }
    }
}

pub struct ConnectionGuard {
    context: Rc<WorkerContext>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let count = &self.context.active_connections;
        count.set(count.get().saturating_sub(1));
    }
}
