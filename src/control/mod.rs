//! The control thread: owns the authoritative config and its version history, starts the workers, and applies every
//! change — from the Unix socket, the admin API, a file reload or SIGHUP — through one function, [`Control::execute`].
//! A change becomes a new [`Snapshot`] broadcast to every worker and is acknowledged only once every worker has
//! applied it. The blocking work workers must never do (DNS, reading files, health probes) is not done on this
//! thread either: it runs on helper threads (`jobs`), and probes on the prober thread, whose results come back as
//! events, so the control thread always answers reads at once (`change` says how a change waits for them).
//!
//! The files: `start` (starting everything), `change` (the way of a change), `state` (the pure reducer), `jobs`
//! (helper threads), `fleet` (talking to the workers), `rollout`, `views` (status and metrics answers), `history`,
//! `resolve`; the per-backend judgements over every worker in `breakers`, `checks` (active health), `outliers`
//! and `ejections` (passive outlier detection); and the operator-facing framing in `listeners`, `socket`, `admin`
//! and `command`.

mod admin;
mod breakers;
mod change;
mod checks;
pub mod command;
mod ejections;
mod fleet;
mod history;
mod jobs;
mod listeners;
mod outliers;
mod resolve;
mod rollout;
mod socket;
mod start;
mod state;
mod sticky;
mod tls;

pub use tls::load_terminations;
mod views;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};
use serde_json::{json, Value};
use signal_hook::consts::{SIGHUP, SIGUSR1};

use crate::access_log::LogMessage;
use crate::config::names::Choice;
use crate::config::{diff, Config, LogLevel};
use crate::net::descriptors::DescriptorBudget;
use crate::shard::BreakerNews;
use crate::worker::{Driver, FromWorker, Snapshot, ToWorker};
use breakers::{Breakers, Decision};
use change::{changes_config, Asker, Changes, Then, Ticket, Waiting};
use command::{Command, CommandError, ErrorKind, Source};
use fleet::Fleet;
use history::History;
use jobs::Jobs;
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
    #[error("{path}: {reason}")]
    Capacity { path: String, reason: String },
    #[error(transparent)]
    Sticky(#[from] sticky::SecretError),
    #[error(transparent)]
    Tls(#[from] crate::tls::termination::TerminationError),
    #[error(transparent)]
    TicketKeys(#[from] crate::tls::tickets::TicketKeyError),
    #[error(transparent)]
    UpstreamTls(#[from] crate::tls::upstream::UpstreamTlsError),
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
    /// Helper threads for blocking work.
    jobs: Jobs,
    /// The change in flight and those waiting for it.
    changes: Changes,
    /// What the workers' circuit breakers report.
    breaker_news: Receiver<BreakerNews>,
    /// The workers' breakers combined.
    breakers: Breakers,
    /// The active health checks: the prober and the health table.
    checks: checks::Checks,
    /// Passive outlier detection: the workers' outcome counts and the ejections they lead to.
    ejections: ejections::Ejections,
    /// This process's own key for sticky cookies, used when the config names no `secret_file`.
    sticky_key: sticky::StickyKey,
    /// The session-ticket keys every core uses, and their rotation.
    tickets: tls::TicketRotation,
    /// `[tls] watch`: the certificate files as last seen.
    cert_watch: tls::CertificateWatch,
}

/// The note a weight change gets when the balancer ignores weights.
const ROUND_ROBIN_WEIGHT_NOTE: &str =
    "balancer.algorithm is round_robin, which ignores weights: this weight has no effect until a weighted algorithm is chosen";

/// `log_level`: the diagnostic log's level, changed live.
fn set_log_level(level: &str, source: &Source) -> Result<Value, CommandError> {
    let parsed = LogLevel::from_name(level).ok_or_else(|| {
        CommandError::invalid_request(format!("unknown level {level:?} (use one of {})", LogLevel::listed()))
    })?;
    crate::logging::set_level(parsed).map_err(|error| CommandError::new(ErrorKind::Unavailable, error))?;
    tracing::warn!(level = parsed.as_str(), source = %source.describe(), "log level changed");
    Ok(json!({ "level": parsed.as_str() }))
}

fn invalid_config(errors: impl std::fmt::Display) -> CommandError {
    CommandError::new(ErrorKind::InvalidConfig, errors.to_string())
}

impl Control {
    /// A sender for commands, as the socket and admin API use; for embedding corelb.
    pub fn requests(&self) -> Sender<ControlRequest> {
        self.request_sender.clone()
    }

    /// Runs until SIGTERM or SIGINT, then drains and stops every worker.
    pub fn run(mut self) -> Result<(), StartError> {
        let signals = start::signal_channel()?;
        let job_results = self.jobs.results().clone();
        loop {
            select! {
                recv(signals) -> signal => match signal {
                    Ok(SIGUSR1) => {
                        tracing::info!("reopening the access log");
                        let _ = self.access_log.send(LogMessage::Reopen);
                    }
                    Ok(SIGHUP) => self.execute(Command::Reload, Source::Signal, Asker::Signal),
                    Ok(_) | Err(_) => break,
                },
                recv(self.requests) -> request => {
                    if let Ok(request) = request {
                        self.execute(request.command, request.source, Asker::Client(request.reply));
                    }
                },
                recv(self.breaker_news) -> news => {
                    if let Ok(news) = news {
                        self.combine_breakers(&news);
                    }
                },
                recv(self.ejections.reports) -> report => {
                    if let Ok(report) = report {
                        self.ejections.take(&report, &self.config, self.fleet.count());
                        if report.has_failures() {
                            self.ejections.tick(&self.snapshot, &self.checks, &mut self.fleet, true);
                        }
                    }
                },
                recv(self.checks.news) -> news => {
                    if let Ok(news) = news {
                        self.checks.flipped(&news, &mut self.fleet);
                    }
                },
                recv(job_results) -> done => {
                    if let Ok(done) = done {
                        self.job_done(done);
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
            self.give_up_overdue(Instant::now());
            self.run_waiting();
            // Every pass, not only idle ones: a client polling faster than TICK must not starve a rollout.
            self.rollout_tick();
            self.ejections
                .tick(&self.snapshot, &self.checks, &mut self.fleet, false);
            if let Some(keys) = self.tickets.due(&self.config, Instant::now()) {
                tracing::info!("session-ticket keys rotated");
                let _ = self.fleet.send_each(|_| ToWorker::TicketKeys(Arc::clone(&keys)));
            }
            if self.cert_watch.changed(&self.config, Instant::now()) {
                tracing::info!("a certificate file changed; reloading the certificates");
                self.execute(Command::CertReload, Source::Watch, Asker::Signal);
            }
            if self.last_rebalance.elapsed() >= REBALANCE_INTERVAL {
                self.last_rebalance = Instant::now();
                self.rebalance_rate_limits();
            }
        }
        self.refuse_all_changes();
        tracing::info!(grace = ?self.config.server.shutdown_grace, "shutting down: draining connections");
        self.stop_workers();
        let _ = std::fs::remove_file(&self.config.control.socket);
        tracing::info!("corelb stopped");
        Ok(())
    }

    /// Runs one command. Its result goes to `asker` at once, or, for a change, once the change has ended (a change
    /// may wait for the one in flight, then for a helper's job). Every change path starts here.
    pub(super) fn execute(&mut self, command: Command, source: Source, asker: Asker) {
        if let Err(error) = self.rollout_allows(&command) {
            return asker.tell(Err(error));
        }
        if changes_config(&command) && self.changes.busy() {
            return self.wait_for_turn(Waiting { command, source, asker });
        }
        let result = match command {
            Command::Status => Ok(self.status()),
            Command::ConfigShow => Ok(json!({
                "version": self.snapshot.version,
                "toml": crate::config::to_toml_redacted(&self.config),
            })),
            Command::ConfigDiff { .. } => state::apply(&self.config, &command, self.config_folder()).map(|candidate| {
                json!({
                    "changes": diff(&self.config, &candidate),
                    "restart_required": self.restart_reasons(&candidate),
                })
            }),
            Command::Reload => {
                return self.reload(Ticket {
                    source,
                    label: None,
                    reload: true,
                    then: Then::Tell(asker),
                })
            }
            Command::ConfigApply { .. }
            | Command::BackendAdd { .. }
            | Command::BackendRemove { .. }
            | Command::BackendDrain { .. }
            | Command::BackendSet { .. } => return self.edit(&command, source, asker),
            Command::Backends => Ok(json!({ "version": self.snapshot.version, "backends": self.backends_json() })),
            Command::Versions => Ok(json!({
                "current": self.snapshot.version,
                "versions": self.history.iter().map(history::VersionRecord::to_json).collect::<Vec<_>>(),
            })),
            Command::Rollback { version } => return self.rollback(version, source, asker),
            Command::LogLevel { level } => set_log_level(&level, &source),
            Command::RolloutStart { to, batch, interval } => self.rollout_start(to, batch, interval),
            Command::RolloutStatus => Ok(self.rollout.as_ref().map_or(json!({"state": "none"}), Rollout::status)),
            Command::RolloutPause | Command::RolloutResume => {
                let pause = command == Command::RolloutPause;
                match self.rollout.as_mut().filter(|rollout| rollout.is_active()) {
                    Some(rollout) => {
                        rollout.set_paused(pause);
                        Ok(rollout.status())
                    }
                    None => Err(CommandError::new(ErrorKind::NotFound, "no rollout in progress")),
                }
            }
            Command::RolloutAbort => return self.rollout_abort(asker),
            Command::Metrics => Ok(Value::String(self.metrics_text())),
            Command::MetricsSummary => Ok(self.metrics_summary()),
            Command::Health => Ok(self.health()),
            Command::Certificates => Ok(self.certificates()),
            Command::CertReload => return self.cert_reload(source, asker),
        };
        asker.tell(result);
    }

    /// While a rollout runs, it alone changes the backends: only its own controls and the log level get through.
    fn rollout_allows(&self, command: &Command) -> Result<(), CommandError> {
        let rolling = self.rollout.as_ref().is_some_and(Rollout::is_active);
        let allowed = command.is_read_only()
            || matches!(
                command,
                Command::RolloutPause | Command::RolloutResume | Command::RolloutAbort | Command::LogLevel { .. }
            );
        if rolling && !allowed {
            return Err(CommandError::new(
                ErrorKind::Conflict,
                "a rollout is in progress; pause, finish or abort it first",
            ));
        }
        Ok(())
    }

    /// `cert reload`: the running config proposed again, which reads every certificate file again (see
    /// [`Control::propose`]); only what changed is handed to the cores.
    fn cert_reload(&mut self, source: Source, asker: Asker) {
        if !self.config.terminates_tls() && !self.config.has_https_backends() {
            return asker.tell(Err(CommandError::new(
                ErrorKind::NotFound,
                "no frontend terminates TLS and no backend is https://: there is no certificate to reload",
            )));
        }
        let ticket = Ticket {
            source,
            label: None,
            reload: false,
            then: Then::Tell(asker),
        };
        self.propose(self.config.as_ref().clone(), ticket);
    }

    /// A command that edits the config (`state::apply`), then goes the way of every change.
    fn edit(&mut self, command: &Command, source: Source, asker: Asker) {
        let reload = matches!(command, Command::ConfigApply { .. });
        let candidate = match state::apply(&self.config, command, self.config_folder()) {
            Ok(candidate) => candidate,
            Err(error) => {
                let ticket = Ticket {
                    source,
                    label: None,
                    reload,
                    then: Then::Tell(asker),
                };
                return self.finish(ticket, Err(error));
            }
        };
        let weightless = matches!(command, Command::BackendSet { .. }) && !candidate.balancer.algorithm.uses_weights();
        // Applied, so a later switch to a weighted algorithm uses it; but it changes nothing today.
        let then = if weightless {
            Then::TellWithNote(asker, ROUND_ROBIN_WEIGHT_NOTE)
        } else {
            Then::Tell(asker)
        };
        let ticket = Ticket {
            source,
            label: None,
            reload,
            then,
        };
        self.propose(candidate, ticket);
    }

    /// Applies a version from the history again (the previous one when `version` is `None`).
    fn rollback(&mut self, version: Option<u64>, source: Source, asker: Asker) {
        let record = match version {
            Some(version) => self.history.find(version).ok_or_else(|| {
                CommandError::new(ErrorKind::NotFound, format!("version {version} is not in the history"))
            }),
            None => self
                .history
                .previous()
                .ok_or_else(|| CommandError::new(ErrorKind::NotFound, "there is no previous version")),
        };
        match record {
            Ok(record) => {
                let ticket = Ticket {
                    source,
                    label: Some(format!("rollback to version {}", record.version)),
                    reload: false,
                    then: Then::Tell(asker),
                };
                let candidate = (*record.config).clone();
                self.propose(candidate, ticket);
            }
            Err(error) => asker.tell(Err(error)),
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

    /// Acts on one worker's breaker news: stops traffic to a backend on every worker once the workers together
    /// saw enough failures (see `breakers`), and logs each stop and recovery once.
    fn combine_breakers(&mut self, news: &BreakerNews) {
        let settings = &self.config.circuitbreaker;
        if !settings.enabled {
            return;
        }
        let (threshold, open_for, workers) = (settings.threshold, settings.timeout, self.fleet.count());
        match self
            .breakers
            .observe(news, workers, threshold, open_for, Instant::now())
        {
            Some(Decision::StopEverywhere {
                backend,
                until,
                failures,
                tripped_on,
            }) => {
                let seconds = until.saturating_duration_since(Instant::now()).as_secs_f64();
                tracing::warn!(
                    backend = %backend,
                    failures,
                    tripped_on = ?tripped_on,
                    open_seconds = seconds,
                    "circuit breaker open: traffic to the backend stopped on every worker"
                );
                let _ = self.fleet.send_each(|_| ToWorker::StopTraffic {
                    backend: backend.clone(),
                    until,
                });
            }
            Some(Decision::Recovered { backend, worker }) => {
                tracing::info!(backend = %backend, worker, "circuit breaker closed: a trial request succeeded");
            }
            None => {}
        }
    }

    /// The config file's folder: relative paths in a config given as text are resolved against it.
    fn config_folder(&self) -> &Path {
        self.config_path.parent().unwrap_or(Path::new(""))
    }

    fn stop_workers(&mut self) {
        self.fleet.stop();
    }
}
