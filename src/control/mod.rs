//! The control thread: owns the authoritative config and its version history, starts the workers, and applies every
//! change — from the Unix socket, the admin API, a file reload or SIGHUP — through one function, [`Control::execute`].
//! A change becomes a new [`Snapshot`] broadcast to every worker and is acknowledged only once every worker has
//! applied it. The control thread also does the blocking work workers must never do (DNS, files, health probes).

mod admin;
pub mod command;
mod fleet;
mod history;
mod listeners;
mod resolve;
mod rollout;
mod socket;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};
use serde_json::{json, Value};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

use crate::access_log::LogMessage;
use crate::config::{diff, load_config, to_toml, Config, IoDriverChoice, LogLevel, Workers};
use crate::metrics::render::{render, ControlFigures};
use crate::metrics::{Merged, WorkerMetrics};
use crate::net::descriptors::{raise_nofile_limit, DescriptorBudget};
use crate::net::listener::{reserve_port, PortReservation};
use crate::worker::{self, Driver, FromWorker, Snapshot, ToWorker, WorkerLimits, WorkerReport, WorkerSpec};
use command::{Command, CommandError, ErrorKind, Source};
use fleet::{ApplyError, Fleet};
use history::{History, VersionRecord};
pub use resolve::{resolve_backends, ResolveError};
use rollout::Rollout;

/// How long each phase of a change (prepare, commit) may take on every worker before it is reported failed.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `status` waits for workers' live figures.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the control loop wakes without events (rollout steps).
const TICK: Duration = Duration::from_millis(50);
/// How often rate-limit shares follow the demand each worker saw.
const REBALANCE_INTERVAL: Duration = Duration::from_millis(100);
/// How long a rebalance waits for every worker's demand; without all of them the shares stay.
const REBALANCE_TIMEOUT: Duration = Duration::from_millis(50);

/// Why corelb could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("frontend {name:?} cannot use {address}: {source}")]
    Listen {
        name: String,
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("io_uring was required (server.io_driver = \"io_uring\") but this kernel refuses it")]
    IoUringUnavailable,
    #[error("worker {worker} failed to start: {error}")]
    Worker { worker: usize, error: String },
    #[error("control socket {path}: {source}")]
    ControlSocket { path: PathBuf, source: std::io::Error },
    #[error("access log {path}: {source}")]
    AccessLog { path: PathBuf, source: std::io::Error },
    #[error("metrics listener on {address}: {source}")]
    Metrics {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("admin API on {address}: {source}")]
    Admin {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// A command on its way to the control thread, with where to send the result.
pub struct ControlRequest {
    pub command: Command,
    pub source: Source,
    pub reply: ReplyTo,
}

/// Where a command's result goes.
pub struct ReplyTo {
    pub result: Sender<Result<Value, CommandError>>,
    /// Written to once the result is sent, for a sender that waits in poll(2) rather than on `result`.
    pub wake: Option<Arc<std::os::unix::net::UnixStream>>,
}

impl ReplyTo {
    fn send(self, result: Result<Value, CommandError>) {
        let _ = self.result.send(result);
        if let Some(wake) = self.wake {
            use std::io::Write;
            // A full wake socket already has a wake-up pending.
            let _ = (&*wake).write(&[1]);
        }
    }
}

/// The running control plane.
pub struct Control {
    config_path: PathBuf,
    config: Arc<Config>,
    snapshot: Arc<Snapshot>,
    history: History,
    fleet: Fleet,
    drivers: Vec<Driver>,
    events: Receiver<FromWorker>,
    started: Instant,
    rollout: Option<Rollout>,
    requests: Receiver<ControlRequest>,
    request_sender: Sender<ControlRequest>,
    access_log: Sender<LogMessage>,
    /// Outcome and time of the last reload or whole-config apply, for metrics.
    last_reload: (bool, SystemTime),
    last_rebalance: Instant,
    /// A worker stopped while the control thread was waiting for something else: shut down at the next pass.
    worker_lost: bool,
    /// Versions are never reused, even by a change that failed to reach every worker.
    next_version: u64,
    /// How the process's descriptors are shared out.
    budget: DescriptorBudget,
}

/// Chooses the driver for every worker: io_uring when allowed, epoll otherwise (said once, here).
fn choose_driver(choice: IoDriverChoice) -> Result<Driver, StartError> {
    let available = monoio::utils::detect_uring();
    match choice {
        IoDriverChoice::Epoll => Ok(Driver::Epoll),
        IoDriverChoice::IoUring if available => Ok(Driver::IoUring),
        IoDriverChoice::IoUring => Err(StartError::IoUringUnavailable),
        IoDriverChoice::Auto if available => Ok(Driver::IoUring),
        IoDriverChoice::Auto => {
            tracing::warn!("io_uring is not available here (old kernel, seccomp or memlock limits); using epoll");
            Ok(Driver::Epoll)
        }
    }
}

fn worker_count(workers: Workers) -> usize {
    match workers {
        Workers::Count(count) => count,
        Workers::Auto => std::thread::available_parallelism().map_or(1, usize::from),
    }
}

fn invalid_config(errors: impl std::fmt::Display) -> CommandError {
    CommandError::new(ErrorKind::InvalidConfig, errors.to_string())
}

impl Control {
    /// Starts every worker on `config`, the control socket and (when enabled) the admin API, and waits until all
    /// of them listen.
    pub fn start(
        config_path: &Path,
        config: Config,
        driver_override: Option<IoDriverChoice>,
    ) -> Result<Control, StartError> {
        let driver = choose_driver(driver_override.unwrap_or(config.server.io_driver))?;
        let budget = descriptor_budget(&config)?;
        let backend_addrs = resolve_backends(&config)?;
        // Frontends on port 0 get a concrete port that every worker then shares.
        let mut reservations: Vec<PortReservation> = Vec::new();
        let mut frontend_addrs = Vec::new();
        for frontend in &config.frontends {
            if frontend.listen.port() == 0 {
                let reservation = reserve_port(frontend.listen).map_err(|source| StartError::Listen {
                    name: frontend.name.clone(),
                    address: frontend.listen,
                    source,
                })?;
                frontend_addrs.push(reservation.address);
                reservations.push(reservation);
            } else {
                frontend_addrs.push(frontend.listen);
            }
        }
        let config = Arc::new(config);
        let snapshot = Arc::new(Snapshot {
            version: 1,
            config: Arc::clone(&config),
            backend_addrs,
            frontend_addrs,
        });

        let (request_sender, requests) = crossbeam_channel::unbounded();
        listeners::serve(bind_listeners(&config)?, request_sender.clone())?;
        let access_log = crate::access_log::start_writer(config.access_log.path.clone()).map_err(|source| {
            StartError::AccessLog {
                path: config.access_log.path.clone().unwrap_or_default(),
                source,
            }
        })?;
        let process_seed = crate::shard::request_id::process_seed();

        let count = worker_count(config.server.workers);
        let cores = if config.server.pin_workers {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let (event_sender, events) = crossbeam_channel::unbounded();
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            workers.push(worker::spawn(WorkerSpec {
                index,
                driver,
                core,
                snapshot: Arc::clone(&snapshot),
                events: event_sender.clone(),
                access_log: access_log.clone(),
                process_seed,
                workers: count,
                limits: WorkerLimits {
                    clients: DescriptorBudget::share(budget.clients, count),
                    upstream: DescriptorBudget::share(budget.upstream, count),
                },
            })?);
        }
        let mut history = History::new(config.control.history);
        history.push(VersionRecord {
            version: 1,
            applied_at: SystemTime::now(),
            source: Source::File.describe(),
            summary: "initial config".to_string(),
            config: Arc::clone(&config),
        });
        let mut control = Control {
            config_path: config_path.to_path_buf(),
            config,
            snapshot,
            history,
            fleet: Fleet::new(workers),
            drivers: vec![driver; count],
            events,
            started: Instant::now(),
            rollout: None,
            requests,
            request_sender,
            access_log,
            last_reload: (true, SystemTime::now()),
            last_rebalance: Instant::now(),
            worker_lost: false,
            next_version: 2,
            budget,
        };
        let mut ready = 0;
        while ready < count {
            match control.events.recv() {
                Ok(FromWorker::Ready { worker, driver }) => {
                    control.drivers[worker] = driver;
                    ready += 1;
                }
                Ok(FromWorker::StartFailed { worker, error }) => {
                    control.stop_workers();
                    return Err(StartError::Worker { worker, error });
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(StartError::Worker {
                        worker: 0,
                        error: "all workers exited".into(),
                    })
                }
            }
        }
        drop(reservations);
        let listening: Vec<String> = control
            .config
            .frontends
            .iter()
            .zip(&control.snapshot.frontend_addrs)
            .map(|(frontend, address)| format!("{}={address}", frontend.name))
            .collect();
        let epoll_workers = control
            .drivers
            .iter()
            .filter(|driver| **driver == Driver::Epoll)
            .count();
        tracing::info!(
            workers = count,
            driver = if epoll_workers == 0 { "io_uring" } else if epoll_workers == count { "epoll" } else { "mixed" },
            backends = control.config.backends.len(),
            listening = %listening.join(","),
            max_connections = control.budget.clients,
            control_socket = %control.config.control.socket.display(),
            "corelb ready"
        );
        Ok(control)
    }

    /// A sender for commands, as the socket and admin API use; for embedding corelb.
    pub fn requests(&self) -> Sender<ControlRequest> {
        self.request_sender.clone()
    }

    /// Runs until SIGTERM or SIGINT, then drains and stops every worker.
    pub fn run(mut self) -> Result<(), StartError> {
        let signals = signal_channel()?;
        loop {
            select! {
                recv(signals) -> signal => match signal {
                    Ok(SIGUSR1) => {
                        tracing::info!("reopening the access log");
                        let _ = self.access_log.send(LogMessage::Reopen);
                    }
                    Ok(SIGHUP) => {
                        if let Err(error) = self.execute(Command::Reload, Source::Signal) {
                            tracing::error!(error = %error.message.replace('\n', "; "), "reload refused; the running config stays");
                        }
                    }
                    Ok(_) | Err(_) => break,
                },
                recv(self.requests) -> request => {
                    if let Ok(request) = request {
                        let result = self.execute(request.command, request.source);
                        request.reply.send(result);
                    }
                },
                recv(self.events) -> event => match event {
                    Ok(FromWorker::Stopped { worker }) => {
                        tracing::error!(worker, "worker stopped unexpectedly; shutting down");
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
                default(TICK) => {},
            }
            if self.worker_lost {
                tracing::error!("a worker stopped unexpectedly; shutting down");
                break;
            }
            // Every pass, not only idle ones: a client polling faster than TICK must not starve a rollout.
            self.rollout_tick();
            if self.last_rebalance.elapsed() >= REBALANCE_INTERVAL {
                self.last_rebalance = Instant::now();
                self.rebalance_rate_limits();
            }
        }
        tracing::info!(grace = ?self.config.server.shutdown_grace, "shutting down: draining connections");
        self.stop_workers();
        let _ = std::fs::remove_file(&self.config.control.socket);
        tracing::info!("corelb stopped");
        Ok(())
    }

    /// Runs one command. Every change path ends here.
    pub fn execute(&mut self, command: Command, source: Source) -> Result<Value, CommandError> {
        if self.rollout.as_ref().is_some_and(Rollout::is_active) && !command.is_read_only() {
            let allowed = matches!(
                command,
                Command::RolloutPause | Command::RolloutResume | Command::RolloutAbort | Command::LogLevel { .. }
            );
            if !allowed {
                return Err(CommandError::new(
                    ErrorKind::Conflict,
                    "a rollout is in progress; pause, finish or abort it first",
                ));
            }
        }
        match command {
            Command::Status => Ok(self.status()),
            Command::ConfigShow => Ok(json!({
                "version": self.snapshot.version,
                "toml": crate::config::to_toml_redacted(&self.config),
            })),
            Command::ConfigApply { .. } => {
                let result = state::apply(&self.config, &command, self.config_folder())
                    .and_then(|candidate| self.commit(candidate, &source, None));
                self.last_reload = (result.is_ok(), SystemTime::now());
                result
            }
            Command::ConfigDiff { .. } => {
                let candidate = state::apply(&self.config, &command, self.config_folder())?;
                Ok(json!({
                    "changes": diff(&self.config, &candidate),
                    "restart_required": self.restart_reasons(&candidate),
                }))
            }
            Command::Reload => {
                let result = load_config(&self.config_path)
                    .map_err(invalid_config)
                    .and_then(|candidate| self.commit(candidate, &source, None));
                self.last_reload = (result.is_ok(), SystemTime::now());
                result
            }
            Command::Backends => Ok(json!({ "version": self.snapshot.version, "backends": self.backends_json() })),
            Command::BackendAdd { .. } | Command::BackendRemove { .. } | Command::BackendDrain { .. } => {
                let candidate = state::apply(&self.config, &command, self.config_folder())?;
                self.commit(candidate, &source, None)
            }
            Command::BackendSet { .. } => {
                let candidate = state::apply(&self.config, &command, self.config_folder())?;
                let algorithm = candidate.balancer.algorithm;
                let mut reply = self.commit(candidate, &source, None)?;
                if algorithm == crate::config::Algorithm::RoundRobin {
                    // Applied, so a later switch to a weighted algorithm uses it; but it changes nothing today.
                    if let Some(object) = reply.as_object_mut() {
                        object.insert(
                            "note".into(),
                            json!("balancer.algorithm is round_robin, which ignores weights: this weight has no effect until a weighted algorithm is chosen"),
                        );
                    }
                }
                Ok(reply)
            }
            Command::Versions => Ok(json!({
                "current": self.snapshot.version,
                "versions": self.history.iter().map(VersionRecord::to_json).collect::<Vec<_>>(),
            })),
            Command::Rollback { version } => {
                let record = match version {
                    Some(version) => self.history.find(version).ok_or_else(|| {
                        CommandError::new(ErrorKind::NotFound, format!("version {version} is not in the history"))
                    })?,
                    None => self
                        .history
                        .previous()
                        .ok_or_else(|| CommandError::new(ErrorKind::NotFound, "there is no previous version"))?,
                };
                let label = format!("rollback to version {}", record.version);
                let candidate = (*record.config).clone();
                self.commit(candidate, &source, Some(label))
            }
            Command::LogLevel { level } => {
                let parsed = match level.as_str() {
                    "error" => LogLevel::Error,
                    "warn" => LogLevel::Warn,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    "trace" => LogLevel::Trace,
                    other => {
                        return Err(CommandError::invalid_request(format!(
                            "unknown level {other:?} (use error, warn, info, debug or trace)"
                        )))
                    }
                };
                crate::logging::set_level(parsed).map_err(|error| CommandError::new(ErrorKind::Unavailable, error))?;
                tracing::warn!(level = parsed.as_str(), source = %source.describe(), "log level changed");
                Ok(json!({ "level": parsed.as_str() }))
            }
            Command::RolloutStart { to, batch, interval } => self.rollout_start(to, batch, interval),
            Command::RolloutStatus => Ok(self.rollout.as_ref().map_or(json!({"state": "none"}), Rollout::status)),
            Command::RolloutPause | Command::RolloutResume => {
                let pause = command == Command::RolloutPause;
                let rollout = self
                    .rollout
                    .as_mut()
                    .filter(|rollout| rollout.is_active())
                    .ok_or_else(|| CommandError::new(ErrorKind::NotFound, "no rollout in progress"))?;
                rollout.set_paused(pause);
                Ok(rollout.status())
            }
            Command::RolloutAbort => self.rollout_abort(),
            Command::Metrics => Ok(Value::String(self.metrics_text())),
            Command::MetricsSummary => Ok(self.metrics_summary()),
            Command::Health => Ok(self.health()),
        }
    }

    /// Splits every rate limit over the workers by the demand each saw since the last rebalance (see
    /// ARCHITECTURE.md, "Rate limiting"). Clients seen on several workers get their limit split the same way.
    fn rebalance_rate_limits(&mut self) {
        if !self.config.ratelimit.enabled {
            return;
        }
        let demand = self.fleet.gather(ToWorker::RateDemand, REBALANCE_TIMEOUT);
        if !demand.complete() {
            return;
        }
        let limits = crate::ratelimit::policies(&self.config).limits;
        let shares = crate::ratelimit::rebalance(&limits, &demand.answers, self.fleet.count());
        let mut shares = shares.into_iter();
        let _ = self
            .fleet
            .send_each(|_| ToWorker::RateShares(shares.next().unwrap_or_default()));
    }

    /// Every worker's metrics, copied by each worker between two events of its loop.
    fn collect_metrics(&mut self) -> Vec<WorkerMetrics> {
        self.fleet.gather(ToWorker::CollectMetrics, REPORT_TIMEOUT).answers
    }

    fn metrics_text(&mut self) -> String {
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
        };
        render(&merged, &figures)
    }

    fn metrics_summary(&mut self) -> Value {
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

    fn health(&mut self) -> Value {
        let reports = self.reports();
        let healthy = self
            .config
            .backends
            .iter()
            .filter(|backend| !backend.drain)
            .filter(|backend| {
                reports
                    .iter()
                    .any(|report| report.backends.iter().any(|seen| seen.id == backend.id && !seen.down))
            })
            .count();
        json!({
            "status": if healthy > 0 { "ok" } else { "unavailable" },
            "healthy_backends": healthy,
            "backends": self.config.backends.len(),
        })
    }

    /// The config file's folder: relative paths in a config given as text are resolved against it.
    fn config_folder(&self) -> &Path {
        self.config_path.parent().unwrap_or(Path::new(""))
    }

    /// What in `candidate` cannot change without a restart.
    fn restart_reasons(&self, candidate: &Config) -> Vec<&'static str> {
        let current = &self.config;
        let mut reasons = Vec::new();
        if candidate.server != current.server {
            reasons.push("[server]");
        }
        if candidate.frontends != current.frontends {
            reasons.push("[[frontends]]");
        }
        if candidate.control.socket != current.control.socket {
            reasons.push("control.socket");
        }
        if candidate.admin != current.admin {
            reasons.push("[admin]");
        }
        if candidate.metrics != current.metrics {
            reasons.push("[metrics]");
        }
        if candidate.access_log.path != current.access_log.path {
            reasons.push("access_log.path");
        }
        // The diagnostic log's subscriber is installed once at start; its level can change live, its format not.
        if candidate.logging.format != current.logging.format {
            reasons.push("logging.format");
        }
        reasons
    }

    /// Validates `candidate` with the same rules as a config file, broadcasts it and waits until every worker has
    /// applied it. Nothing changes when it is refused.
    fn commit(&mut self, candidate: Config, source: &Source, label: Option<String>) -> Result<Value, CommandError> {
        // One set of rules for every path: whatever was edited goes through the file parser again.
        let candidate = state::parse_candidate(&to_toml(&candidate), self.config_folder())?;
        let reasons = self.restart_reasons(&candidate);
        if !reasons.is_empty() {
            return Err(CommandError::new(
                ErrorKind::RestartRequired,
                format!("changes to {} need a restart; nothing was applied", reasons.join(", ")),
            ));
        }
        let changes = diff(&self.config, &candidate);
        if changes.is_empty() && label.is_none() {
            return Ok(json!({ "version": self.snapshot.version, "changes": changes, "applied": false }));
        }
        let backend_addrs = resolve_backends(&candidate).map_err(invalid_config)?;
        let started = Instant::now();
        let version = self.next_version;
        self.next_version += 1;
        let candidate = Arc::new(candidate);
        let snapshot = Arc::new(Snapshot {
            version,
            config: Arc::clone(&candidate),
            backend_addrs,
            frontend_addrs: self.snapshot.frontend_addrs.clone(),
        });
        self.broadcast(&snapshot)?;
        let elapsed = started.elapsed();
        let summary = match &label {
            Some(label) if changes.is_empty() => label.clone(),
            Some(label) => format!("{label}: {}", changes.join("; ")),
            None => changes.join("; "),
        };
        if candidate.logging.level != self.config.logging.level {
            let _ = crate::logging::set_level(candidate.logging.level);
        }
        self.history.set_capacity(candidate.control.history);
        self.history.push(VersionRecord {
            version,
            applied_at: SystemTime::now(),
            source: source.describe(),
            summary: summary.clone(),
            config: Arc::clone(&candidate),
        });
        self.config = candidate;
        self.snapshot = snapshot;
        tracing::info!(
            version,
            source = %source.describe(),
            changes = %summary,
            applied_in_us = elapsed.as_micros() as u64,
            "config applied on every worker"
        );
        Ok(json!({
            "version": version,
            "changes": changes,
            "applied": true,
            "applied_in_us": elapsed.as_micros() as u64,
        }))
    }

    /// Applies `snapshot` on every worker, prepare then commit (see `fleet::Fleet::apply`).
    fn broadcast(&mut self, snapshot: &Arc<Snapshot>) -> Result<(), CommandError> {
        self.fleet
            .apply(&self.events, snapshot, APPLY_TIMEOUT)
            .map_err(|error| {
                if matches!(error, ApplyError::Stopped(_)) {
                    self.worker_lost = true;
                }
                CommandError::new(ErrorKind::Unavailable, error.to_string())
            })
    }

    /// Live per-worker figures, gathered without stopping any worker for longer than a copy.
    fn reports(&mut self) -> Vec<WorkerReport> {
        self.fleet.gather(ToWorker::Report, REPORT_TIMEOUT).answers
    }

    fn backends_json(&mut self) -> Vec<Value> {
        let reports = self.reports();
        self.config
            .backends
            .iter()
            .zip(&self.snapshot.backend_addrs)
            .map(|(backend, address)| {
                let mut in_flight = 0;
                let mut idle = 0;
                let mut down_on = 0;
                for report in &reports {
                    if let Some(seen) = report.backends.iter().find(|seen| seen.id == backend.id) {
                        in_flight += seen.in_flight;
                        idle += seen.idle_connections;
                        down_on += usize::from(seen.down);
                    }
                }
                let health = if down_on == 0 {
                    "up"
                } else if down_on == reports.len() {
                    "down"
                } else {
                    "degraded"
                };
                json!({
                    "id": backend.id,
                    "url": backend.url,
                    "address": address.to_string(),
                    "weight": backend.weight,
                    "state": if backend.drain { "draining" } else { "active" },
                    "health": health,
                    "in_flight": in_flight,
                    "idle_connections": idle,
                })
            })
            .collect()
    }

    fn status(&mut self) -> Value {
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
            "descriptors": {
                "limit": self.budget.limit,
                "reserve": self.budget.reserve,
                "max_connections": self.budget.clients,
                "max_upstream_connections": self.budget.upstream,
            },
        })
    }

    fn stop_workers(&mut self) {
        self.fleet.stop();
    }
}

/// Raises the descriptor limit and shares it out; a configured `max_connections` it cannot honour is kept, with a
/// warning, since the operator may know better (the accept and connect paths cope with running out).
fn descriptor_budget(config: &Config) -> Result<DescriptorBudget, StartError> {
    let limit = raise_nofile_limit()?;
    let budget = DescriptorBudget::plan(limit, config.server.max_connections);
    if !budget.fits() {
        tracing::warn!(
            max_connections = budget.clients,
            limit,
            "server.max_connections needs more descriptors than RLIMIT_NOFILE allows; past the limit clients wait \
             to be accepted and new upstream connections get 503 (raise the limit, e.g. LimitNOFILE= in systemd)"
        );
    }
    Ok(budget)
}

/// Binds the control socket, the admin API and the metrics listener, as the config asks.
fn bind_listeners(config: &Config) -> Result<listeners::Listeners, StartError> {
    let control = socket::bind(&config.control.socket).map_err(|source| StartError::ControlSocket {
        path: config.control.socket.clone(),
        source,
    })?;
    let bind_tcp = |address: std::net::SocketAddr, name: &str| -> std::io::Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind(address)?;
        tracing::info!(address = %listener.local_addr()?, "{name} listening");
        Ok(listener)
    };
    let admin = if config.admin.enabled {
        let listener = bind_tcp(config.admin.listen, "admin API").map_err(|source| StartError::Admin {
            address: config.admin.listen,
            source,
        })?;
        Some((listener, config.admin.token.clone()))
    } else {
        None
    };
    let metrics = if config.metrics.enabled {
        let address = std::net::SocketAddr::new(config.metrics.address, config.metrics.port);
        Some(bind_tcp(address, "metrics").map_err(|source| StartError::Metrics { address, source })?)
    } else {
        None
    };
    Ok(listeners::Listeners {
        control,
        metrics,
        admin,
    })
}

/// Delivers SIGHUP, SIGTERM and SIGINT as channel messages.
fn signal_channel() -> std::io::Result<Receiver<i32>> {
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR1])?;
    let (sender, receiver) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("corelb-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if sender.send(signal).is_err() {
                    return;
                }
            }
        })?;
    Ok(receiver)
}
