//! A worker's own state: the generation new requests use, its rate-limit shard, metrics and access-log buffer,
//! its connection slots, and the counters graceful shutdown waits on. Owned by one thread; `Cell`/`RefCell` only,
//! never held across an `.await`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend::{Admission, BackendState, BreakerChange, Outcome};
use super::capacity::CapacityQueue;
use super::generation::{Generation, Place, Snapshot};
use super::health::HealthTable;
use super::outcomes::{BackendTally, OutcomeReport};
use super::request_id::RequestIds;
use super::tls::CoreTls;
use super::warnings::WarningGate;
use crate::access_log::LogMessage;
use crate::balance::dynamic;
use crate::config::Config;
use crate::metrics::WorkerMetrics;
use crate::net::slots::{Slot, Slots};
use crate::net::{PipePool, Watchdog};
use crate::ratelimit::RateLimitShard;
use crate::upstream::backoff::{backoff, Jitter};
use crate::upstream::budget::{BudgetSettings, RetryBudget};

/// The worker-wide state shared by its tasks.
pub struct WorkerContext {
    pub index: usize,
    pub request_ids: RequestIds,
    /// How many workers share the process-wide rate limits.
    pub workers: usize,
    pub rate_limit: RefCell<RateLimitShard>,
    /// This worker's share of the retry budget.
    retry_budget: RefCell<RetryBudget>,
    /// Random numbers for backoff jitter.
    jitter: RefCell<Jitter>,
    metrics: RefCell<WorkerMetrics>,
    /// Access log lines not yet handed to the writer thread.
    access_log: RefCell<String>,
    access_log_writer: crossbeam_channel::Sender<LogMessage>,
    /// Where changes of this worker's circuit breakers go, for the control thread to combine.
    breaker_news: crossbeam_channel::Sender<BreakerNews>,
    /// Where the counts for passive outlier detection go (the control thread).
    outcome_reports: crossbeam_channel::Sender<OutcomeReport>,
    /// Outcome reports sent early (on a gateway error) since the last periodic one.
    early_reports: Cell<u32>,
    generation: RefCell<Rc<Generation>>,
    /// The active health checks' latest word, applied to every generation's backends.
    health: RefCell<Arc<HealthTable>>,
    /// Built by a prepare, waiting for its commit or abort.
    prepared: RefCell<Option<Generation>>,
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
    /// Requests waiting for a backend under its `max_connections`.
    pub capacity: Rc<CapacityQueue>,
    /// This core's TLS server configs, one per TLS frontend.
    pub tls: RefCell<CoreTls>,
    limits: WorkerLimits,
}

/// A change in one backend's circuit breaker on one worker, on its way to the control thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerNews {
    pub worker: usize,
    pub backend: String,
    pub change: BreakerChange,
}

/// Where a worker sends what leaves it besides answers: access log lines to the writer thread, breaker changes and
/// outcome counts to the control thread.
pub struct Outboxes {
    pub access_log: crossbeam_channel::Sender<LogMessage>,
    pub breaker_news: crossbeam_channel::Sender<BreakerNews>,
    pub outcome_reports: crossbeam_channel::Sender<OutcomeReport>,
}

/// The upstream connections a worker may hold under `generation`'s config.
fn upstream_limit(generation: &Generation, limits: WorkerLimits) -> usize {
    let per_backend = generation.config.upstream.max_connections_per_backend;
    per_backend
        .saturating_mul(generation.backends.len().max(1))
        .min(limits.upstream)
}

/// One worker's retry budget: the process-wide reserve split evenly over the workers.
fn budget_settings(config: &Config, workers: usize) -> BudgetSettings {
    BudgetSettings {
        ratio: config.retries.budget_ratio,
        min_per_second: config.retries.budget_min_per_second / workers.max(1) as f64,
        window: config.retries.budget_window,
    }
}

/// Marks every backend of `generation` healthy or not as `table` says.
fn apply_health(generation: &Generation, table: &HealthTable) {
    for backend in &generation.backends {
        backend.set_unhealthy(table.is_unhealthy(&backend.id, backend.addr));
    }
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
        outboxes: Outboxes,
        process_seed: u64,
        workers: usize,
        limits: WorkerLimits,
    ) -> WorkerContext {
        let mut tls = CoreTls::default();
        tls.follow(
            &generation.tls,
            &generation.identity_headers(),
            generation.ticket_keys.as_ref(),
        );
        tls.follow_upstream(generation.upstream_tls.as_ref());
        WorkerContext {
            tls: RefCell::new(tls),
            index,
            request_ids: RequestIds::new(process_seed, index),
            workers,
            rate_limit: RefCell::new(RateLimitShard::new(&generation.config, workers, Instant::now())),
            retry_budget: RefCell::new(RetryBudget::new(
                budget_settings(&generation.config, workers),
                Instant::now(),
            )),
            jitter: RefCell::new(Jitter::new(
                process_seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            )),
            metrics: RefCell::new(metrics),
            access_log: RefCell::new(String::new()),
            access_log_writer: outboxes.access_log,
            breaker_news: outboxes.breaker_news,
            outcome_reports: outboxes.outcome_reports,
            early_reports: Cell::new(0),
            draining: Cell::new(false),
            peak_connections: Cell::new(0),
            watchdog: Watchdog::new(),
            pipes: PipePool::default(),
            warnings: WarningGate::default(),
            client_slots: Slots::new(limits.clients),
            upstream_slots: Slots::new(upstream_limit(&generation, limits)),
            capacity: Rc::default(),
            generation: RefCell::new(Rc::new(generation)),
            health: RefCell::new(Arc::default()),
            prepared: RefCell::new(None),
            limits,
        }
    }

    /// The generation new requests start on.
    pub fn generation(&self) -> Rc<Generation> {
        Rc::clone(&self.generation.borrow())
    }

    /// Builds the generation for `snapshot` beside the current one, carrying state over from it; requests go on
    /// using the current one until [`commit`](Self::commit). A second prepare replaces the first.
    pub fn prepare(&self, snapshot: &Snapshot) {
        let current = self.generation();
        let next = Generation::build(
            snapshot,
            Some(&current),
            Place {
                index: self.index,
                workers: self.workers,
            },
            &mut self.metrics.borrow_mut(),
        );
        *self.prepared.borrow_mut() = Some(next);
    }

    /// Drops the generation prepared for `version`, if it is the one waiting.
    pub fn abort(&self, version: u64) {
        let mut prepared = self.prepared.borrow_mut();
        if prepared.as_ref().is_some_and(|next| next.version == version) {
            *prepared = None;
        }
    }

    /// Installs the generation prepared for `version`; false when none is waiting for that version.
    pub fn commit(&self, version: u64) -> bool {
        let next = {
            let mut prepared = self.prepared.borrow_mut();
            match prepared.take() {
                Some(next) if next.version == version => next,
                other => {
                    *prepared = other;
                    return false;
                }
            }
        };
        self.install(next);
        true
    }

    fn install(&self, next: Generation) {
        next.configure_backends();
        self.tls
            .borrow_mut()
            .follow(&next.tls, &next.identity_headers(), next.ticket_keys.as_ref());
        self.tls.borrow_mut().follow_upstream(next.upstream_tls.as_ref());
        apply_health(&next, &self.health.borrow());
        // A limits change rebuilds the shard; any other change keeps what it has counted.
        if !self.rate_limit.borrow().matches(&next.config) {
            *self.rate_limit.borrow_mut() = RateLimitShard::new(&next.config, self.workers, Instant::now());
        }
        self.upstream_slots.set_limit(upstream_limit(&next, self.limits));
        let budget = budget_settings(&next.config, self.workers);
        if self.retry_budget.borrow().settings() != budget {
            *self.retry_budget.borrow_mut() = RetryBudget::new(budget, Instant::now());
        }
        *self.generation.borrow_mut() = Rc::new(next);
        self.capacity.changed();
    }

    /// Records how an attempt at `backend` ended ([`BackendState::record`]) and tells the control thread what
    /// changed in its circuit breaker. Only changes are sent (a failure counted, a trip, a recovery): a request
    /// that succeeds against a healthy backend sends nothing. A gateway error sends the outcome counts at once,
    /// up to `consecutive_errors` times per report interval (see `shard::outcomes`).
    pub fn record(&self, backend: &BackendState, outcome: Outcome, now: Instant) {
        if let Some(change) = backend.record(outcome, now) {
            let news = BreakerNews {
                worker: self.index,
                backend: backend.id.clone(),
                change,
            };
            let _ = self.breaker_news.send(news);
        }
        if backend.has_unreported_failure() {
            let early = self
                .generation
                .borrow()
                .config
                .outlier_detection
                .consecutive_errors
                .max(1);
            if self.early_reports.get() < early {
                self.early_reports.set(self.early_reports.get() + 1);
                self.send_outcomes();
            }
        }
    }

    /// Obeys the control thread's order to stop traffic to `backend` until `until` (the workers' breakers
    /// together saw enough failures); a backend no longer in the generation is left alone.
    pub fn stop_traffic(&self, backend: &str, until: Instant) {
        let generation = self.generation();
        if let Some(state) = generation.backends.iter().find(|state| state.id == backend) {
            state.stop_traffic(until);
        }
    }

    /// The periodic report: sends the control thread what this worker counted of each backend's answers since the
    /// last report (see `shard::outcomes`); nothing when outlier detection is off or no backend had traffic.
    /// Dynamic weights: folds each backend's samples of the last `elapsed` into its averages, then sets its share
    /// against the lowest latency among the backends admitted now (`balance::dynamic`). Called every
    /// `REPORT_INTERVAL`; with dynamic weights off every share is 1.
    pub fn refresh_dynamic_weights(&self, elapsed: Duration, now: Instant) {
        let generation = self.generation();
        for state in &generation.backends {
            state.fold_performance(elapsed);
        }
        // Off, no reference is needed: every share goes back to 1 without asking each backend's admission.
        let best = if generation.config.balancer.dynamic_weights.enabled {
            dynamic::best_latency(
                generation
                    .backends
                    .iter()
                    .filter(|state| state.admits(now) == Admission::Admitted)
                    .map(|state| state.performance()),
            )
        } else {
            None
        };
        for state in &generation.backends {
            state.update_dynamic_share(best);
        }
    }

    pub fn report_outcomes(&self) {
        self.early_reports.set(0);
        self.send_outcomes();
    }

    fn send_outcomes(&self) {
        let generation = self.generation();
        if !generation.config.outlier_detection.enabled {
            return;
        }
        let backends: Vec<BackendTally> = generation
            .backends
            .iter()
            .filter_map(|state| {
                state.take_tally().map(|tally| BackendTally {
                    backend: state.id.clone(),
                    addr: state.addr,
                    tally,
                })
            })
            .collect();
        if !backends.is_empty() {
            let _ = self.outcome_reports.send(OutcomeReport {
                worker: self.index,
                backends,
            });
        }
    }

    /// Obeys passive outlier detection's order for `backend` (ejected until then, or back now); a backend no
    /// longer in the generation, or at another address, is left alone.
    pub fn eject(&self, backend: &str, addr: std::net::SocketAddr, until: Option<Instant>) {
        let generation = self.generation();
        if let Some(state) = generation
            .backends
            .iter()
            .find(|state| state.id == backend && state.addr == addr)
        {
            state.eject(until, Instant::now());
        }
    }

    /// Counts a client request into the retry budget.
    pub fn count_request(&self, now: Instant) {
        self.retry_budget.borrow_mut().request(now);
    }

    /// Takes one retry from this worker's budget; false (and counted) when it is spent.
    pub fn take_retry(&self, now: Instant) -> bool {
        let granted = self.retry_budget.borrow_mut().try_retry(now);
        if !granted {
            self.with_metrics(|metrics| metrics.retried("budget_exhausted"));
        }
        granted
    }

    /// How long to wait before retry number `retry` of a request (see `upstream::backoff`).
    pub fn backoff(&self, config: &Config, retry: u32) -> std::time::Duration {
        let random = self.jitter.borrow_mut().fraction();
        backoff(config.retries.backoff, config.retries.backoff_max, retry, random)
    }

    /// Takes a newer health table from the control thread and applies it to the running generation; an older
    /// one (out of order) is ignored.
    pub fn set_health(&self, table: Arc<HealthTable>) {
        if table.version < self.health.borrow().version {
            return;
        }
        apply_health(&self.generation(), &table);
        *self.health.borrow_mut() = table;
    }

    /// The version of the health table this worker applies.
    pub fn health_version(&self) -> u64 {
        self.health.borrow().version
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
        snapshot.capacity_queued = self.capacity.waiting() as u64;
        let generation = self.generation();
        for series in &mut snapshot.backends {
            series.configured = false;
        }
        for state in &generation.backends {
            if let Some(series) = snapshot.backends.get_mut(state.metrics_slot) {
                let idle = state.idle_connections() as u64;
                series.connections_idle = idle;
                series.connections_open = idle + u64::from(state.in_flight());
                series.up = !state.failed();
                series.weight = state.weight();
                series.dynamic_share = state.dynamic_share();
                series.circuit = state.circuit();
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
            .max_by_key(|backend| backend.idle_connections());
        fullest.is_some_and(|backend| backend.close_oldest_idle())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Admission;
    use std::sync::Arc;

    fn snapshot(version: u64, drain: bool) -> Snapshot {
        let text = format!(
            "[[frontends]]\nname = \"web\"\naddress = \"127.0.0.1\"\nport = 0\n\n[[backends]]\nurl = \"http://127.0.0.1:9\"\ndrain = {drain}\n"
        );
        Snapshot {
            version,
            config: Arc::new(crate::config::parse_config(&text).unwrap()),
            backend_addrs: vec!["127.0.0.1:9".parse().unwrap()],
            frontend_addrs: vec!["127.0.0.1:1".parse().unwrap()],
            sticky_cookies: Vec::new(),
            tls: Vec::new(),
            ticket_keys: None,
            upstream_tls: None,
        }
    }

    fn context() -> WorkerContext {
        let first = snapshot(1, false);
        let mut metrics = WorkerMetrics::new(0, &["web".to_string()]);
        let generation = Generation::build(&first, None, Place { index: 0, workers: 1 }, &mut metrics);
        let (log, _) = crossbeam_channel::unbounded();
        let (news, _) = crossbeam_channel::unbounded();
        let (outcome_reports, _) = crossbeam_channel::unbounded();
        let limits = WorkerLimits {
            clients: 10,
            upstream: 10,
        };
        let outboxes = Outboxes {
            access_log: log,
            breaker_news: news,
            outcome_reports,
        };
        WorkerContext::new(0, generation, metrics, outboxes, 1, 1, limits)
    }

    #[test]
    fn an_aborted_change_leaves_the_running_generation_and_its_backends_as_they_were() {
        let context = context();
        context.prepare(&snapshot(2, true));
        let now = Instant::now();
        assert_eq!(
            context.generation().version,
            1,
            "a prepare changes nothing for requests"
        );
        context.abort(2);
        assert!(!context.commit(2), "nothing is left to commit after an abort");
        let generation = context.generation();
        assert_eq!(generation.version, 1);
        assert_eq!(
            generation.backends[0].admits(now),
            Admission::Admitted,
            "the drain was not applied"
        );
    }

    #[test]
    fn a_committed_change_is_installed_with_its_settings() {
        let context = context();
        context.prepare(&snapshot(2, true));
        assert!(!context.commit(3), "only the prepared version commits");
        assert!(context.commit(2));
        let generation = context.generation();
        assert_eq!(generation.version, 2);
        assert_eq!(generation.backends[0].admits(Instant::now()), Admission::Draining);
    }
}
