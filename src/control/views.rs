//! What the control thread answers without changing anything: `status`, `backends`, `/health`, `/metrics` and the
//! metrics summary, each from figures gathered from every worker (`fleet::Fleet::gather`).

use serde_json::{json, Value};

use super::rollout::Rollout;
use super::{Control, REPORT_TIMEOUT};
use crate::config::names::Choice as _;
use crate::metrics::render::{render, ControlFigures};
use crate::metrics::{Merged, WorkerMetrics};
use crate::shard::DynamicReport;
use crate::worker::{Driver, ToWorker, WorkerReport};

/// One word for the breakers of every worker: their common state, or `mixed`.
fn circuit_summary(states: &[&'static str]) -> &'static str {
    match states.split_first() {
        Some((first, rest)) if rest.iter().all(|state| state == first) => first,
        Some(_) => "mixed",
        None => "closed",
    }
}

impl Control {
    /// Every worker's metrics, copied by each worker between two events of its loop.
    pub(super) fn collect_metrics(&mut self) -> Vec<WorkerMetrics> {
        self.fleet.gather(ToWorker::CollectMetrics, REPORT_TIMEOUT).answers
    }

    pub(super) fn metrics_text(&mut self) -> String {
        let merged = Merged::merge(&self.collect_metrics());
        let epoll = self.drivers.contains(&Driver::Epoll);
        let figures = ControlFigures {
            config_version: self.snapshot.version,
            last_reload_successful: self.last_reload.0,
            last_reload_unix_seconds: self
                .last_reload
                .1
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |elapsed| elapsed.as_secs_f64()),
            io_driver: if epoll { "epoll" } else { "io_uring" }.to_string(),
            health_checks: self.checks.figures(),
            outliers: self.ejections.counts(&self.config),
            certificates: self.certificate_expiries(),
        };
        render(&merged, &figures)
    }

    /// `certificates`: per TLS frontend, each certificate in force with its files, names and expiry.
    pub(super) fn certificates(&self) -> Value {
        let now = std::time::SystemTime::now();
        let frontends = self.config.frontends.iter().zip(&self.snapshot.tls);
        let listed: Vec<Value> = frontends
            .filter_map(|(frontend, tls)| tls.as_ref().map(|tls| (frontend, tls)))
            .map(|(frontend, tls)| {
                let certificates: Vec<Value> = tls
                    .certificates
                    .iter()
                    .map(|certificate| {
                        let left = match certificate.not_after.duration_since(now) {
                            Ok(left) => left.as_secs_f64(),
                            Err(past) => -past.duration().as_secs_f64(),
                        };
                        json!({
                            "cert": certificate.cert_path.display().to_string(),
                            "names": certificate.names,
                            "expires_in_seconds": left.floor(),
                        })
                    })
                    .collect();
                json!({
                    "frontend": frontend.name,
                    "strict_sni": tls.strict_sni,
                    "client_auth": tls.client_auth.name(),
                    "certificates": certificates,
                })
            })
            .collect();
        json!({ "version": self.snapshot.version, "frontends": listed })
    }

    /// Each certificate in force: its frontend, its file and the seconds until it expires.
    fn certificate_expiries(&self) -> Vec<(String, String, f64)> {
        let now = std::time::SystemTime::now();
        let frontends = self.config.frontends.iter().zip(&self.snapshot.tls);
        frontends
            .filter_map(|(frontend, tls)| tls.as_ref().map(|tls| (frontend, tls)))
            .flat_map(|(frontend, tls)| {
                tls.expiries().map(move |(path, not_after)| {
                    let seconds = match not_after.duration_since(now) {
                        Ok(left) => left.as_secs_f64(),
                        Err(past) => -past.duration().as_secs_f64(),
                    };
                    (frontend.name.clone(), path.display().to_string(), seconds)
                })
            })
            .collect()
    }

    pub(super) fn metrics_summary(&mut self) -> Value {
        let merged = Merged::merge(&self.collect_metrics());
        let mut duration = crate::metrics::Histogram::default();
        for series in merged.frontends.values() {
            duration.merge(&series.duration);
        }
        let mut per_backend = serde_json::Map::new();
        for (id, series) in &merged.backends {
            let requests: u64 = series.requests.iter().sum();
            if requests > 0 || id != crate::metrics::NO_BACKEND {
                per_backend.insert(
                    id.clone(),
                    json!({
                        "requests": requests,
                        "upstream_p50_seconds": series.upstream.quantile(0.5),
                        "upstream_p99_seconds": series.upstream.quantile(0.99),
                        "connections_new": series.connections_new,
                        "connections_reused": series.connections_reused,
                    }),
                );
            }
        }
        json!({
            "requests": merged.total_requests(),
            "errors": merged.errors.values().sum::<u64>(),
            "errors_by_category": merged.errors,
            "retries": merged.retries,
            "p50_seconds": duration.quantile(0.5),
            "p99_seconds": duration.quantile(0.99),
            "per_worker": merged.worker_requests.iter().map(|(worker, count)| json!({"worker": worker, "requests": count})).collect::<Vec<_>>(),
            "backends": per_backend,
        })
    }

    pub(super) fn health(&mut self) -> Value {
        let reports = self.reports();
        let healthy = self
            .config
            .backends
            .iter()
            .filter(|backend| !backend.drain)
            .filter(|backend| !self.checks.is_unhealthy(&backend.id))
            .filter(|backend| {
                reports
                    .iter()
                    .any(|report| report.backends.iter().any(|seen| seen.id == backend.id && !seen.down))
            })
            .count();
        let detail: Vec<Value> = self
            .config
            .backends
            .iter()
            .map(|backend| {
                json!({
                    "id": backend.id,
                    "draining": backend.drain,
                    "unhealthy": self.checks.is_unhealthy(&backend.id),
                    "tags": backend.tags,
                })
            })
            .collect();
        json!({
            "status": if healthy > 0 { "ok" } else { "unavailable" },
            "healthy_backends": healthy,
            "backends": self.config.backends.len(),
            "detail": detail,
        })
    }

    /// Live per-worker figures, gathered without stopping any worker for longer than a copy.
    pub(super) fn reports(&mut self) -> Vec<WorkerReport> {
        self.fleet.gather(ToWorker::Report, REPORT_TIMEOUT).answers
    }

    pub(super) fn backends_json(&mut self) -> Vec<Value> {
        let reports = self.reports();
        self.config
            .backends
            .iter()
            .zip(&self.snapshot.backend_addrs)
            .map(|(backend, address)| {
                let mut in_flight = 0;
                let mut idle = 0;
                let mut down_on = 0;
                let mut unhealthy_on = 0;
                let mut share: f64 = 0.0;
                let mut circuits = Vec::new();
                let mut circuit_failures = 0;
                let mut ejected_on = 0;
                let mut dynamic = Vec::new();
                for report in &reports {
                    if let Some(seen) = report.backends.iter().find(|seen| seen.id == backend.id) {
                        in_flight += seen.in_flight;
                        idle += seen.idle_connections;
                        down_on += usize::from(seen.down);
                        unhealthy_on += usize::from(seen.unhealthy);
                        share = share.max(seen.share);
                        circuits.extend(seen.circuit);
                        circuit_failures += seen.circuit_failures;
                        ejected_on += usize::from(seen.ejected);
                        dynamic.extend(seen.dynamic);
                    }
                }
                let health = if down_on == 0 {
                    "up"
                } else if down_on == reports.len() {
                    "down"
                } else {
                    "degraded"
                };
                let mut shown = json!({
                    "id": backend.id,
                    "url": backend.url,
                    "address": address.to_string(),
                    "weight": backend.weight,
                    "state": if backend.drain { "draining" } else { "active" },
                    "health": health,
                    "in_flight": in_flight,
                    "idle_connections": idle,
                    "check": self.checks.word_for(&backend.id),
                    "unhealthy_on_workers": unhealthy_on,
                    "share": share,
                    "tags": backend.tags,
                    "max_connections": backend.max_connections,
                });
                if let Some(outlier) = self.ejections.view(&backend.id) {
                    let now = std::time::Instant::now();
                    let left = outlier.ejected_until.map(|until| until.saturating_duration_since(now));
                    shown["outlier"] = json!({
                        "ejected": left.is_some_and(|left| !left.is_zero()),
                        "seconds_left": left.map_or(0.0, |left| left.as_secs_f64()),
                        "ejected_on_workers": ejected_on,
                        "ejections": outlier.ejections.values().sum::<u64>(),
                        "last_reason": outlier.last_reason.map(|reason| reason.label()),
                    });
                }
                if !dynamic.is_empty() {
                    shown["dynamic"] = dynamic_json(backend.weight, &dynamic);
                }
                if !circuits.is_empty() {
                    shown["circuit"] = json!({
                        "state": circuit_summary(&circuits),
                        "by_worker": circuits,
                        "consecutive_failures": circuit_failures,
                    });
                }
                shown
            })
            .collect()
    }

    pub(super) fn status(&mut self) -> Value {
        let backends = self.backends_json();
        json!({
            "version": self.snapshot.version,
            "uptime_seconds": self.started.elapsed().as_secs(),
            "config_file": self.config_path.display().to_string(),
            "workers": self.drivers.iter().enumerate().map(|(index, driver)| json!({"index": index, "driver": driver.as_str()})).collect::<Vec<_>>(),
            "frontends": self.config.frontends.iter().zip(&self.snapshot.frontend_addrs).map(|(frontend, address)| json!({"name": frontend.name, "address": address.to_string()})).collect::<Vec<_>>(),
            "algorithm": format!("{:?}", self.config.balancer.algorithm),
            "backends": backends,
            "rollout": self.rollout.as_ref().map(Rollout::status),
            "health_table_version": self.checks.version(),
            "changes": {
                "in_flight": self.changes.busy(),
                "waiting": self.changes.waiting(),
            },
            "descriptors": {
                "limit": self.budget.limit,
                "reserve": self.budget.reserve,
                "max_connections": self.budget.clients,
                "max_upstream_connections": self.budget.upstream,
            },
        })
    }
}

/// A backend's dynamic weight over the workers: the effective weight (its weight times the mean share), each
/// worker's share, and the mean latency and error averages behind them.
fn dynamic_json(weight: u32, seen: &[DynamicReport]) -> Value {
    let workers = seen.len() as f64;
    let mean_share = seen.iter().map(|report| report.share).sum::<f64>() / workers;
    let latencies: Vec<f64> = seen
        .iter()
        .filter_map(|report| report.latency)
        .map(|latency| latency.as_secs_f64() * 1000.0)
        .collect();
    let latency_ms = (!latencies.is_empty()).then(|| latencies.iter().sum::<f64>() / latencies.len() as f64);
    json!({
        "effective_weight": f64::from(weight) * mean_share,
        "share_by_worker": seen.iter().map(|report| report.share).collect::<Vec<_>>(),
        "latency_ms": latency_ms,
        "error_rate": seen.iter().map(|report| report.error_rate).sum::<f64>() / workers,
    })
}
