//! One backend as one worker sees it: its idle connection pool, requests in flight and passive failure marks.
//! Carried from one generation to the next while the backend keeps its id and address.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::warnings::WarningGate;
use crate::config::BackendConfig;
use crate::net::BufferedStream;
use crate::upstream::IdlePool;

/// One backend as one worker sees it right now, for `ctl backends` and `/health`.
#[derive(Debug, Clone)]
pub struct BackendReport {
    pub id: String,
    pub in_flight: u32,
    pub idle_connections: usize,
    /// Marked down after a failed connect.
    pub down: bool,
}

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
    pub(super) warnings: WarningGate,
}

impl BackendState {
    pub(super) fn new(config: &BackendConfig, addr: SocketAddr, metrics_slot: usize) -> BackendState {
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
            idle_connections: self.idle_connections(),
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

    /// Idle connections to this backend on this worker.
    pub fn idle_connections(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Requests in flight to this backend on this worker.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.get()
    }

    /// Closes the idle connection that has waited longest; false when none is idle.
    pub fn close_oldest_idle(&self) -> bool {
        self.idle.borrow_mut().drop_oldest()
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
