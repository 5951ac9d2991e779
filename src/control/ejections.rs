//! The control thread's side of passive outlier detection: takes the workers' outcome reports, ticks the pure
//! [`Outliers`] bookkeeping, sends each ejection and early return to every worker, and logs each once. Never
//! blocks: reports arrive as events, and a tick is a pass over what they left.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::checks::Checks;
use super::fleet::Fleet;
use super::outliers::{Decision, OutlierView, Outliers};
use crate::config::Config;
use crate::shard::{OutcomeReport, Snapshot};
use crate::upstream::backoff::Jitter;
use crate::worker::ToWorker;

/// How often ejections are decided: as often as the workers report.
const TICK: Duration = crate::shard::outcomes::REPORT_INTERVAL;

/// Passive outlier detection on the control thread.
pub struct Ejections {
    pub reports: Receiver<OutcomeReport>,
    outliers: Outliers,
    last_tick: Instant,
    jitter: Jitter,
}

impl Ejections {
    pub fn new(reports: Receiver<OutcomeReport>, seed: u64) -> Ejections {
        Ejections {
            reports,
            outliers: Outliers::default(),
            last_tick: Instant::now(),
            jitter: Jitter::new(seed),
        }
    }

    /// Adds one worker's counts.
    pub fn take(&mut self, report: &OutcomeReport, config: &Config, workers: usize) {
        if config.outlier_detection.enabled {
            self.outliers
                .observe(report, workers, &config.outlier_detection, Instant::now());
        }
    }

    /// Decides, when a tick is due (or at once: `now_please`, after a report of failures), and tells the workers.
    pub fn tick(&mut self, snapshot: &Snapshot, checks: &Checks, fleet: &mut Fleet, now_please: bool) {
        let now = Instant::now();
        if !now_please && now.duration_since(self.last_tick) < TICK {
            return;
        }
        self.last_tick = now;
        let config = &snapshot.config;
        let settings = &config.outlier_detection;
        let configured: Vec<(String, std::net::SocketAddr)> = if settings.enabled {
            config
                .backends
                .iter()
                .zip(&snapshot.backend_addrs)
                .map(|(backend, &addr)| (backend.id.clone(), addr))
                .collect()
        } else {
            Vec::new()
        };
        let random = self.jitter.fraction();
        let decisions = self
            .outliers
            .tick(&configured, settings, now, random, |id| checks.probe_word(config, id));
        for decision in decisions {
            match decision {
                Decision::Eject {
                    backend,
                    addr,
                    until,
                    reason,
                    multiplier,
                } => {
                    tracing::warn!(
                        backend = %backend,
                        reason = reason.label(),
                        detail = ?reason,
                        ejection = multiplier,
                        seconds = until.saturating_duration_since(now).as_secs_f64(),
                        "outlier ejected: no new requests go to the backend on any worker"
                    );
                    let _ = fleet.send_each(|_| ToWorker::Eject {
                        backend: backend.clone(),
                        addr,
                        until: Some(until),
                    });
                }
                Decision::Readmit { backend, addr, early } => {
                    tracing::info!(backend = %backend, early, "outlier ejection over: the backend takes requests again");
                    if early {
                        let _ = fleet.send_each(|_| ToWorker::Eject {
                            backend: backend.clone(),
                            addr,
                            until: None,
                        });
                    }
                }
                Decision::Capped { backend, reason } => tracing::warn!(
                    backend = %backend,
                    reason = reason.label(),
                    max_ejection_percent = settings.max_ejection_percent,
                    "outlier not ejected: as many backends as max_ejection_percent allows are out already"
                ),
            }
        }
    }

    /// Every configured backend's figures for metrics, once detection has judged it.
    pub fn counts(&self, config: &Config) -> std::collections::BTreeMap<String, crate::metrics::OutlierCounts> {
        let now = Instant::now();
        config
            .backends
            .iter()
            .filter_map(|backend| {
                let view = self.outliers.view(&backend.id)?;
                let counts = crate::metrics::OutlierCounts {
                    ejected: view.ejected_until.is_some_and(|until| now < until),
                    ejections: view.ejections,
                };
                Some((backend.id.clone(), counts))
            })
            .collect()
    }

    /// A backend's outlier state, when it has one.
    pub fn view(&self, id: &str) -> Option<OutlierView> {
        self.outliers.view(id)
    }
}
