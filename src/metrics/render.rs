//! Renders merged metrics in the Prometheus text format with the `prometheus` crate's encoder, so the output
//! follows the exposition format exactly (escaping, `+Inf`, `_bucket`/`_sum`/`_count`).

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram as ProtoHistogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use super::names::*;
use super::{Histogram, Merged};

/// Figures only the control thread knows.
#[derive(Debug, Clone)]
pub struct ControlFigures {
    pub config_version: u64,
    pub last_reload_successful: bool,
    pub last_reload_unix_seconds: f64,
    pub io_driver: String,
    /// Active health check counters per checked backend.
    pub health_checks: std::collections::BTreeMap<String, super::CheckCounts>,
    /// Passive outlier detection per backend it has judged.
    pub outliers: std::collections::BTreeMap<String, super::OutlierCounts>,
    /// Each TLS certificate in force: (frontend, certificate file, seconds until it expires).
    pub certificates: Vec<(String, String, f64)>,
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect()
}

struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        Family(family)
    }

    fn counter(&mut self, pairs: &[(&str, &str)], value: f64) {
        let mut counter = Counter::default();
        counter.set_value(value);
        let mut metric = Metric::default();
        metric.set_label(labels(pairs));
        metric.set_counter(counter);
        self.0.mut_metric().push(metric);
    }

    fn gauge(&mut self, pairs: &[(&str, &str)], value: f64) {
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        let mut metric = Metric::default();
        metric.set_label(labels(pairs));
        metric.set_gauge(gauge);
        self.0.mut_metric().push(metric);
    }

    fn histogram(&mut self, pairs: &[(&str, &str)], histogram: &Histogram) {
        let mut proto = ProtoHistogram::default();
        proto.set_sample_count(histogram.count());
        proto.set_sample_sum(histogram.sum());
        let buckets = histogram
            .cumulative()
            .map(|(bound, count)| {
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(bound);
                bucket.set_cumulative_count(count);
                bucket
            })
            .collect();
        proto.set_bucket(buckets);
        let mut metric = Metric::default();
        metric.set_label(labels(pairs));
        metric.set_histogram(proto);
        self.0.mut_metric().push(metric);
    }
}

/// The whole exposition for one scrape.
pub fn render(merged: &Merged, control: &ControlFigures) -> String {
    let mut families = Vec::new();

    let mut requests = Family::new(
        REQUESTS,
        "Requests answered, by frontend, backend, method and status class.",
        MetricType::COUNTER,
    );
    for (frontend, backend, method, status, count) in merged.request_cells() {
        requests.counter(
            &[
                ("frontend", frontend),
                ("backend", backend),
                ("method", method),
                ("status_class", status),
            ],
            count as f64,
        );
    }
    families.push(requests);

    let mut duration = Family::new(
        REQUEST_DURATION,
        "Time from a complete request head to the last response byte.",
        MetricType::HISTOGRAM,
    );
    let mut received = Family::new(
        RECEIVED_BYTES,
        "Bytes received from clients (heads and bodies).",
        MetricType::COUNTER,
    );
    let mut sent = Family::new(
        SENT_BYTES,
        "Bytes sent to clients (heads and bodies).",
        MetricType::COUNTER,
    );
    let mut active = Family::new(
        CLIENT_CONNECTIONS_ACTIVE,
        "Client connections open now.",
        MetricType::GAUGE,
    );
    let mut accepted = Family::new(CLIENT_CONNECTIONS, "Client connections accepted.", MetricType::COUNTER);
    let mut limits = Family::new(
        RATELIMIT_DECISIONS,
        "Rate limiter decisions: allowed or limited (answered 429).",
        MetricType::COUNTER,
    );
    for (name, series) in &merged.frontends {
        let pairs = [("frontend", name.as_str())];
        duration.histogram(&pairs, &series.duration);
        received.counter(&pairs, series.received_bytes as f64);
        sent.counter(&pairs, series.sent_bytes as f64);
        active.gauge(&pairs, series.connections_active as f64);
        accepted.counter(&pairs, series.connections_total as f64);
        if series.ratelimit_allowed + series.ratelimit_limited > 0 {
            limits.counter(
                &[("frontend", name), ("decision", "allowed")],
                series.ratelimit_allowed as f64,
            );
            limits.counter(
                &[("frontend", name), ("decision", "limited")],
                series.ratelimit_limited as f64,
            );
        }
    }
    let mut spliced = Family::new(
        SPLICED_BYTES,
        "Body bytes moved with splice(2), never copied through corelb's memory (server.splice_bodies).",
        MetricType::COUNTER,
    );
    spliced.counter(&[], merged.spliced_bytes as f64);
    families.extend([duration, received, sent, spliced, active, accepted, limits]);

    let mut upstream = Family::new(
        UPSTREAM_RESPONSE,
        "Time from sending a request upstream to its response head.",
        MetricType::HISTOGRAM,
    );
    let mut connections = Family::new(
        UPSTREAM_CONNECTIONS,
        "Upstream connections used, newly opened or reused from the pool.",
        MetricType::COUNTER,
    );
    let mut idle = Family::new(
        UPSTREAM_CONNECTIONS_IDLE,
        "Idle upstream keep-alive connections.",
        MetricType::GAUGE,
    );
    let mut open = Family::new(
        UPSTREAM_CONNECTIONS_OPEN,
        "Upstream connections open (in use plus idle).",
        MetricType::GAUGE,
    );
    let mut up = Family::new(
        BACKEND_UP,
        "1 when no worker has the backend marked down.",
        MetricType::GAUGE,
    );
    let mut weight = Family::new(BACKEND_WEIGHT, "Configured backend weight.", MetricType::GAUGE);
    let mut effective = Family::new(
        BACKEND_EFFECTIVE_WEIGHT,
        "The weight the balancers use: the configured weight times the mean share dynamic weights leave it.",
        MetricType::GAUGE,
    );
    let mut circuit = Family::new(
        BACKEND_CIRCUIT_STATE,
        "Workers whose circuit breaker for the backend is in each state (closed, open, half_open).",
        MetricType::GAUGE,
    );
    let mut trips = Family::new(
        BACKEND_CIRCUIT_TRIPS,
        "Times a worker's circuit breaker stopped traffic to the backend, summed over workers.",
        MetricType::COUNTER,
    );
    for (id, series) in &merged.backends {
        if id == super::NO_BACKEND {
            continue;
        }
        let pairs = [("backend", id.as_str())];
        upstream.histogram(&pairs, &series.upstream);
        connections.counter(&[("backend", id), ("kind", "new")], series.connections_new as f64);
        connections.counter(&[("backend", id), ("kind", "reused")], series.connections_reused as f64);
        if !series.configured {
            // Removed from the config: its counters stay, its gauges would only state stale values.
            continue;
        }
        idle.gauge(&pairs, series.connections_idle as f64);
        open.gauge(&pairs, series.connections_open as f64);
        if let Some(&(votes, workers)) = merged.backend_up_votes.get(id) {
            up.gauge(&pairs, if votes == workers { 1.0 } else { 0.0 });
            if workers > 0 {
                let share = series.dynamic_share / workers as f64;
                effective.gauge(&pairs, f64::from(series.weight) * share);
            }
        }
        weight.gauge(&pairs, f64::from(series.weight));
        if let Some(votes) = merged.circuits.get(id) {
            for state in ["closed", "open", "half_open"] {
                let workers = votes.states.get(state).copied().unwrap_or(0);
                circuit.gauge(&[("backend", id), ("state", state)], workers as f64);
            }
            trips.counter(&pairs, votes.trips as f64);
        }
    }
    families.extend([upstream, connections, idle, open, up, weight, effective, circuit, trips]);

    let mut errors = Family::new(
        ERRORS,
        "Failed requests by backend (none: no backend was reached) and error category.",
        MetricType::COUNTER,
    );
    for (id, series) in &merged.backends {
        for (category, count) in &series.errors {
            errors.counter(&[("backend", id), ("category", category)], *count as f64);
        }
    }
    families.push(errors);
    let mut retries = Family::new(
        RETRIES,
        "Requests sent again: to another backend after a failed connect, or after a connection failed before any response byte.",
        MetricType::COUNTER,
    );
    for (reason, count) in &merged.retries {
        retries.counter(&[("reason", reason)], *count as f64);
    }
    families.push(retries);
    let mut discarded = Family::new(
        UPSTREAM_DISCARDED,
        "Upstream connections closed instead of reused: an early answer, bytes past a response's end, or bytes or \
         a close found on an idle connection.",
        MetricType::COUNTER,
    );
    for (reason, count) in &merged.discarded {
        discarded.counter(&[("reason", reason)], *count as f64);
    }
    families.push(discarded);
    let mut paused = Family::new(
        ACCEPT_PAUSED,
        "Times a worker stopped accepting at its share of server.max_connections (new clients wait in the listen queue).",
        MetricType::COUNTER,
    );
    paused.counter(&[], merged.accept_paused as f64);
    families.push(paused);
    let mut per_worker = Family::new(
        WORKER_REQUESTS,
        "Requests answered by each worker (shows SO_REUSEPORT imbalance).",
        MetricType::COUNTER,
    );
    for (worker, count) in &merged.worker_requests {
        per_worker.counter(&[("worker", &worker.to_string())], *count as f64);
    }
    families.push(per_worker);

    let mut healthy = Family::new(
        BACKEND_HEALTHY,
        "1 while the active health checks find the backend healthy (checked backends only).",
        MetricType::GAUGE,
    );
    let mut checks = Family::new(
        HEALTH_CHECKS,
        "Active health probes by backend and result (ok, or why it failed).",
        MetricType::COUNTER,
    );
    let mut transitions = Family::new(
        HEALTH_TRANSITIONS,
        "Times a backend's checked health flipped, by the state it flipped to.",
        MetricType::COUNTER,
    );
    for (id, counts) in &control.health_checks {
        let id = id.as_str();
        healthy.gauge(&[("backend", id)], if counts.healthy { 1.0 } else { 0.0 });
        checks.counter(&[("backend", id), ("result", "ok")], counts.passed as f64);
        for (reason, count) in &counts.failed {
            checks.counter(&[("backend", id), ("result", reason)], *count as f64);
        }
        transitions.counter(&[("backend", id), ("to", "healthy")], counts.became_healthy as f64);
        transitions.counter(&[("backend", id), ("to", "unhealthy")], counts.became_unhealthy as f64);
    }
    let mut panic = Family::new(
        PANIC_ROUTED,
        "Requests sent to an unhealthy backend because every backend was unhealthy (healthcheck.panic_mode = fail_open).",
        MetricType::COUNTER,
    );
    panic.counter(&[], merged.panic_routed as f64);
    let mut queued = Family::new(
        CAPACITY_QUEUED,
        "Requests waiting for a backend under its max_connections (upstream.capacity_queue).",
        MetricType::GAUGE,
    );
    queued.gauge(&[], merged.capacity_queued as f64);
    families.extend([healthy, checks, transitions, panic, queued]);
    let mut ejected = Family::new(
        BACKEND_EJECTED,
        "1 while passive outlier detection keeps the backend out.",
        MetricType::GAUGE,
    );
    let mut ejections = Family::new(
        OUTLIER_EJECTIONS,
        "Times passive outlier detection ejected the backend, by reason.",
        MetricType::COUNTER,
    );
    for (id, counts) in &control.outliers {
        let id = id.as_str();
        ejected.gauge(&[("backend", id)], if counts.ejected { 1.0 } else { 0.0 });
        for (reason, count) in &counts.ejections {
            ejections.counter(&[("backend", id), ("reason", reason)], *count as f64);
        }
    }
    families.extend([ejected, ejections]);
    families.extend(tls_families(merged, control));

    let mut version = Family::new(CONFIG_VERSION, "Version of the config in force.", MetricType::GAUGE);
    version.gauge(&[], control.config_version as f64);
    let mut reload_ok = Family::new(
        CONFIG_LAST_RELOAD_SUCCESS,
        "1 when the last reload or apply succeeded.",
        MetricType::GAUGE,
    );
    reload_ok.gauge(&[], if control.last_reload_successful { 1.0 } else { 0.0 });
    let mut reload_time = Family::new(
        CONFIG_LAST_RELOAD_TIME,
        "When the last reload or apply was attempted.",
        MetricType::GAUGE,
    );
    reload_time.gauge(&[], control.last_reload_unix_seconds);
    let mut build = Family::new(BUILD_INFO, "Build and runtime facts; always 1.", MetricType::GAUGE);
    build.gauge(
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("io_driver", &control.io_driver),
        ],
        1.0,
    );
    families.extend([version, reload_ok, reload_time, build]);

    let families: Vec<MetricFamily> = families
        .into_iter()
        .map(|family| family.0)
        .filter(|family| !family.get_metric().is_empty())
        .collect();
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for valid families; an error would be a bug in the names above.
    if let Err(error) = TextEncoder::new().encode(&families, &mut out) {
        tracing::error!(error = %error, "metrics encoding failed");
    }
    String::from_utf8(out).unwrap_or_default()
}

fn tls_families(merged: &Merged, control: &ControlFigures) -> [Family; 4] {
    let frontend = |index: &usize| merged.frontend_names.get(*index).map_or("?", String::as_str);
    let mut handshakes = Family::new(
        TLS_HANDSHAKES,
        "Completed TLS handshakes by frontend, version, cipher suite and whether the session was resumed.",
        MetricType::COUNTER,
    );
    for ((index, version, cipher, resumed), count) in &merged.tls.handshakes {
        let resumed = if *resumed { "true" } else { "false" };
        handshakes.counter(
            &[
                ("frontend", frontend(index)),
                ("version", version),
                ("cipher", cipher),
                ("resumed", resumed),
            ],
            *count as f64,
        );
    }
    let mut failures = Family::new(
        TLS_HANDSHAKE_FAILURES,
        "Failed TLS handshakes by frontend and reason (timeout, closed, protocol_version, unknown_server_name, \
         no_client_certificate, bad_client_certificate, no_application_protocol, alert_received, bad_message, io).",
        MetricType::COUNTER,
    );
    for ((index, reason), count) in &merged.tls.failures {
        failures.counter(&[("frontend", frontend(index)), ("reason", reason)], *count as f64);
    }
    let mut duration = Family::new(
        TLS_HANDSHAKE_DURATION,
        "Time from accepting a TLS connection to its completed handshake.",
        MetricType::HISTOGRAM,
    );
    if merged.tls.duration.count() > 0 {
        duration.histogram(&[], &merged.tls.duration);
    }
    let mut expiry = Family::new(
        TLS_CERTIFICATE_EXPIRY,
        "Seconds until each certificate in force expires (alert well before 0).",
        MetricType::GAUGE,
    );
    for (frontend, certificate, seconds) in &control.certificates {
        expiry.gauge(&[("frontend", frontend), ("certificate", certificate)], *seconds);
    }
    [handshakes, failures, duration, expiry]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Method;
    use crate::metrics::{RequestRecord, WorkerMetrics};
    use std::time::Duration;

    #[test]
    fn renders_every_family_with_exact_counts() {
        let mut worker = WorkerMetrics::new(0, &["web".to_string()]);
        let slot = worker.backend_slot("a");
        worker.connection_opened(0);
        worker.upstream_connected(slot, false);
        worker.retried("connect");
        for _ in 0..3 {
            worker.record(&RequestRecord {
                frontend: 0,
                backend: slot,
                method: Method::Post,
                status: 201,
                duration: Duration::from_micros(120),
                upstream: Some(Duration::from_micros(80)),
                received: 10,
                sent: 20,
                error: None,
            });
        }
        let text = render(
            &Merged::merge(&[worker]),
            &ControlFigures {
                config_version: 3,
                last_reload_successful: true,
                last_reload_unix_seconds: 1.0,
                io_driver: "io_uring".into(),
                health_checks: Default::default(),
                certificates: vec![("secure".into(), "/etc/corelb/site.crt".into(), 86_400.0)],
                outliers: [(
                    "a".to_string(),
                    crate::metrics::OutlierCounts {
                        ejected: true,
                        ejections: [("failure_ratio", 2)].into_iter().collect(),
                    },
                )]
                .into_iter()
                .collect(),
            },
        );
        assert!(
            text.contains(
                "corelb_requests_total{frontend=\"web\",backend=\"a\",method=\"POST\",status_class=\"2xx\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("corelb_request_duration_seconds_bucket{frontend=\"web\",le=\"0.00025\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("corelb_request_duration_seconds_count{frontend=\"web\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("corelb_upstream_connections_total{backend=\"a\",kind=\"new\"} 1"),
            "{text}"
        );
        assert!(text.contains("corelb_config_version 3"), "{text}");
        assert!(text.contains("corelb_build_info{version=\""), "{text}");
        assert!(text.contains("# TYPE corelb_retries_total counter"), "{text}");
        assert!(text.contains("corelb_backend_ejected{backend=\"a\"} 1"), "{text}");
        assert!(
            text.contains("corelb_outlier_ejections_total{backend=\"a\",reason=\"failure_ratio\"} 2"),
            "{text}"
        );
    }
}
