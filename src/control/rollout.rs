//! Rolling replacement of the backend set: add a batch of new backends, check they answer their health path, drain
//! a batch of old ones, remove them on the next step, and repeat every `interval`. Every step is an ordinary commit,
//! so it is validated, versioned and acknowledged by every worker like any other change. Abort returns to the
//! backend set the rollout started from.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::command::{CommandError, ErrorKind, Source};
use super::history::rfc3339;
use super::{resolve_backends, Control};
use crate::config::Config;

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

/// `GET path` against a backend; healthy means a 2xx status within `timeout`.
fn probe(address: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|error| error.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|error| error.to_string())?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: corelb-rollout\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|error| error.to_string())?;
    let mut head = [0u8; 32];
    let read = stream.read(&mut head).map_err(|error| error.to_string())?;
    let line = String::from_utf8_lossy(&head[..read]);
    let status = line.split(' ').nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(format!("{path} answered {:?}", line.lines().next().unwrap_or("")))
    }
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

    pub(super) fn rollout_abort(&mut self) -> Result<Value, CommandError> {
        let original = match self.rollout.as_ref() {
            Some(rollout) if rollout.is_active() => Arc::clone(&rollout.original),
            _ => return Err(CommandError::new(ErrorKind::NotFound, "no rollout in progress")),
        };
        let mut restored = (*self.config).clone();
        restored.backends = original.backends.clone();
        let result = self.commit(
            restored,
            &Source::Rollout,
            Some("rollout aborted: starting backend set restored".into()),
        );
        if result.is_ok() {
            if let Some(rollout) = self.rollout.as_mut() {
                rollout.state = State::Aborted;
            }
            tracing::warn!("rollout aborted");
        }
        result
    }

    /// Takes the next rollout step when one is due.
    pub(super) fn rollout_tick(&mut self) {
        let due = self
            .rollout
            .as_ref()
            .is_some_and(|rollout| rollout.state == State::Running && Instant::now() >= rollout.next_step);
        if !due {
            return;
        }
        if let Err(error) = self.rollout_step() {
            tracing::error!(error = %error, "rollout paused");
            if let Some(rollout) = self.rollout.as_mut() {
                rollout.state = State::Paused;
                rollout.last_error = Some(error);
            }
        }
        if let Some(rollout) = self.rollout.as_mut() {
            rollout.next_step = Instant::now() + rollout.interval;
        }
    }

    fn rollout_step(&mut self) -> Result<(), String> {
        let Some(rollout) = self.rollout.as_mut() else {
            return Ok(());
        };
        // 1. Remove what the previous step drained.
        if !rollout.draining.is_empty() {
            // Work leaves the rollout's queues only once its commit succeeded, so a failed step can be resumed.
            let ids = rollout.draining.clone();
            let mut candidate = (*self.config).clone();
            candidate.backends.retain(|backend| !ids.contains(&backend.id));
            self.commit(
                candidate,
                &Source::Rollout,
                Some(format!("rollout: removed {}", ids.join(", "))),
            )
            .map_err(|error| error.message)?;
            if let Some(rollout) = self.rollout.as_mut() {
                rollout.draining.clear();
                rollout.removed.extend(ids);
            }
            return Ok(());
        }
        // 2. New backends must answer their health path before any old one is drained.
        if !rollout.unproven.is_empty() {
            let unproven = rollout.unproven.clone();
            let health = &self.config.healthcheck;
            for id in &unproven {
                let Some(index) = self.config.backends.iter().position(|backend| &backend.id == id) else {
                    continue;
                };
                let backend = &self.config.backends[index];
                let address = self.snapshot.backend_addrs[index];
                probe(address, &backend.authority(), &health.path, health.timeout)
                    .map_err(|reason| format!("new backend {id} is not healthy: {reason}"))?;
            }
            if let Some(rollout) = self.rollout.as_mut() {
                rollout.unproven.clear();
            }
            return self.rollout_drain_next();
        }
        // 3. Add the next batch.
        if !rollout.to_add.is_empty() {
            let count = rollout.batch.min(rollout.to_add.len());
            let urls: Vec<String> = rollout.to_add.iter().take(count).cloned().collect();
            let mut text = crate::config::to_toml(&self.config);
            for url in &urls {
                text.push_str(&format!("\n[[backends]]\nurl = {}\n", toml::Value::String(url.clone())));
            }
            let candidate =
                crate::config::parse_config(&text).map_err(|errors| errors.to_string().replace('\n', "; "))?;
            resolve_backends(&candidate).map_err(|error| error.to_string())?;
            let ids: Vec<String> = candidate.backends[self.config.backends.len()..]
                .iter()
                .map(|backend| backend.id.clone())
                .collect();
            self.commit(
                candidate,
                &Source::Rollout,
                Some(format!("rollout: added {}", urls.join(", "))),
            )
            .map_err(|error| error.message)?;
            if let Some(rollout) = self.rollout.as_mut() {
                rollout.to_add.drain(..count);
                rollout.added.extend(ids.iter().cloned());
                rollout.unproven = ids;
            }
            return Ok(());
        }
        // 4. Only old backends left to retire.
        if !rollout.to_remove.is_empty() {
            return self.rollout_drain_next();
        }
        rollout.state = State::Done;
        tracing::info!(added = ?rollout.added, removed = ?rollout.removed, "rollout done");
        Ok(())
    }

    fn rollout_drain_next(&mut self) -> Result<(), String> {
        let Some(rollout) = self.rollout.as_mut() else {
            return Ok(());
        };
        let count = rollout.batch.min(rollout.to_remove.len());
        if count == 0 {
            return Ok(());
        }
        let ids: Vec<String> = rollout.to_remove.iter().take(count).cloned().collect();
        let mut candidate = (*self.config).clone();
        for backend in &mut candidate.backends {
            if ids.contains(&backend.id) {
                backend.drain = true;
            }
        }
        self.commit(
            candidate,
            &Source::Rollout,
            Some(format!("rollout: draining {}", ids.join(", "))),
        )
        .map_err(|error| error.message)?;
        if let Some(rollout) = self.rollout.as_mut() {
            rollout.to_remove.drain(..count);
            rollout.draining = ids;
        }
        Ok(())
    }
}
