//! Metrics as per-core data: each worker counts into its own [`WorkerMetrics`] (plain integers, no atomics), the
//! control thread collects copies and merges them ([`Merged`]), and renders the result once per scrape
//! (`control::metrics_text`). Totals are exact because merging is addition.

pub mod histogram;
pub mod names;
pub mod render;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::http::Method;
pub use histogram::Histogram;

/// Method label values: a bounded set, never the raw method.
pub const METHOD_CLASSES: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OTHER"];
/// Status class label values.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const CELLS: usize = METHOD_CLASSES.len() * STATUS_CLASSES.len();
/// The backend label of requests answered without a backend (refused, no backend available).
pub const NO_BACKEND: &str = "none";

pub fn method_class(method: Method) -> usize {
    match method {
        Method::Get => 0,
        Method::Head => 1,
        Method::Post => 2,
        Method::Put => 3,
        Method::Delete => 4,
        Method::Options | Method::Trace | Method::Patch | Method::Connect | Method::Other => 5,
    }
}

fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// One frontend's figures on one worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrontendSeries {
    pub name: String,
    pub connections_total: u64,
    pub connections_active: u64,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    pub duration: Histogram,
    pub ratelimit_allowed: u64,
    pub ratelimit_limited: u64,
}

/// One backend's figures on one worker. Requests are per (frontend, method class, status class).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendSeries {
    pub id: String,
    /// `[frontend][method][status]`, flattened.
    pub requests: Vec<u64>,
    pub upstream: Histogram,
    pub connections_new: u64,
    pub connections_reused: u64,
    pub connections_open: u64,
    /// Failed requests that reached this backend (or, for the `none` series, no backend), by category.
    pub errors: BTreeMap<&'static str, u64>,
    /// Filled when a snapshot is taken.
    pub connections_idle: u64,
    pub weight: u32,
    /// The share of its turns dynamic weights let it take on this worker (1 when they are off; filled when a
    /// snapshot is taken). Merged: the sum over the workers that have it configured.
    pub dynamic_share: f64,
    /// Not marked down by this worker (filled when a snapshot is taken).
    pub up: bool,
    /// The circuit breaker's state name and trips on this worker, when it is enabled (filled when a snapshot is
    /// taken).
    pub circuit: Option<(&'static str, u64)>,
    /// In the current config (filled when a snapshot is taken): a removed backend keeps its counters but its
    /// gauges are no longer exposed.
    pub configured: bool,
}

/// What one finished request contributes.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord {
    pub frontend: usize,
    /// Slot from [`WorkerMetrics::backend_slot`]; 0 when no backend was involved.
    pub backend: usize,
    pub method: Method,
    pub status: u16,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub received: u64,
    pub sent: u64,
    pub error: Option<&'static str>,
}

/// Everything one worker counts. Slots only grow, so a backend removed from the config keeps its totals.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerMetrics {
    pub worker: usize,
    pub frontends: Vec<FrontendSeries>,
    pub backends: Vec<BackendSeries>,
    pub errors: BTreeMap<&'static str, u64>,
    pub retries: BTreeMap<&'static str, u64>,
    /// Upstream connections closed instead of reused because their exchange was not clean, by reason.
    pub discarded: BTreeMap<&'static str, u64>,
    pub requests: u64,
    /// Body bytes moved with splice(2) (filled when a snapshot is taken).
    pub spliced_bytes: u64,
    /// Times accepting paused at this worker's share of `server.max_connections`.
    pub accept_paused: u64,
    /// Requests sent to an unhealthy backend because every backend was (panic mode `fail_open`).
    pub panic_routed: u64,
    /// Requests waiting for a backend under its `max_connections` (filled when a snapshot is taken).
    pub capacity_queued: u64,
    pub tls: TlsCounts,
}

/// TLS handshakes on one worker, or merged. Keys start with the frontend's index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsCounts {
    /// Completed handshakes by (frontend, version, cipher suite, resumed).
    pub handshakes: BTreeMap<(usize, &'static str, &'static str, bool), u64>,
    /// Failed handshakes by (frontend, reason).
    pub failures: BTreeMap<(usize, &'static str), u64>,
    /// How long completed handshakes took, from the accept.
    pub duration: Histogram,
}

impl TlsCounts {
    fn merge(&mut self, other: &TlsCounts) {
        for (key, count) in &other.handshakes {
            *self.handshakes.entry(*key).or_insert(0) += count;
        }
        for (key, count) in &other.failures {
            *self.failures.entry(*key).or_insert(0) += count;
        }
        self.duration.merge(&other.duration);
    }
}

impl WorkerMetrics {
    pub fn new(worker: usize, frontends: &[String]) -> WorkerMetrics {
        let mut metrics = WorkerMetrics {
            worker,
            frontends: frontends
                .iter()
                .map(|name| FrontendSeries {
                    name: name.clone(),
                    ..FrontendSeries::default()
                })
                .collect(),
            backends: Vec::new(),
            errors: BTreeMap::new(),
            retries: BTreeMap::new(),
            discarded: BTreeMap::new(),
            requests: 0,
            spliced_bytes: 0,
            accept_paused: 0,
            panic_routed: 0,
            capacity_queued: 0,
            tls: TlsCounts::default(),
        };
        metrics.backend_slot(NO_BACKEND);
        metrics
    }

    /// The slot counting for backend `id`, created on first use.
    pub fn backend_slot(&mut self, id: &str) -> usize {
        if let Some(slot) = self.backends.iter().position(|series| series.id == id) {
            return slot;
        }
        self.backends.push(BackendSeries {
            id: id.to_string(),
            requests: vec![0; self.frontends.len() * CELLS],
            up: true,
            ..BackendSeries::default()
        });
        self.backends.len() - 1
    }

    pub fn record(&mut self, record: &RequestRecord) {
        self.requests += 1;
        if let Some(frontend) = self.frontends.get_mut(record.frontend) {
            frontend.received_bytes += record.received;
            frontend.sent_bytes += record.sent;
            frontend.duration.observe(record.duration.as_secs_f64());
        }
        if let Some(backend) = self.backends.get_mut(record.backend) {
            let cell = record.frontend * CELLS
                + method_class(record.method) * STATUS_CLASSES.len()
                + status_class(record.status);
            if let Some(count) = backend.requests.get_mut(cell) {
                *count += 1;
            }
            if let Some(upstream) = record.upstream {
                backend.upstream.observe(upstream.as_secs_f64());
            }
        }
        if let Some(category) = record.error {
            *self.errors.entry(category).or_insert(0) += 1;
            if let Some(backend) = self.backends.get_mut(record.backend) {
                *backend.errors.entry(category).or_insert(0) += 1;
            }
        }
    }

    pub fn rate_limited(&mut self, frontend: usize, allowed: bool) {
        if let Some(series) = self.frontends.get_mut(frontend) {
            if allowed {
                series.ratelimit_allowed += 1;
            } else {
                series.ratelimit_limited += 1;
            }
        }
    }

    pub fn connection_opened(&mut self, frontend: usize) {
        if let Some(series) = self.frontends.get_mut(frontend) {
            series.connections_total += 1;
            series.connections_active += 1;
        }
    }

    pub fn connection_closed(&mut self, frontend: usize) {
        if let Some(series) = self.frontends.get_mut(frontend) {
            series.connections_active = series.connections_active.saturating_sub(1);
        }
    }

    pub fn upstream_connected(&mut self, slot: usize, reused: bool) {
        if let Some(series) = self.backends.get_mut(slot) {
            if reused {
                series.connections_reused += 1;
            } else {
                series.connections_new += 1;
            }
        }
    }

    pub fn retried(&mut self, reason: &'static str) {
        *self.retries.entry(reason).or_insert(0) += 1;
    }

    pub fn panic_routed(&mut self) {
        self.panic_routed += 1;
    }

    pub fn accept_paused(&mut self) {
        self.accept_paused += 1;
    }

    pub fn upstream_discarded(&mut self, reason: &'static str) {
        *self.discarded.entry(reason).or_insert(0) += 1;
    }

    /// A completed TLS handshake: its version and cipher suite (names as the TLS registry spells them).
    pub fn tls_handshake_done(
        &mut self,
        frontend: usize,
        version: &'static str,
        cipher: &'static str,
        resumed: bool,
        took: Duration,
    ) {
        *self
            .tls
            .handshakes
            .entry((frontend, version, cipher, resumed))
            .or_insert(0) += 1;
        self.tls.duration.observe(took.as_secs_f64());
    }

    pub fn tls_handshake_failed(&mut self, frontend: usize, reason: &'static str) {
        *self.tls.failures.entry((frontend, reason)).or_insert(0) += 1;
    }
}

/// Every worker's metrics added together, by frontend name and backend id.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    pub frontends: BTreeMap<String, FrontendSeries>,
    pub backends: BTreeMap<String, BackendSeries>,
    pub frontend_names: Vec<String>,
    pub errors: BTreeMap<&'static str, u64>,
    pub retries: BTreeMap<&'static str, u64>,
    pub discarded: BTreeMap<&'static str, u64>,
    pub worker_requests: Vec<(usize, u64)>,
    pub spliced_bytes: u64,
    pub accept_paused: u64,
    pub panic_routed: u64,
    pub capacity_queued: u64,
    /// Workers that said a backend is up, and that reported it at all.
    pub backend_up_votes: BTreeMap<String, (usize, usize)>,
    /// Per backend: how many workers have its breaker in each state, and its trips on all workers.
    pub circuits: BTreeMap<String, CircuitVotes>,
    pub tls: TlsCounts,
}

/// One backend's active health check counters, kept by the prober thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckCounts {
    pub healthy: bool,
    pub passed: u64,
    /// Probes passed since the last one that failed (ends an outlier ejection early).
    pub passed_in_a_row: u32,
    /// Failed probes by reason.
    pub failed: BTreeMap<&'static str, u64>,
    pub became_unhealthy: u64,
    pub became_healthy: u64,
}

/// One backend's passive outlier detection, from the control thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutlierCounts {
    pub ejected: bool,
    /// Ejections so far by reason (`consecutive_errors`, `failure_ratio`).
    pub ejections: BTreeMap<&'static str, u64>,
}

/// One backend's circuit breakers over every worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CircuitVotes {
    /// Workers per state name (`closed`, `open`, `half_open`).
    pub states: BTreeMap<&'static str, usize>,
    /// Times traffic was stopped, summed over workers (a stop ordered on every worker counts once per worker).
    pub trips: u64,
}

impl Merged {
    pub fn merge(workers: &[WorkerMetrics]) -> Merged {
        let mut merged = Merged::default();
        for worker in workers {
            merged.worker_requests.push((worker.worker, worker.requests));
            merged.spliced_bytes += worker.spliced_bytes;
            merged.accept_paused += worker.accept_paused;
            merged.panic_routed += worker.panic_routed;
            merged.capacity_queued += worker.capacity_queued;
            if merged.frontend_names.is_empty() {
                merged.frontend_names = worker.frontends.iter().map(|series| series.name.clone()).collect();
            }
            for series in &worker.frontends {
                let total = merged
                    .frontends
                    .entry(series.name.clone())
                    .or_insert_with(|| FrontendSeries {
                        name: series.name.clone(),
                        ..FrontendSeries::default()
                    });
                total.connections_total += series.connections_total;
                total.connections_active += series.connections_active;
                total.received_bytes += series.received_bytes;
                total.sent_bytes += series.sent_bytes;
                total.duration.merge(&series.duration);
                total.ratelimit_allowed += series.ratelimit_allowed;
                total.ratelimit_limited += series.ratelimit_limited;
            }
            for series in &worker.backends {
                let total = merged
                    .backends
                    .entry(series.id.clone())
                    .or_insert_with(|| BackendSeries {
                        id: series.id.clone(),
                        requests: vec![0; series.requests.len()],
                        ..BackendSeries::default()
                    });
                for (mine, theirs) in total.requests.iter_mut().zip(&series.requests) {
                    *mine += theirs;
                }
                total.upstream.merge(&series.upstream);
                total.connections_new += series.connections_new;
                total.connections_reused += series.connections_reused;
                total.connections_open += series.connections_open;
                for (category, count) in &series.errors {
                    *total.errors.entry(category).or_insert(0) += count;
                }
                total.connections_idle += series.connections_idle;
                total.weight = total.weight.max(series.weight);
                total.configured |= series.configured;
                if series.configured {
                    let votes = merged.backend_up_votes.entry(series.id.clone()).or_insert((0, 0));
                    votes.0 += usize::from(series.up);
                    votes.1 += 1;
                    total.dynamic_share += series.dynamic_share;
                    if let Some((state, trips)) = series.circuit {
                        let circuit = merged.circuits.entry(series.id.clone()).or_default();
                        *circuit.states.entry(state).or_insert(0) += 1;
                        circuit.trips += trips;
                    }
                }
            }
            for (category, count) in &worker.errors {
                *merged.errors.entry(category).or_insert(0) += count;
            }
            for (reason, count) in &worker.retries {
                *merged.retries.entry(reason).or_insert(0) += count;
            }
            for (reason, count) in &worker.discarded {
                *merged.discarded.entry(reason).or_insert(0) += count;
            }
            merged.tls.merge(&worker.tls);
        }
        merged
    }

    /// Requests per (frontend, backend, method class, status class), non-zero cells only.
    pub fn request_cells(&self) -> Vec<(&str, &str, &'static str, &'static str, u64)> {
        let mut cells = Vec::new();
        for (id, series) in &self.backends {
            for (index, &count) in series.requests.iter().enumerate() {
                if count == 0 {
                    continue;
                }
                let frontend = index / CELLS;
                let method = index % CELLS / STATUS_CLASSES.len();
                let status = index % STATUS_CLASSES.len();
                let name = self.frontend_names.get(frontend).map_or("?", String::as_str);
                cells.push((name, id.as_str(), METHOD_CLASSES[method], STATUS_CLASSES[status], count));
            }
        }
        cells
    }

    pub fn total_requests(&self) -> u64 {
        self.worker_requests.iter().map(|(_, count)| count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(frontend: usize, backend: usize, status: u16) -> RequestRecord {
        RequestRecord {
            frontend,
            backend,
            method: Method::Get,
            status,
            duration: Duration::from_micros(300),
            upstream: (backend != 0).then_some(Duration::from_micros(200)),
            received: 100,
            sent: 1000,
            error: (status >= 500).then_some("connect_failed"),
        }
    }

    #[test]
    fn merged_totals_are_exact_across_workers() {
        let names = vec!["web".to_string(), "api".to_string()];
        let mut first = WorkerMetrics::new(0, &names);
        let mut second = WorkerMetrics::new(1, &names);
        let a_first = first.backend_slot("a");
        let b_second = second.backend_slot("b");
        let a_second = second.backend_slot("a");
        for _ in 0..7 {
            first.record(&record(0, a_first, 200));
        }
        for _ in 0..5 {
            second.record(&record(1, a_second, 200));
            second.record(&record(0, b_second, 502));
        }
        second.record(&record(0, 0, 400));
        let merged = Merged::merge(&[first, second]);
        assert_eq!(merged.total_requests(), 18);
        let cells: u64 = merged.request_cells().iter().map(|cell| cell.4).sum();
        assert_eq!(cells, 18, "every request is in exactly one cell");
        assert!(merged.request_cells().contains(&("api", "a", "GET", "2xx", 5)));
        assert!(merged.request_cells().contains(&("web", "none", "GET", "4xx", 1)));
        assert_eq!(merged.backends["a"].upstream.count(), 12);
        assert_eq!(merged.frontends["web"].duration.count(), 13);
        assert_eq!(merged.errors["connect_failed"], 5);
        assert_eq!(
            merged.backends["b"].errors["connect_failed"], 5,
            "counted for the backend too"
        );
        assert!(merged.backends["a"].errors.is_empty());
    }
}
