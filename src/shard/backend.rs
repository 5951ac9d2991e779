//! One backend as one worker sees it: its idle connection pool, requests in flight and passive failure marks.
//! Carried from one generation to the next while the backend keeps its id and address.

use super::capacity::CapacityQueue;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::outcomes::Tally;
use super::warnings::WarningGate;
use crate::balance::dynamic::{self, DynamicSettings, Performance, Samples};
use crate::balance::peak::PeakEwma;
use crate::config::BackendConfig;
use crate::net::BufferedStream;
use crate::upstream::breaker::{Attempt, Breaker, BreakerSettings, Traffic, TrialRound, Verdict};
use crate::upstream::IdlePool;

/// One backend as one worker sees it right now, for `ctl backends` and `/health`.
#[derive(Debug, Clone)]
pub struct BackendReport {
    pub id: String,
    pub in_flight: u32,
    pub idle_connections: usize,
    /// Marked down after a failed connect.
    pub down: bool,
    /// The active health checks found it unhealthy.
    pub unhealthy: bool,
    /// Ejected by passive outlier detection, on the control thread's order.
    pub ejected: bool,
    /// The share of its turns it takes: below 1 during slow start.
    pub share: f64,
    /// What dynamic weights made of it on this worker, when they are on.
    pub dynamic: Option<DynamicReport>,
    /// The circuit breaker's state on this worker (`closed`, `open`, `half_open`), when it is enabled.
    pub circuit: Option<&'static str>,
    /// Consecutive failures the breaker has counted on this worker.
    pub circuit_failures: u32,
}

/// One backend's dynamic weight on one worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamicReport {
    /// The share of its turns it takes (its effective weight over its configured one).
    pub share: f64,
    /// Its average time to a response head, once it answered.
    pub latency: Option<Duration>,
    pub error_rate: f64,
}

/// Whether a backend takes a new request on this worker right now. Every coming per-backend rule (active health,
/// circuit breaker, outlier ejection) decides here, in [`BackendState::admits`], so every balancer honours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Takes new requests.
    Admitted,
    /// Failed recently on this worker: skipped until `until`, unless every other backend is skipped too.
    Resting { until: Instant },
    /// Its circuit breaker stops traffic (open, or every half-open trial slot taken): never picked.
    Stopped,
    /// Ejected by passive outlier detection until `until`: skipped unless every other backend is skipped too.
    Ejected { until: Instant },
    /// The active health checks found it unhealthy: picked only in panic (`healthcheck.panic_mode = "fail_open"`
    /// with every backend that is not draining unhealthy).
    Unhealthy,
    /// Being drained by the operator: finishes what it has, takes nothing new.
    Draining,
}

impl Admission {
    /// May take a request when no backend is [`Admitted`](Admission::Admitted): a resting or ejected backend
    /// may be back, and refusing outright helps nobody; a stopped or draining one may not.
    pub fn as_fallback(self) -> bool {
        matches!(
            self,
            Admission::Admitted | Admission::Resting { .. } | Admission::Ejected { .. }
        )
    }
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
    /// The exchange ended: a response head arrived (`status`, `latency` after the request was sent), whatever
    /// happened to the body after it.
    Responded { status: u16, latency: Duration },
    /// The backend answered too slowly, or with something that is not HTTP.
    BadAnswer,
}

/// What a backend's entry in the config says, applied to its state on every generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub weight: u32,
    /// Requests (and so connections) this worker may have in flight to it at once: its part of `max_connections`,
    /// `u32::MAX` when there is none.
    pub capacity: u32,
    pub draining: bool,
    /// How long a failed backend rests (`upstream.fail_timeout`).
    pub fail_timeout: Duration,
    /// The circuit breaker, when `[circuitbreaker]` is enabled.
    pub breaker: Option<BreakerSettings>,
    /// Response statuses the breaker counts as failures (`circuitbreaker.failure_statuses`).
    pub failure_statuses: StatusSet,
    /// How long a backend that joins or recovers takes to reach its full share (`upstream.slow_start`; zero: at
    /// once).
    pub slow_start: Duration,
    /// The statuses passive outlier detection counts as gateway errors, when `[outlier_detection]` is enabled.
    pub outlier_statuses: Option<StatusSet>,
    /// Dynamic weights, when `[balancer.dynamic_weights]` is enabled.
    pub dynamic: Option<DynamicSettings>,
    /// Keep the peak EWMA of response times (`least_response_time`).
    pub response_time: bool,
}

/// The share of its turns a backend takes `elapsed` into its slow start of `window`: from a tenth (Envoy's
/// minimum weight) rising linearly to all of them.
pub fn ramp_share(elapsed: Duration, window: Duration) -> f64 {
    if window.is_zero() || elapsed >= window {
        return 1.0;
    }
    (elapsed.as_secs_f64() / window.as_secs_f64()).max(0.1)
}

/// A set of 5xx statuses, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusSet(u128);

impl StatusSet {
    /// The 5xx statuses among `statuses`; others are left out (config validation refuses them).
    pub fn of(statuses: &[u16]) -> StatusSet {
        let bits = statuses
            .iter()
            .filter(|status| (500..600).contains(*status))
            .fold(0u128, |bits, status| bits | 1 << (status - 500));
        StatusSet(bits)
    }

    pub fn contains(self, status: u16) -> bool {
        (500..600).contains(&status) && self.0 & (1 << (status - 500)) != 0
    }
}

/// What changed in a backend's breaker on this worker, for the control thread, which combines the workers'
/// breakers (`control::breakers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerChange {
    /// Another consecutive failure while traffic flows.
    FailureCounted { consecutive: u32 },
    /// A success after counted failures: the count starts over.
    Cleared,
    /// This worker stopped traffic until then.
    Tripped { until: Instant },
    /// A trial succeeded: traffic flows again on this worker.
    Closed,
}

/// Holds a half-open trial slot from [`BackendState::claim`] until the attempt's outcome is recorded; dropped
/// before that (the client left, a stale pooled connection), it gives the slot back.
pub struct Claim {
    backend: Rc<BackendState>,
    trial: Option<TrialRound>,
}

impl Claim {
    /// The attempt is one of the breaker's half-open trials.
    pub fn is_trial(&self) -> bool {
        self.trial.is_some()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let (Some(round), Some(breaker)) = (self.trial, self.backend.breaker.borrow_mut().as_mut()) {
            breaker.give_back_trial(round);
        }
    }
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
    /// `https://`: the name its certificate is verified for (and sent as SNI).
    pub tls: Option<TlsTarget>,
    settings: Cell<Settings>,
    idle: RefCell<IdlePool<BufferedStream>>,
    /// Until when this worker skips the backend after a failure.
    resting_until: Cell<Option<Instant>>,
    in_flight: Cell<u32>,
    breaker: RefCell<Option<Breaker>>,
    /// The active health checks found it unhealthy (the health table's word).
    unhealthy: Cell<bool>,
    /// When its slow start began (it joined or recovered), while it lasts.
    ramp_since: Cell<Option<Instant>>,
    /// Turns earned and not yet taken during slow start: each turn adds the share, taking one costs 1.
    ramp_credit: Cell<f64>,
    /// The last attempt to reach it failed (see [`BackendState::failed`]).
    failed: Cell<bool>,
    /// Answers and gateway errors since the last outcome report, for passive outlier detection.
    tally: Cell<Tally>,
    /// Until when passive outlier detection keeps it out (the control thread's order).
    ejected_until: Cell<Option<Instant>>,
    /// Latencies and errors since the last fold into `performance`, for dynamic weights.
    samples: Cell<Samples>,
    /// Its latency and error averages on this worker.
    performance: Cell<Performance>,
    /// The share of its turns dynamic weights let it take (1 when they are off).
    dynamic_share: Cell<f64>,
    /// Its response time for `least_response_time`, when that is the algorithm.
    peak: Cell<PeakEwma>,
    /// Warnings about this backend from this worker.
    pub(super) warnings: WarningGate,
}

/// How to reach an `https://` backend.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    /// `None`: the configured name is neither a DNS name nor an IP address (every connect then fails).
    pub name: Option<rustls::pki_types::ServerName<'static>>,
}

impl BackendState {
    pub(super) fn new(config: &BackendConfig, addr: SocketAddr, metrics_slot: usize, settings: Settings) -> Self {
        BackendState {
            id: config.id.clone(),
            metrics_slot,
            addr,
            authority: config.authority().into_bytes(),
            tls: config.tls.then(|| TlsTarget {
                name: crate::tls::upstream::server_name(config.tls_name()),
            }),
            settings: Cell::new(settings),
            idle: RefCell::new(IdlePool::default()),
            resting_until: Cell::new(None),
            in_flight: Cell::new(0),
            breaker: RefCell::new(settings.breaker.map(Breaker::new)),
            unhealthy: Cell::new(false),
            ramp_since: Cell::new(None),
            ramp_credit: Cell::new(0.0),
            failed: Cell::new(false),
            tally: Cell::new(Tally::default()),
            ejected_until: Cell::new(None),
            samples: Cell::new(Samples::default()),
            performance: Cell::new(Performance::default()),
            dynamic_share: Cell::new(1.0),
            peak: Cell::new(PeakEwma::new(Instant::now())),
            warnings: WarningGate::default(),
        }
    }

    /// Takes the settings of the config being applied.
    pub(super) fn configure(&self, settings: Settings) {
        self.settings.set(settings);
        // A lowered `max_connections`: idle connections past this worker's new part are closed now.
        while self.in_flight.get() as usize + self.idle_connections() > settings.capacity as usize
            && self.close_oldest_idle()
        {}
        let mut breaker = self.breaker.borrow_mut();
        match (breaker.as_mut(), settings.breaker) {
            (Some(breaker), Some(new)) => breaker.reconfigure(new),
            (_, new) => *breaker = new.map(Breaker::new),
        }
    }

    pub fn weight(&self) -> u32 {
        self.settings.get().weight
    }

    /// Whether this backend takes a new request now (see [`Admission`]).
    pub fn admits(&self, now: Instant) -> Admission {
        if self.settings.get().draining {
            return Admission::Draining;
        }
        if self.unhealthy.get() {
            return Admission::Unhealthy;
        }
        if let Some(breaker) = self.breaker.borrow().as_ref() {
            if matches!(breaker.peek(now), Verdict::Refuse { .. } | Verdict::TrialsFull) {
                return Admission::Stopped;
            }
        }
        if let Some(until) = self.ejected_until.get().filter(|until| now < *until) {
            return Admission::Ejected { until };
        }
        match self.resting_until.get() {
            Some(until) if now < until => Admission::Resting { until },
            _ => Admission::Admitted,
        }
    }

    /// Takes the breaker's permission for an attempt on the backend just picked (no `.await` in between, so
    /// what [`admits`](Self::admits) saw still holds). Keep the claim until the attempt's outcome is recorded.
    pub fn claim(self: &Rc<Self>, now: Instant) -> Claim {
        let trial = match self.breaker.borrow_mut().as_mut().map(|breaker| breaker.admit(now)) {
            Some((Verdict::PassAsTrial, round)) => Some(round),
            _ => None,
        };
        Claim {
            backend: Rc::clone(self),
            trial,
        }
    }

    /// Takes in how an attempt ended. A failed connect, or a fresh connection lost before any answer, rests the
    /// backend for `fail_timeout` and drops its idle connections; a lost pooled connection drops the idle ones
    /// (they are likely as stale); a new connection ends the rest. The breaker counts connect failures, fresh
    /// connections lost, bad or late answers and the configured failure statuses as failures, any other
    /// response as a success; what changed in it is returned for the control thread.
    pub fn record(&self, outcome: Outcome, now: Instant) -> Option<BreakerChange> {
        let change = self.record_attempt(outcome, now);
        if change == Some(BreakerChange::Closed) {
            self.start_slow_start(now);
        }
        change
    }

    fn record_attempt(&self, outcome: Outcome, now: Instant) -> Option<BreakerChange> {
        self.mark(outcome, now);
        let settings = self.settings.get();
        let (broke, status) = match outcome {
            Outcome::ConnectFailed | Outcome::LostBeforeResponse { fresh: true } | Outcome::BadAnswer => (true, None),
            Outcome::Responded { status, .. } => (false, Some(status)),
            Outcome::Connected | Outcome::LostBeforeResponse { fresh: false } => return None,
        };
        if let (true, Outcome::Responded { latency, .. }) = (settings.response_time, outcome) {
            let mut peak = self.peak.get();
            peak.observe(latency, now);
            self.peak.set(peak);
        }
        if settings.dynamic.is_some() {
            let mut samples = self.samples.get();
            match outcome {
                Outcome::Responded { status, latency } if status < 500 => samples.responded(latency),
                _ => samples.failed(),
            }
            self.samples.set(samples);
        }
        if let Some(statuses) = settings.outlier_statuses {
            let mut tally = self.tally.get();
            tally.count(broke || status.is_some_and(|status| statuses.contains(status)));
            self.tally.set(tally);
        }
        let attempt = if broke || status.is_some_and(|status| settings.failure_statuses.contains(status)) {
            Attempt::Failed
        } else {
            Attempt::Succeeded
        };
        let mut breaker = self.breaker.borrow_mut();
        let breaker = breaker.as_mut()?;
        let before = breaker.traffic();
        breaker.record(attempt, now);
        change_between(before, breaker.traffic())
    }

    /// Takes the active health checks' word for this backend; one that recovers starts its slow start.
    pub fn set_unhealthy(&self, unhealthy: bool) {
        if self.unhealthy.replace(unhealthy) && !unhealthy {
            self.start_slow_start(Instant::now());
        }
    }

    /// Begins a slow start at `now` (the backend joined or recovered); nothing when slow start is off.
    pub fn start_slow_start(&self, now: Instant) {
        if !self.settings.get().slow_start.is_zero() {
            self.ramp_since.set(Some(now));
            self.ramp_credit.set(0.0);
        }
    }

    /// Whether the backend takes this turn of the balancer: always, except during slow start, when it takes its
    /// [`ramp_share`] of its turns, and when dynamic weights thin them out; the two shares multiply. A credit
    /// counter, so the share is exact and no random number is drawn.
    pub fn takes_turn(&self, now: Instant) -> bool {
        let ramp = match self.ramp_since.get() {
            None => 1.0,
            Some(since) => {
                let share = ramp_share(now.saturating_duration_since(since), self.settings.get().slow_start);
                if share >= 1.0 {
                    self.ramp_since.set(None);
                }
                share
            }
        };
        let share = ramp * self.dynamic_share.get();
        if share >= 1.0 {
            return true;
        }
        let credit = self.ramp_credit.get() + share;
        // A hair under 1 counts: tenths added ten times must make a turn.
        let takes = credit >= 1.0 - 1e-9;
        self.ramp_credit.set(if takes { credit - 1.0 } else { credit });
        takes
    }

    /// The share of its turns slow start lets it take now: below 1 while it ramps up.
    pub fn share(&self, now: Instant) -> f64 {
        self.ramp_since.get().map_or(1.0, |since| {
            ramp_share(now.saturating_duration_since(since), self.settings.get().slow_start)
        })
    }

    /// Folds the samples since the last call into its averages (dynamic weights); `elapsed` since that call.
    pub fn fold_performance(&self, elapsed: Duration) {
        let samples = self.samples.take();
        match self.settings.get().dynamic {
            Some(dynamic) => {
                let mut performance = self.performance.get();
                performance.fold(samples, elapsed, dynamic.decay);
                self.performance.set(performance);
            }
            // Off: turned on again later, it starts afresh rather than from stale averages.
            None => self.performance.set(Performance::default()),
        }
    }

    pub fn performance(&self) -> Performance {
        self.performance.get()
    }

    /// Sets its share from its averages against `best`, the lowest latency average among its peers; back to 1
    /// when dynamic weights are off.
    pub fn update_dynamic_share(&self, best: Option<f64>) {
        let share = self
            .settings
            .get()
            .dynamic
            .map_or(1.0, |dynamic| dynamic::share(&self.performance.get(), best, &dynamic));
        self.dynamic_share.set(share);
    }

    /// Its response time as `least_response_time` counts it at `now` (peak EWMA, seconds).
    pub fn response_time(&self, now: Instant) -> f64 {
        self.peak.get().get(now)
    }

    /// The share of its turns dynamic weights let it take: its weight times this is its effective weight.
    pub fn dynamic_share(&self) -> f64 {
        self.dynamic_share.get()
    }

    pub fn unhealthy(&self) -> bool {
        self.unhealthy.get()
    }

    /// Whether a gateway error was counted since the last [`take_tally`](Self::take_tally).
    pub fn has_unreported_failure(&self) -> bool {
        self.tally.get().has_failures()
    }

    /// The answers counted since the last call, when there were any (see `shard::outcomes`).
    pub fn take_tally(&self) -> Option<Tally> {
        let mut tally = self.tally.get();
        if !tally.has_news() {
            return None;
        }
        let taken = tally.take();
        self.tally.set(tally);
        Some(taken)
    }

    /// Obeys passive outlier detection: ejected until `until`, or back now (`None`). A backend that comes back
    /// starts its slow start then: an ejection's end is known in advance, an early return starts it at once.
    pub fn eject(&self, until: Option<Instant>, now: Instant) {
        let was = self.ejected_until.replace(until);
        match until {
            Some(until) if !self.settings.get().slow_start.is_zero() => {
                self.ramp_since.set(Some(until));
                self.ramp_credit.set(0.0);
            }
            Some(_) => {}
            None if was.is_some_and(|was| now < was) => self.start_slow_start(now),
            None => {}
        }
    }

    /// Whether passive outlier detection keeps it out now.
    pub fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.get().is_some_and(|until| now < until)
    }

    /// Stops traffic until `until` on the control thread's order (the workers together saw enough failures).
    pub fn stop_traffic(&self, until: Instant) {
        if let Some(breaker) = self.breaker.borrow_mut().as_mut() {
            breaker.stop_until(until);
        }
    }

    /// The breaker's state name and trips on this worker, when it is enabled.
    pub fn circuit(&self) -> Option<(&'static str, u64)> {
        self.breaker
            .borrow()
            .as_ref()
            .map(|breaker| (breaker.state_name(), breaker.trips()))
    }

    fn mark(&self, outcome: Outcome, now: Instant) {
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
            Outcome::Responded { .. } | Outcome::BadAnswer => {}
        }
    }

    /// Counts a request in flight to this backend until the guard is dropped; when the backend has a
    /// `max_connections`, the end of the request gives its turn to the first request in `queue`.
    pub fn begin_request(self: &Rc<Self>, queue: &Rc<CapacityQueue>) -> InFlightGuard {
        self.in_flight.set(self.in_flight.get() + 1);
        InFlightGuard {
            backend: Rc::clone(self),
            queue: Rc::clone(queue),
        }
    }

    pub fn report(&self) -> BackendReport {
        BackendReport {
            id: self.id.clone(),
            in_flight: self.in_flight.get(),
            idle_connections: self.idle_connections(),
            down: self.failed(),
            unhealthy: self.unhealthy.get(),
            ejected: self.ejected(Instant::now()),
            share: self.share(Instant::now()),
            dynamic: self.settings.get().dynamic.map(|_| DynamicReport {
                share: self.dynamic_share.get(),
                latency: self.performance.get().latency(),
                error_rate: self.performance.get().error_rate(),
            }),
            circuit: self.circuit().map(|(state, _)| state),
            circuit_failures: self.breaker.borrow().as_ref().map_or(0, Breaker::consecutive_failures),
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

    /// This worker's requests in flight to it fill its part of `max_connections`: every algorithm skips it. Each
    /// request in flight holds at most one connection, and every idle one was left by a request that ended, so
    /// the worker's connections to it (in use and idle) never exceed its part either.
    pub fn at_capacity(&self) -> bool {
        self.in_flight.get() >= self.settings.get().capacity
    }

    /// An idle connection handed back by a request still in flight to it may be pooled: this worker's
    /// connections to it stay within its part of `max_connections` (which a config change may have lowered).
    pub fn may_pool(&self) -> bool {
        let open = self.in_flight.get() as usize + self.idle_connections();
        open <= self.settings.get().capacity as usize
    }

    /// It has a `max_connections` of its own.
    pub fn has_capacity_limit(&self) -> bool {
        self.settings.get().capacity != u32::MAX
    }

    /// Closes the idle connection that has waited longest; false when none is idle.
    pub fn close_oldest_idle(&self) -> bool {
        self.idle.borrow_mut().drop_oldest()
    }

    pub fn evict_idle(&self, now: Instant, max_idle: Duration) -> usize {
        self.idle.borrow_mut().evict_expired(now, max_idle)
    }
}

/// What a breaker's move from `before` to `after` tells the control thread.
fn change_between(before: Traffic, after: Traffic) -> Option<BreakerChange> {
    match (before, after) {
        (Traffic::Stopped { .. }, _) => None,
        (_, Traffic::Stopped { until }) => Some(BreakerChange::Tripped { until }),
        (Traffic::Trial { .. }, Traffic::Flowing { .. }) => Some(BreakerChange::Closed),
        (
            Traffic::Flowing {
                consecutive_failures: was,
            },
            Traffic::Flowing {
                consecutive_failures: now,
            },
        ) if now > was => Some(BreakerChange::FailureCounted { consecutive: now }),
        (
            Traffic::Flowing {
                consecutive_failures: was,
            },
            Traffic::Flowing {
                consecutive_failures: 0,
            },
        ) if was > 0 => Some(BreakerChange::Cleared),
        _ => None,
    }
}

pub struct InFlightGuard {
    backend: Rc<BackendState>,
    /// Told when the request ends, if the backend has a `max_connections` (asked then: a limit set while the
    /// request was in flight counts too).
    queue: Rc<CapacityQueue>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let count = &self.backend.in_flight;
        count.set(count.get().saturating_sub(1));
        if self.backend.has_capacity_limit() {
            self.queue.freed();
        }
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
            healthcheck: Default::default(),
            tags: Default::default(),
            max_connections: None,
            tls: false,
            server_name: None,
        };
        let settings = Settings {
            weight: 1,
            capacity: u32::MAX,
            draining,
            fail_timeout: Duration::from_secs(10),
            breaker: None,
            failure_statuses: StatusSet::default(),
            slow_start: Duration::ZERO,
            outlier_statuses: None,
            dynamic: None,
            response_time: false,
        };
        BackendState::new(&config, "127.0.0.1:1".parse().unwrap(), 0, settings)
    }

    /// A backend whose breaker stops traffic after 2 failures for 10 s, with one trial, counting 503 as failure.
    fn guarded() -> Rc<BackendState> {
        let state = backend(false);
        state.configure(Settings {
            fail_timeout: Duration::from_secs(1),
            breaker: Some(BreakerSettings {
                threshold: 2,
                open_for: Duration::from_secs(10),
                max_trials: 1,
            }),
            failure_statuses: StatusSet::of(&[503]),
            ..state.settings.get()
        });
        Rc::new(state)
    }

    #[test]
    fn the_breaker_stops_traffic_after_its_threshold_and_says_so() {
        let state = guarded();
        let now = Instant::now();
        assert_eq!(
            state.record(Outcome::ConnectFailed, now),
            Some(BreakerChange::FailureCounted { consecutive: 1 })
        );
        assert_eq!(
            state.record(
                Outcome::Responded {
                    status: 500,
                    latency: Duration::ZERO
                },
                now
            ),
            Some(BreakerChange::Cleared),
            "500 is not a listed failure status: a success"
        );
        state.record(
            Outcome::Responded {
                status: 503,
                latency: Duration::ZERO,
            },
            now,
        );
        let until = now + Duration::from_secs(10);
        assert_eq!(
            state.record(Outcome::BadAnswer, now),
            Some(BreakerChange::Tripped { until })
        );
        assert_eq!(state.admits(now + Duration::from_secs(5)), Admission::Stopped);
        assert!(
            !Admission::Stopped.as_fallback(),
            "never picked, not even as a last resort"
        );
        assert_eq!(state.circuit(), Some(("open", 1)));
        assert_eq!(
            state.record(Outcome::ConnectFailed, now),
            None,
            "a late failure changes nothing"
        );
    }

    #[test]
    fn half_open_takes_one_trial_whose_slot_comes_back_if_it_ends_without_an_outcome() {
        let state = guarded();
        let now = Instant::now();
        state.stop_traffic(now + Duration::from_secs(10));
        let later = now + Duration::from_secs(10);
        assert_eq!(state.admits(later), Admission::Admitted);
        let trial = state.claim(later);
        assert!(trial.is_trial());
        assert_eq!(state.admits(later), Admission::Stopped, "the one trial slot is taken");
        drop(trial);
        assert_eq!(
            state.admits(later),
            Admission::Admitted,
            "the client left: the slot is free"
        );
        let trial = state.claim(later);
        assert_eq!(
            state.record(Outcome::LostBeforeResponse { fresh: false }, later),
            None,
            "a stale pooled connection says nothing about the backend"
        );
        assert_eq!(state.admits(later), Admission::Stopped);
        assert_eq!(
            state.record(
                Outcome::Responded {
                    status: 200,
                    latency: Duration::ZERO
                },
                later
            ),
            Some(BreakerChange::Closed)
        );
        drop(trial);
        assert_eq!(state.admits(later), Admission::Admitted);
        assert_eq!(state.circuit(), Some(("closed", 1)));
    }

    #[test]
    fn slow_start_takes_a_tenth_of_the_turns_at_first_and_all_once_it_is_over() {
        let state = backend(false);
        state.configure(Settings {
            slow_start: Duration::from_secs(100),
            ..state.settings.get()
        });
        let start = Instant::now();
        state.start_slow_start(start);
        let taken = (0..100).filter(|_| state.takes_turn(start)).count();
        assert_eq!(taken, 10, "a tenth at first");
        let halfway = start + Duration::from_secs(50);
        assert_eq!((0..100).filter(|_| state.takes_turn(halfway)).count(), 50);
        let over = start + Duration::from_secs(100);
        assert!((0..10).all(|_| state.takes_turn(over)));
        assert_eq!(state.share(over), 1.0);
        assert_eq!(ramp_share(Duration::from_secs(5), Duration::ZERO), 1.0, "off");
    }

    #[test]
    fn dynamic_weights_thin_out_turns_by_the_observed_latency_and_multiply_with_slow_start() {
        let state = backend(false);
        let dynamic = DynamicSettings {
            decay: Duration::from_secs(1),
            latency_slack: Duration::from_millis(5),
            min_share: 0.05,
        };
        state.configure(Settings {
            dynamic: Some(dynamic),
            ..state.settings.get()
        });
        let now = Instant::now();
        for outcome in [
            Outcome::Connected,
            Outcome::Responded {
                status: 200,
                latency: Duration::from_millis(15),
            },
            Outcome::LostBeforeResponse { fresh: false },
        ] {
            state.record(outcome, now);
        }
        state.fold_performance(Duration::from_millis(100));
        assert_eq!(
            state.performance().latency(),
            Some(Duration::from_millis(15)),
            "the first sample is the average"
        );
        // Against a peer at 5 ms: (5 + 5) / (15 + 5) = one half of its turns, exactly, by the credit counter.
        state.update_dynamic_share(Some(0.005));
        assert!((state.dynamic_share() - 0.5).abs() < 1e-9, "{}", state.dynamic_share());
        let taken = (0..100).filter(|_| state.takes_turn(now)).count();
        assert_eq!(taken, 50);
        // During a slow start (a tenth at first) the shares multiply: a twentieth.
        state.configure(Settings {
            slow_start: Duration::from_secs(60),
            ..state.settings.get()
        });
        state.start_slow_start(now);
        assert_eq!((0..100).filter(|_| state.takes_turn(now)).count(), 5);
        // Turned off: every turn again.
        state.configure(Settings {
            dynamic: None,
            response_time: false,
            slow_start: Duration::ZERO,
            ..state.settings.get()
        });
        state.update_dynamic_share(Some(0.005));
        assert_eq!(state.dynamic_share(), 1.0);
        state.record(Outcome::BadAnswer, now);
        state.fold_performance(Duration::from_millis(100));
        assert_eq!(state.performance().error_rate(), 0.0, "nothing is sampled while off");
    }

    #[test]
    fn gateway_errors_are_tallied_for_outlier_detection_and_an_ejection_ramps_back_in() {
        let state = backend(false);
        state.configure(Settings {
            outlier_statuses: Some(StatusSet::of(&[503])),
            dynamic: None,
            response_time: false,
            slow_start: Duration::from_secs(10),
            ..state.settings.get()
        });
        let now = Instant::now();
        assert_eq!(state.take_tally(), None, "nothing to report");
        for outcome in [
            Outcome::Connected,
            Outcome::Responded {
                status: 503,
                latency: Duration::ZERO,
            },
            Outcome::Responded {
                status: 500,
                latency: Duration::ZERO,
            },
            Outcome::ConnectFailed,
            Outcome::LostBeforeResponse { fresh: false },
            Outcome::BadAnswer,
        ] {
            state.record(outcome, now);
        }
        let tally = state.take_tally().unwrap();
        assert_eq!((tally.requests, tally.failures, tally.longest_run), (4, 3, 2));
        let until = now + Duration::from_secs(30);
        state.eject(Some(until), now);
        assert_eq!(state.admits(now), Admission::Ejected { until });
        assert!(
            Admission::Ejected { until }.as_fallback(),
            "better than refusing the client"
        );
        assert!(!state.ejected(until), "the ejection ends by itself");
        assert!(
            (state.share(until) - 0.1).abs() < 1e-9,
            "and the backend ramps up from then"
        );
        state.eject(Some(until), now);
        state.eject(None, now + Duration::from_secs(1));
        assert!(!state.ejected(now + Duration::from_secs(1)), "an early end");
        assert!(
            (state.share(now + Duration::from_secs(1)) - 0.1).abs() < 1e-9,
            "ramping from then"
        );
    }

    #[test]
    fn without_a_breaker_failures_only_rest_the_backend() {
        let state = backend(false);
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(state.record(Outcome::ConnectFailed, now), None);
        }
        assert!(matches!(state.admits(now), Admission::Resting { .. }));
        assert_eq!(state.circuit(), None);
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
