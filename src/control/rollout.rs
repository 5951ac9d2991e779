//! Rolling replacement of the backend set: add a batch of new backends, check they answer their health path, drain
//! a batch of old ones, remove them on the next step, and repeat every `interval`. Every step is an ordinary change
//! (`change`), so it is validated, versioned and acknowledged by every worker like any other, and waits its turn
//! behind the change in flight; the health probe runs on a helper thread (`jobs`). Abort returns to the backend set
//! the rollout started from.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::change::{Asker, Step, Then, Ticket};
use super::command::{CommandError, ErrorKind, Source};
use super::history::rfc3339;
use super::Control;
use crate::config::Config;
use crate::health::ProbeTarget;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Paused,
    Done,
    Aborted,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Done => "done",
            State::Aborted => "aborted",
        }
    }
}

/// A rollout in progress (or the last one, finished).
#[derive(Debug)]
pub struct Rollout {
    original: Arc<Config>,
    to_add: VecDeque<String>,
    to_remove: VecDeque<String>,
    /// Added in the last step and not yet seen healthy (backend ids).
    unproven: Vec<String>,
    /// Drained in the last step, removed in the next (backend ids).
    draining: Vec<String>,
    added: Vec<String>,
    removed: Vec<String>,
    batch: usize,
    interval: Duration,
    next_step: Instant,
    state: State,
    last_error: Option<String>,
    started_at: SystemTime,
}

impl Rollout {
    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Running | State::Paused)
    }

    pub fn set_paused(&mut self, paused: bool) {
        self.state = if paused { State::Paused } else { State::Running };
        if !paused {
            self.last_error = None;
            self.next_step = Instant::now();
        }
    }

    pub fn status(&self) -> Value {
        json!({
            "state": self.state.as_str(),
            "started_at": rfc3339(self.started_at),
            "batch": self.batch,
            "interval_ms": self.interval.as_millis() as u64,
            "added": self.added,
            "removed": self.removed,
            "pending_add": self.to_add,
            "pending_remove": self.to_remove,
            "awaiting_health": self.unproven,
            "draining": self.draining,
            "last_error": self.last_error,
        })
    }
}

fn normalise(url: &str) -> &str {
    url.strip_suffix('/').unwrap_or(url)
}

impl Control {
    pub(super) fn rollout_start(
        &mut self,
        to: Vec<String>,
        batch: usize,
        interval: Duration,
    ) -> Result<Value, CommandError> {
        if to.is_empty() {
            return Err(CommandError::invalid_request(
                "a rollout needs at least one target backend URL",
            ));
        }
        let target: Vec<&str> = to.iter().map(|url| normalise(url)).collect();
        // The whole target set is checked before the first step, by the config file's own rules, so that a bad
        // URL is refused now rather than after old backends were already drained.
        if let Some((index, url)) = target
            .iter()
            .enumerate()
            .find(|(index, url)| target[..*index].contains(url))
        {
            return Err(CommandError::invalid_request(format!(
                "target {index} ({url}) is listed twice"
            )));
        }
        let mut probe = (*self.config).clone();
        probe.backends.clear();
        let mut text = crate::config::to_toml(&probe);
        for url in &to {
            text.push_str(&format!("\n[[backends]]\nurl = {}\n", toml::Value::String(url.clone())));
        }
        crate::config::parse_config(&text).map_err(super::invalid_config)?;
        let current_urls: Vec<&str> = self
            .config
            .backends
            .iter()
            .map(|backend| normalise(&backend.url))
            .collect();
        let to_add: VecDeque<String> = to
            .iter()
            .filter(|url| !current_urls.contains(&normalise(url)))
            .cloned()
            .collect();
        let to_remove: VecDeque<String> = self
            .config
            .backends
            .iter()
            .filter(|backend| !target.contains(&normalise(&backend.url)))
            .map(|backend| backend.id.clone())
            .collect();
        if to_add.is_empty() && to_remove.is_empty() {
            return Err(CommandError::invalid_request(
                "the backend set is already the target set",
            ));
        }
        let rollout = Rollout {
            original: Arc::clone(&self.config),
            to_add,
            to_remove,
            unproven: Vec::new(),
            draining: Vec::new(),
            added: Vec::new(),
            removed: Vec::new(),
            batch: batch.max(1),
            interval,
            next_step: Instant::now(),
            state: State::Running,
            last_error: None,
            started_at: SystemTime::now(),
        };
        tracing::info!(add = ?rollout.to_add, remove = ?rollout.to_remove, batch, ?interval, "rollout started");
        let status = rollout.status();
        self.rollout = Some(rollout);
        Ok(status)
    }

    pub(super) fn rollout_abort(&mut self, asker: Asker) {
        let original = match self.rollout.as_ref() {
            Some(rollout) if rollout.is_active() => Arc::clone(&rollout.original),
            _ => return asker.tell(Err(CommandError::new(ErrorKind::NotFound, "no rollout in progress"))),
        };
        let mut restored = (*self.config).clone();
        restored.backends = original.backends.clone();
        let ticket = Ticket {
            source: Source::Rollout,
            label: Some("rollout aborted: starting backend set restored".into()),
            reload: false,
            then: Then::RolloutAborted(asker),
        };
        self.propose(restored, ticket);
    }

    /// The starting backend set is back.
    pub(super) fn rollout_aborted(&mut self) {
        if let Some(rollout) = self.rollout.as_mut() {
            rollout.state = State::Aborted;
        }
        tracing::warn!("rollout aborted");
    }

    /// Begins the next rollout step when one is due and no other change is in flight.
    pub(super) fn rollout_tick(&mut self) {
        let due = self
            .rollout
            .as_ref()
            .is_some_and(|rollout| rollout.state == State::Running && Instant::now() >= rollout.next_step);
        if due && !self.changes.busy() {
            self.rollout_begin();
        }
    }

    fn rollout_begin(&mut self) {
        let Some(rollout) = self.rollout.as_mut() else {
            return;
        };
        let step_change = |label: String, step: Step| Ticket {
            source: Source::Rollout,
            label: Some(label),
            reload: false,
            then: Then::RolloutStep(step),
        };
        if !rollout.draining.is_empty() {
            let ids = rollout.draining.clone();
            let mut candidate = (*self.config).clone();
            candidate.backends.retain(|backend| !ids.contains(&backend.id));
            let label = format!("rollout: removed {}", ids.join(", "));
            return self.propose(candidate, step_change(label, Step::Remove(ids)));
        }
        if !rollout.unproven.is_empty() {
            let health = &self.config.healthcheck;
            let targets = rollout
                .unproven
                .iter()
                .filter_map(|id| {
                    let index = self.config.backends.iter().position(|backend| &backend.id == id)?;
                    Some(ProbeTarget {
                        id: id.clone(),
                        address: self.snapshot.backend_addrs[index],
                        tls: self.checks.probe_tls(&self.config.backends[index]),
                        host: self.config.backends[index].authority(),
                        path: health.path.clone(),
                        timeout: health.timeout,
                    })
                })
                .collect();
            return self.probe(targets, Step::Prove);
        }
        if !rollout.to_add.is_empty() {
            let count = rollout.batch.min(rollout.to_add.len());
            let urls: Vec<String> = rollout.to_add.iter().take(count).cloned().collect();
            let mut text = crate::config::to_toml(&self.config);
            for url in &urls {
                text.push_str(&format!("\n[[backends]]\nurl = {}\n", toml::Value::String(url.clone())));
            }
            let candidate = match crate::config::parse_config(&text) {
                Ok(candidate) => candidate,
                Err(errors) => return self.rollout_failed(errors.to_string().replace('\n', "; ")),
            };
            let ids: Vec<String> = candidate.backends[self.config.backends.len()..]
                .iter()
                .map(|backend| backend.id.clone())
                .collect();
            let label = format!("rollout: added {}", urls.join(", "));
            return self.propose(candidate, step_change(label, Step::Add { urls, ids }));
        }
        if !rollout.to_remove.is_empty() {
            return self.rollout_drain_next();
        }
        rollout.state = State::Done;
        tracing::info!(added = ?rollout.added, removed = ?rollout.removed, "rollout done");
    }

    fn rollout_drain_next(&mut self) {
        let Some(rollout) = self.rollout.as_mut() else {
            return;
        };
        let count = rollout.batch.min(rollout.to_remove.len());
        if count == 0 {
            return;
        }
        let ids: Vec<String> = rollout.to_remove.iter().take(count).cloned().collect();
        let mut candidate = (*self.config).clone();
        for backend in &mut candidate.backends {
            if ids.contains(&backend.id) {
                backend.drain = true;
            }
        }
        let ticket = Ticket {
            source: Source::Rollout,
            label: Some(format!("rollout: draining {}", ids.join(", "))),
            reload: false,
            then: Then::RolloutStep(Step::Drain(ids)),
        };
        self.propose(candidate, ticket);
    }

    /// A step's change or probe has ended. Work leaves the rollout's queues only once it succeeded.
    pub(super) fn rollout_step_done(&mut self, step: Step, result: Result<(), String>) {
        if let Err(error) = result {
            return self.rollout_failed(error);
        }
        let Some(rollout) = self.rollout.as_mut() else {
            return;
        };
        rollout.next_step = Instant::now() + rollout.interval;
        match step {
            Step::Remove(ids) => {
                rollout.draining.clear();
                rollout.removed.extend(ids);
            }
            Step::Prove => {
                rollout.unproven.clear();
                self.rollout_drain_next();
            }
            Step::Add { urls, ids } => {
                rollout.to_add.drain(..urls.len());
                rollout.added.extend(ids.iter().cloned());
                rollout.unproven = ids;
            }
            Step::Drain(ids) => {
                rollout.to_remove.drain(..ids.len());
                rollout.draining = ids;
            }
        }
    }

    fn rollout_failed(&mut self, error: String) {
        tracing::error!(error = %error, "rollout paused");
        if let Some(rollout) = self.rollout.as_mut() {
            rollout.state = State::Paused;
            rollout.last_error = Some(error);
            rollout.next_step = Instant::now() + rollout.interval;
        }
    }
}
