//! The control thread's side of the active health checks: it owns the prober thread, tells it what to check after
//! every change, and keeps the health table the workers read, sending a new version to every worker on each flip.
//! Never blocks: the prober runs on its own thread and reports flips as events.

use std::sync::Arc;

use crossbeam_channel::Receiver;

use super::fleet::Fleet;
use crate::config::{BackendConfig, Config};
use crate::health::{HealthNews, ProbeReply, ProbeTarget, ProbeTls, Prober, Target};
use crate::metrics::CheckCounts;
use crate::shard::HealthTable;
use crate::tls::upstream::UpstreamTls;
use crate::worker::ToWorker;

/// The prober, what it checks, and the table its flips make.
pub struct Checks {
    prober: Option<Prober>,
    pub news: Receiver<HealthNews>,
    targets: Vec<Target>,
    table: HealthTable,
    /// The prober's TLS client config for `https://` backends, and the `[upstream.tls]` it was built from.
    tls: Option<(Arc<UpstreamTls>, Arc<rustls::ClientConfig>)>,
}

impl Checks {
    /// Starts the prober thread. Without one (the thread cannot start) nothing is checked, and that is logged.
    pub fn start() -> Checks {
        let (sender, news) = crossbeam_channel::unbounded();
        let prober = match Prober::spawn(sender) {
            Ok(prober) => Some(prober),
            Err(error) => {
                tracing::error!(%error, "cannot start the health prober thread; backends are not checked");
                None
            }
        };
        Checks {
            prober,
            news,
            targets: Vec::new(),
            table: HealthTable::default(),
            tls: None,
        }
    }

    /// Probes a rollout's new backends once on the prober thread; `reply` gets the result. Without a prober
    /// (its thread could not start) nothing can prove them, and the caller is told so.
    pub fn probe_once(&self, targets: Vec<ProbeTarget>, reply: ProbeReply) -> Result<(), &'static str> {
        let prober = self.prober.as_ref().ok_or("the health prober is not running")?;
        prober.probe_once(targets, reply);
        Ok(())
    }

    /// Checks what `config` asks for from now on, over TLS (`upstream_tls`) to `https://` backends; a backend no
    /// longer checked (or moved to a new address) is healthy again in the table.
    pub fn follow(
        &mut self,
        config: &Config,
        addrs: &[std::net::SocketAddr],
        upstream_tls: Option<&Arc<UpstreamTls>>,
        fleet: &mut Fleet,
    ) {
        self.follow_tls(upstream_tls);
        let targets: Vec<Target> = config
            .backends
            .iter()
            .zip(addrs)
            .filter_map(|(backend, &addr)| {
                let settings = config.healthcheck.for_backend(backend)?;
                Some(Target {
                    id: backend.id.clone(),
                    addr,
                    tls: self.probe_tls(backend),
                    settings,
                })
            })
            .collect();
        if targets == self.targets {
            return;
        }
        if let Some(prober) = &self.prober {
            prober.set_targets(targets.clone());
        }
        self.targets = targets;
        let before = self.table.unhealthy.len();
        let targets = &self.targets;
        self.table
            .unhealthy
            .retain(|(id, addr)| targets.iter().any(|target| &target.id == id && target.addr == *addr));
        if self.table.unhealthy.len() != before {
            self.publish(fleet);
        }
    }

    /// Builds the prober's client config when `[upstream.tls]` is new (the workers build their own per core).
    fn follow_tls(&mut self, upstream_tls: Option<&Arc<UpstreamTls>>) {
        let Some(upstream) = upstream_tls else {
            self.tls = None;
            return;
        };
        if matches!(&self.tls, Some((source, _)) if Arc::ptr_eq(source, upstream)) {
            return;
        }
        self.tls = match upstream.client_config(crate::tls::provider()) {
            Ok(config) => Some((Arc::clone(upstream), Arc::new(config))),
            Err(error) => {
                // Checked when the config was loaded, so this does not happen; should it, the probes fail loudly.
                tracing::error!(%error, "cannot build the health prober's TLS config for https:// backends");
                None
            }
        };
    }

    /// How a probe to `backend` speaks TLS, when it is `https://`. Without a client config (or with a name that
    /// is neither a DNS name nor an IP address, which the config refuses) the probe is sent in plain text to a
    /// TLS port and fails, which is the truth.
    pub fn probe_tls(&self, backend: &BackendConfig) -> Option<ProbeTls> {
        if !backend.tls {
            return None;
        }
        let (_, config) = self.tls.as_ref()?;
        Some(ProbeTls {
            config: Arc::clone(config),
            name: crate::tls::upstream::server_name(backend.tls_name())?,
        })
    }

    /// Takes a flip from the prober into the table and sends the table to every worker.
    pub fn flipped(&mut self, news: &HealthNews, fleet: &mut Fleet) {
        let current = self
            .targets
            .iter()
            .any(|target| target.id == news.backend && target.addr == news.addr);
        if !current {
            // The flip of a check that has just been stopped or moved.
            return;
        }
        let key = (news.backend.clone(), news.addr);
        let changed = if news.healthy {
            self.table.unhealthy.remove(&key)
        } else {
            self.table.unhealthy.insert(key)
        };
        if changed {
            self.publish(fleet);
        }
    }

    fn publish(&mut self, fleet: &mut Fleet) {
        self.table.version += 1;
        let table = Arc::new(self.table.clone());
        let _ = fleet.send_each(|_| ToWorker::Health(Arc::clone(&table)));
    }

    pub fn is_unhealthy(&self, id: &str) -> bool {
        self.table.unhealthy.iter().any(|(unhealthy, _)| unhealthy == id)
    }

    /// `healthy`, `unhealthy`, or `off` for a backend not checked.
    pub fn word_for(&self, id: &str) -> &'static str {
        if !self.targets.iter().any(|target| target.id == id) {
            "off"
        } else if self.is_unhealthy(id) {
            "unhealthy"
        } else {
            "healthy"
        }
    }

    /// The table's version, for `status`.
    pub fn version(&self) -> u64 {
        self.table.version
    }

    /// What the probes say of `id` now, when it is checked (for ending an outlier ejection early).
    pub fn probe_word(&self, config: &Config, id: &str) -> Option<super::outliers::ProbeWord> {
        let backend = config.backends.iter().find(|backend| backend.id == id)?;
        let threshold = config.healthcheck.for_backend(backend)?.healthy_threshold;
        let figures = self
            .prober
            .as_ref()?
            .figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Checked but not probed yet: nothing passed so far.
        let (passed, in_a_row) = figures
            .get(id)
            .map_or((0, 0), |counts| (counts.passed, counts.passed_in_a_row));
        Some(super::outliers::ProbeWord {
            passed,
            in_a_row,
            threshold,
        })
    }

    /// The prober's counters, copied.
    pub fn figures(&self) -> std::collections::BTreeMap<String, CheckCounts> {
        self.prober.as_ref().map_or_else(Default::default, |prober| {
            prober
                .figures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
    }
}
