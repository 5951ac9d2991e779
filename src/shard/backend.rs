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

/// Whether a backend takes a new request on this worker right now. Every coming per-backend rule (active health,
/// circuit breaker, outlier ejection) decides here, in [`BackendState::admits`], so every balancer honours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Takes new requests.
    Admitted,
    /// Failed recently on this worker: skipped until `until`, unless every other backend is skipped too.
    Resting { until: Instant },
    /// Being drained by the operator: finishes what it has, takes nothing new.
    Draining,
}

/// How one attempt at a backend ended, as the request path reports it to [`BackendState::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new connection was opened.
    Connected,
    /// Opening a connection failed (refused, reset, timed out).
    ConnectFailed,
    /// The connection ended before any response byte. `fresh`: it was opened for this request, so the backend
    /// itself is failing; a pooled one may just have been closed by the backend's keep-alive timer.
    LostBeforeResponse { fresh: bool },
    /// The exchange ended: a response head arrived (`status`), whatever happened to the body after it.
    Responded { status: u16 },
    /// The backend answered too slowly, or with something that is not HTTP.
    BadAnswer,
}

/// What a backend's entry in the config says, applied to its state on every generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub weight: u32,
    pub draining: bool,
    /// How long a failed backend rests (`upstream.fail_timeout`).
    pub fail_timeout: Duration,
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
    settings: Cell<Settings>,
    idle: RefCell<IdlePool<BufferedStream>>,
    /// Until when this worker skips the backend after a failure.
    resting_until: Cell<Option<Instant>>,
    in_flight: Cell<u32>,
    /// The last attempt to reach it failed (see [`BackendState::failed`]).
    failed: Cell<bool>,
    /// Warnings about this backend from this worker.
    pub(super) warnings: WarningGate,
}

impl BackendState {
    pub(super) fn new(config: &BackendConfig, addr: SocketAddr, metrics_slot: usize, settings: Settings) -> Self {
        BackendState {
            id: config.id.clone(),
            metrics_slot,
            addr,
            authority: config.authority().into_bytes(),
            settings: Cell::new(settings),
            idle: RefCell::new(IdlePool::default()),
            resting_until: Cell::new(None),
            in_flight: Cell::new(0),
            failed: Cell::new(false),
            warnings: WarningGate::default(),
        }
    }

    /// Takes the settings of the config being applied.
    pub(super) fn configure(&self, settings: Settings) {
        self.settings.set(settings);
    }

    pub fn weight(&self) -> u32 {
        self.settings.get().weight
    }

    /// Whether this backend takes a new request now (see [`Admission`]).
    pub fn admits(&self, now: Instant) -> Admission {
        if self.settings.get().draining {
            return Admission::Draining;
        }
        match self.resting_until.get() {
            Some(until) if now < until => Admission::Resting { until },
            _ => Admission::Admitted,
        }
    }

    /// Takes in how an attempt ended. A failed connect, or a fresh connection lost before any answer, rests the
    /// backend for `fail_timeout` and drops its idle connections; a lost pooled connection drops the idle ones
    /// (they are likely as stale); a new connection ends the rest.
    pub fn record(&self, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Connected => {
                self.resting_until.set(None);
                self.failed.set(false);
            }
            Outcome::ConnectFailed | Outcome::LostBeforeResponse { fresh: true } => {
                self.resting_until.set(Some(now + self.settings.get().fail_timeout));
                self.failed.set(true);
                self.idle.borrow_mut().clear();
            }
            Outcome::LostBeforeResponse { fresh: false } => self.idle.borrow_mut().clear(),
            // Not yet used: the circuit breaker and latency-aware balancing will count these.
            Outcome::Responded { .. } | Outcome::BadAnswer => {}
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

    /// Whether this worker's last attempt to reach the backend failed (and none has succeeded since). The rest
    /// of [`admits`](Self::admits) ends after `fail_timeout`; this stays until the backend answers, so health
    /// reports tell the truth in between.
    pub fn failed(&self) -> bool {
        self.failed.get()
    }

    /// Would take new requests were it not for a recent failure: not draining.
    pub fn serving(&self) -> bool {
        !self.settings.get().draining
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

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(draining: bool) -> BackendState {
        let config = BackendConfig {
            id: "a".into(),
            url: "http://127.0.0.1:1".into(),
            host: "127.0.0.1".into(),
            port: 1,
            weight: 1,
            drain: draining,
        };
        let settings = Settings {
            weight: 1,
            draining,
            fail_timeout: Duration::from_secs(10),
        };
        BackendState::new(&config, "127.0.0.1:1".parse().unwrap(), 0, settings)
    }

    #[test]
    fn a_failed_connect_rests_the_backend_until_its_fail_timeout() {
        let state = backend(false);
        let now = Instant::now();
        assert_eq!(state.admits(now), Admission::Admitted);
        state.record(Outcome::ConnectFailed, now);
        let until = now + Duration::from_secs(10);
        assert_eq!(state.admits(now), Admission::Resting { until });
        assert!(state.failed());
        assert_eq!(state.admits(until), Admission::Admitted, "the rest ends");
        assert!(state.failed(), "still reported failed until it answers");
        state.record(Outcome::Connected, until);
        assert!(!state.failed());
    }

    #[test]
    fn a_lost_pooled_connection_does_not_rest_the_backend() {
        let state = backend(false);
        let now = Instant::now();
        state.record(Outcome::LostBeforeResponse { fresh: false }, now);
        assert_eq!(state.admits(now), Admission::Admitted);
        state.record(Outcome::LostBeforeResponse { fresh: true }, now);
        assert!(matches!(state.admits(now), Admission::Resting { .. }));
    }

    #[test]
    fn a_draining_backend_is_never_admitted() {
        let state = backend(true);
        assert_eq!(state.admits(Instant::now()), Admission::Draining);
        assert!(!state.serving());
    }
}
