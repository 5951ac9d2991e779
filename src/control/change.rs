//! How a config change travels: the candidate is checked with the config file's rules, its blocking work (reading
//! the file, resolving backend names) runs as a job on a helper thread, and only when that comes back is the new
//! generation applied on every worker (prepare → commit | abort, `fleet`). One change is in flight at a time; a
//! change that arrives meanwhile waits its turn, while reads (`status`, `/metrics`, `/health`) are answered at once.

use super::sticky::{cookie_values, StickyKey};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::command::{Command, CommandError, ErrorKind, Source};
use super::fleet::ApplyError;
use super::history::VersionRecord;
use super::jobs::{Done, Finished, Job, Resolved, Work};
use super::tls::{check_renewals, keep_unchanged, keep_unchanged_upstream};
use super::{invalid_config, state, Control, ReplyTo, APPLY_TIMEOUT};
use crate::config::{diff, to_toml, Config};
use crate::health::ProbeTarget;
use crate::tls::termination::Termination;
use crate::tls::upstream::UpstreamTls;
use crate::worker::Snapshot;

/// How long a config read or a name lookup may take before the change that waits for it is refused.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(30);
/// How many changes may wait behind the one in flight.
pub const MAX_WAITING: usize = 64;

/// One step of a rollout. `rollout` begins it on a tick and does its bookkeeping when its change (or probe) has
/// ended, so that a failed step leaves the rollout's queues as they were and can be resumed. A step rides on a
/// change and comes back with its result, so it is defined here with the rest of what a change carries, and
/// imports run one way (`rollout` → `change`).
#[derive(Debug)]
pub enum Step {
    /// Remove the backends the previous step drained.
    Remove(Vec<String>),
    /// The backends the previous step added must answer their health path before any old one is drained.
    Prove,
    /// Add the next batch of URLs, which became the backends `ids`.
    Add { urls: Vec<String>, ids: Vec<String> },
    /// Drain the next batch of old backends.
    Drain(Vec<String>),
}

/// Who hears a command's result.
pub enum Asker {
    /// A control-socket or admin-API client.
    Client(ReplyTo),
    /// SIGHUP: nobody waits, so a refusal is logged.
    Signal,
}

impl Asker {
    pub fn tell(self, result: Result<Value, CommandError>) {
        match self {
            Asker::Client(reply) => reply.send(result),
            Asker::Signal => {
                if let Err(error) = result {
                    tracing::error!(error = %error.message.replace('\n', "; "), "reload refused; the running config stays");
                }
            }
        }
    }
}

/// What follows a change's result.
pub enum Then {
    Tell(Asker),
    /// Tell, adding a note to a success.
    TellWithNote(Asker, &'static str),
    /// A rollout step's bookkeeping.
    RolloutStep(Step),
    /// `rollout_abort`: marks the rollout aborted once the starting set is back.
    RolloutAborted(Asker),
}

/// Everything about a change but the candidate itself.
pub struct Ticket {
    pub source: Source,
    /// Recorded in the history; a labelled change is applied even when it changes nothing (a rollback).
    pub label: Option<String>,
    /// Counts for `corelb_config_last_reload_*` (reloads and whole-config applies).
    pub reload: bool,
    pub then: Then,
}

/// A command that waits for the change in flight.
pub struct Waiting {
    pub command: Command,
    pub source: Source,
    pub asker: Asker,
}

/// What the job in flight is for.
enum Awaiting {
    /// The config file, which then goes through [`Control::propose`].
    Reload(Ticket),
    /// A candidate's backend addresses, after which it is applied.
    Resolve(Ticket),
    /// A rollout's new backends answering their health path.
    Probe(Step),
}

/// The job in flight and what waits for it.
pub struct InFlight {
    job: Job,
    deadline: Instant,
    timeout: Duration,
    awaiting: Awaiting,
}

/// The control thread's change queue: at most one in flight, the rest waiting in arrival order.
#[derive(Default)]
pub struct Changes {
    in_flight: Option<InFlight>,
    waiting: VecDeque<Waiting>,
}

impl Changes {
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// Whether `command` edits the config, and so must wait for the change in flight.
pub fn changes_config(command: &Command) -> bool {
    matches!(
        command,
        Command::ConfigApply { .. }
            | Command::Reload
            | Command::CertReload
            | Command::BackendAdd { .. }
            | Command::BackendRemove { .. }
            | Command::BackendSet { .. }
            | Command::BackendDrain { .. }
            | Command::Rollback { .. }
            | Command::RolloutStart { .. }
            | Command::RolloutAbort
    )
}

impl Control {
    /// Queues a change behind the one in flight; refused when too many already wait.
    pub(super) fn wait_for_turn(&mut self, waiting: Waiting) {
        if self.changes.waiting.len() >= MAX_WAITING {
            waiting.asker.tell(Err(CommandError::new(
                ErrorKind::Unavailable,
                format!("{MAX_WAITING} changes are already waiting; try again later"),
            )));
            return;
        }
        self.changes.waiting.push_back(waiting);
    }

    /// Runs waiting changes until one of them has to wait for a job (or none is left).
    pub(super) fn run_waiting(&mut self) {
        while !self.changes.busy() {
            let Some(next) = self.changes.waiting.pop_front() else {
                return;
            };
            self.execute(next.command, next.source, next.asker);
        }
    }

    /// `reload`: the file is read on a helper; the change goes on from [`Control::job_done`].
    pub(super) fn reload(&mut self, ticket: Ticket) {
        let path = self.config_path.clone();
        self.start_job(Work::ReadConfig(path), JOB_TIMEOUT, Awaiting::Reload(ticket));
    }

    /// Checks `candidate` with the same rules as a config file; unless it changes nothing, its backends are then
    /// resolved on a helper and it is applied from [`Control::job_done`]. Nothing changes when it is refused.
    pub(super) fn propose(&mut self, candidate: Config, ticket: Ticket) {
        // One set of rules for every path: whatever was edited goes through the file parser again.
        let candidate = match state::parse_candidate(&to_toml(&candidate), self.config_folder()) {
            Ok(candidate) => candidate,
            Err(error) => return self.finish(ticket, Err(error)),
        };
        if let Some((path, reason)) = crate::config::capacity_below_workers(&candidate, self.fleet.count()) {
            let error = CommandError::new(ErrorKind::InvalidConfig, format!("{path}: {reason}"));
            return self.finish(ticket, Err(error));
        }
        let reasons = self.restart_reasons(&candidate);
        if !reasons.is_empty() {
            let error = CommandError::new(
                ErrorKind::RestartRequired,
                format!("changes to {} need a restart; nothing was applied", reasons.join(", ")),
            );
            return self.finish(ticket, Err(error));
        }
        let changes = diff(&self.config, &candidate);
        // A config with TLS frontends or https:// backends goes on even unchanged: its certificate files are read
        // again (SIGHUP, `reload` and `cert reload` reload certificates and CA bundles).
        let has_tls = candidate.terminates_tls() || candidate.has_https_backends();
        if changes.is_empty() && ticket.label.is_none() && !has_tls {
            let unchanged = json!({ "version": self.snapshot.version, "changes": changes, "applied": false });
            return self.finish(ticket, Ok(unchanged));
        }
        self.start_job(
            Work::Resolve(Box::new(candidate)),
            JOB_TIMEOUT,
            Awaiting::Resolve(ticket),
        );
    }

    /// `GET`s the health path of a rollout's new backends, all at once on the prober thread; the result comes
    /// back as a job's. Each probe's timeout bounds all of it, so the slowest bounds the wait.
    pub(super) fn probe(&mut self, targets: Vec<ProbeTarget>, step: Step) {
        let slowest = targets.iter().map(|target| target.timeout).max().unwrap_or_default();
        let timeout = slowest + Duration::from_secs(1);
        let (job, results) = self.jobs.elsewhere("probing the new backends");
        let id = job.id;
        let reply = Box::new(move |result| {
            // The control thread may have given the probe up, or stopped: nobody to tell.
            let _ = results.send(Done {
                id,
                finished: Finished::Probe(result),
            });
        });
        match self.checks.probe_once(targets, reply) {
            Ok(()) => {
                self.changes.in_flight = Some(InFlight {
                    job,
                    deadline: Instant::now() + timeout,
                    timeout,
                    awaiting: Awaiting::Probe(step),
                });
            }
            Err(reason) => self.fail(Awaiting::Probe(step), CommandError::new(ErrorKind::Unavailable, reason)),
        }
    }

    fn start_job(&mut self, work: Work, timeout: Duration, awaiting: Awaiting) {
        match self.jobs.start(work) {
            Ok(job) => {
                self.changes.in_flight = Some(InFlight {
                    job,
                    deadline: Instant::now() + timeout,
                    timeout,
                    awaiting,
                });
            }
            Err(error) => {
                let error = CommandError::new(ErrorKind::Unavailable, error.to_string());
                self.fail(awaiting, error);
            }
        }
    }

    /// A helper's result: the change that waited for it goes on. A result nobody waits for any more (its job was
    /// given up) is dropped.
    pub(super) fn job_done(&mut self, done: Done) {
        let Some(in_flight) = self.changes.in_flight.take_if(|in_flight| in_flight.job.id == done.id) else {
            return;
        };
        match (in_flight.awaiting, done.finished) {
            (Awaiting::Reload(ticket), Finished::ReadConfig(result)) => match result {
                Ok(candidate) => self.propose(*candidate, ticket),
                Err(error) => self.finish(ticket, Err(invalid_config(error))),
            },
            (Awaiting::Resolve(ticket), Finished::Resolve(resolved)) => {
                let result = self.apply_resolved(*resolved, &ticket);
                self.finish(ticket, result);
            }
            (Awaiting::Probe(step), Finished::Probe(result)) => self.rollout_step_done(step, result),
            (awaiting, finished) => {
                tracing::error!(?finished, "a job answered with the wrong kind of result");
                self.fail(
                    awaiting,
                    CommandError::new(ErrorKind::Unavailable, "internal error: mismatched job"),
                );
            }
        }
    }

    /// Gives up a job past its deadline: its change is refused, nothing having been applied.
    pub(super) fn give_up_overdue(&mut self, now: Instant) {
        let Some(in_flight) = self.changes.in_flight.take_if(|in_flight| now >= in_flight.deadline) else {
            return;
        };
        let message = in_flight.job.timed_out(in_flight.timeout);
        tracing::error!(job = in_flight.job.what, "{message}");
        self.fail(in_flight.awaiting, CommandError::new(ErrorKind::Unavailable, message));
    }

    /// At shutdown: the change in flight and those waiting are refused, none having been applied.
    pub(super) fn refuse_all_changes(&mut self) {
        let error = || CommandError::new(ErrorKind::Unavailable, "corelb is shutting down; nothing was applied");
        if let Some(in_flight) = self.changes.in_flight.take() {
            if let Awaiting::Reload(ticket) | Awaiting::Resolve(ticket) = in_flight.awaiting {
                ticket.then.refuse(error());
            }
        }
        for waiting in self.changes.waiting.drain(..) {
            waiting.asker.tell(Err(error()));
        }
    }

    fn fail(&mut self, awaiting: Awaiting, error: CommandError) {
        match awaiting {
            Awaiting::Reload(ticket) | Awaiting::Resolve(ticket) => self.finish(ticket, Err(error)),
            Awaiting::Probe(step) => self.rollout_step_done(step, Err(error.message)),
        }
    }

    /// A resolved candidate: refused when any of its blocking work failed; answered "unchanged" when neither it
    /// nor any certificate changed (and no label asks for a version); else applied.
    fn apply_resolved(&mut self, resolved: Resolved, ticket: &Ticket) -> Result<Value, CommandError> {
        let Resolved {
            candidate,
            addresses,
            sticky_key,
            tls,
            upstream_tls,
        } = resolved;
        let upstream_tls = upstream_tls.map_err(invalid_config)?;
        let (upstream_tls, upstream_rewritten) =
            keep_unchanged_upstream(self.snapshot.upstream_tls.as_ref(), upstream_tls);
        let addresses = addresses.map_err(invalid_config)?;
        let sticky_key = sticky_key.transpose().map_err(invalid_config)?;
        let tls = tls.map_err(invalid_config)?;
        check_renewals(&self.config, &self.snapshot.tls, &candidate, &tls).map_err(invalid_config)?;
        let (tls, reloaded) = keep_unchanged(&candidate, &self.snapshot.tls, tls);
        let mut changes = diff(&self.config, &candidate);
        if changes.is_empty() && reloaded.is_empty() && !upstream_rewritten && ticket.label.is_none() {
            return Ok(json!({ "version": self.snapshot.version, "changes": changes, "applied": false }));
        }
        changes.extend(
            reloaded
                .iter()
                .map(|frontend| format!("frontend {frontend} TLS reloaded")),
        );
        if upstream_rewritten {
            changes.push("upstream TLS reloaded".to_string());
        }
        self.apply(*candidate, addresses, sticky_key, (tls, upstream_tls), changes, ticket)
    }

    /// Builds the next generation from a resolved candidate and applies it on every worker.
    fn apply(
        &mut self,
        candidate: Config,
        backend_addrs: Vec<SocketAddr>,
        sticky_key: Option<StickyKey>,
        (tls, upstream_tls): (Vec<Option<Arc<Termination>>>, Option<Arc<UpstreamTls>>),
        changes: Vec<String>,
        ticket: &Ticket,
    ) -> Result<Value, CommandError> {
        let started = Instant::now();
        let version = self.next_version;
        self.next_version += 1;
        let candidate = Arc::new(candidate);
        self.tickets.due(&candidate, started);
        let snapshot = Arc::new(Snapshot {
            version,
            config: Arc::clone(&candidate),
            backend_addrs,
            frontend_addrs: self.snapshot.frontend_addrs.clone(),
            sticky_cookies: cookie_values(&candidate, sticky_key.as_ref(), &self.sticky_key),
            tls,
            ticket_keys: self.tickets.keys.clone(),
            upstream_tls,
        });
        self.broadcast(&snapshot)?;
        let elapsed = started.elapsed();
        let summary = match &ticket.label {
            Some(label) if changes.is_empty() => label.clone(),
            Some(label) => format!("{label}: {}", changes.join("; ")),
            None => changes.join("; "),
        };
        if candidate.logging.level != self.config.logging.level {
            let _ = crate::logging::set_level(candidate.logging.level);
        }
        self.history.set_capacity(candidate.control.history);
        self.breakers
            .retain(|id| candidate.backends.iter().any(|backend| backend.id == id));
        self.checks.follow(
            &candidate,
            &snapshot.backend_addrs,
            snapshot.upstream_tls.as_ref(),
            &mut self.fleet,
        );
        self.history.push(VersionRecord {
            version,
            applied_at: SystemTime::now(),
            source: ticket.source.describe(),
            summary: summary.clone(),
            config: Arc::clone(&candidate),
        });
        self.config = candidate;
        self.snapshot = snapshot;
        tracing::info!(
            version,
            source = %ticket.source.describe(),
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

    /// A change has ended, applied or not: whoever waits hears of it.
    pub(super) fn finish(&mut self, ticket: Ticket, result: Result<Value, CommandError>) {
        if ticket.reload {
            self.last_reload = (result.is_ok(), SystemTime::now());
        }
        match ticket.then {
            Then::Tell(asker) => asker.tell(result),
            Then::TellWithNote(asker, note) => asker.tell(result.map(|mut reply| {
                if let Some(object) = reply.as_object_mut() {
                    object.insert("note".into(), json!(note));
                }
                reply
            })),
            Then::RolloutStep(step) => self.rollout_step_done(step, result.map(drop).map_err(|error| error.message)),
            Then::RolloutAborted(asker) => {
                if result.is_ok() {
                    self.rollout_aborted();
                }
                asker.tell(result);
            }
        }
    }

    /// What in `candidate` cannot change without a restart.
    pub(super) fn restart_reasons(&self, candidate: &Config) -> Vec<&'static str> {
        let current = &self.config;
        let fixed = [
            (candidate.server != current.server, "[server]"),
            (listening(candidate) != listening(current), "[[frontends]]"),
            (candidate.control.socket != current.control.socket, "control.socket"),
            (candidate.admin != current.admin, "[admin]"),
            (candidate.metrics != current.metrics, "[metrics]"),
            (candidate.access_log.path != current.access_log.path, "access_log.path"),
            // The diagnostic log's subscriber is installed once at start; its level can change live, its format not.
            (candidate.logging.format != current.logging.format, "logging.format"),
        ];
        fixed
            .into_iter()
            .filter_map(|(changed, what)| changed.then_some(what))
            .collect()
    }
}

/// What the frontends listen on: a change there needs a restart; their timeouts change live.
fn listening(config: &Config) -> Vec<(&str, std::net::SocketAddr)> {
    config
        .frontends
        .iter()
        .map(|frontend| (frontend.name.as_str(), frontend.listen))
        .collect()
}

impl Then {
    /// Refuses without the bookkeeping a result would bring (at shutdown).
    fn refuse(self, error: CommandError) {
        match self {
            Then::Tell(asker) | Then::TellWithNote(asker, _) | Then::RolloutAborted(asker) => asker.tell(Err(error)),
            Then::RolloutStep(_) => {}
        }
    }
}
