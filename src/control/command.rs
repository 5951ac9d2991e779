//! The control plane's vocabulary. Socket lines, REST calls, file reloads and SIGHUP all become a [`Command`]; every
//! edit goes through one pure reducer (`control::state::apply`) and one `Control::commit`, so every path validates
//! and applies a change the same way.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::duration::parse_duration;

/// Longest control request line or REST body accepted.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Status,
    ConfigShow,
    ConfigApply {
        toml: String,
    },
    ConfigDiff {
        toml: String,
    },
    Reload,
    Backends,
    BackendAdd {
        url: String,
        weight: Option<u32>,
        id: Option<String>,
    },
    BackendRemove {
        id: String,
    },
    BackendSet {
        id: String,
        weight: u32,
    },
    BackendDrain {
        id: String,
    },
    Versions,
    Rollback {
        version: Option<u64>,
    },
    LogLevel {
        level: String,
    },
    RolloutStart {
        to: Vec<String>,
        batch: usize,
        interval: Duration,
    },
    RolloutStatus,
    RolloutPause,
    RolloutResume,
    RolloutAbort,
    /// Merged metrics in the Prometheus text format (as a JSON string).
    Metrics,
    /// Merged totals for humans: requests, errors, latency quantiles, per backend.
    MetricsSummary,
    /// corelb's own health: backends that can serve.
    Health,
}

impl Command {
    /// The command's name on the wire (`{"cmd": "backend_add", ...}`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::ConfigShow => "config_show",
            Command::ConfigApply { .. } => "config_apply",
            Command::ConfigDiff { .. } => "config_diff",
            Command::Reload => "reload",
            Command::Backends => "backends",
            Command::BackendAdd { .. } => "backend_add",
            Command::BackendRemove { .. } => "backend_remove",
            Command::BackendSet { .. } => "backend_set",
            Command::BackendDrain { .. } => "backend_drain",
            Command::Versions => "versions",
            Command::Rollback { .. } => "rollback",
            Command::LogLevel { .. } => "log_level",
            Command::RolloutStart { .. } => "rollout_start",
            Command::RolloutStatus => "rollout_status",
            Command::RolloutPause => "rollout_pause",
            Command::RolloutResume => "rollout_resume",
            Command::RolloutAbort => "rollout_abort",
            Command::Metrics => "metrics",
            Command::MetricsSummary => "metrics_summary",
            Command::Health => "health",
        }
    }

    /// Commands that change nothing may run while a rollout is in progress or be retried freely.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Command::Status
                | Command::ConfigShow
                | Command::ConfigDiff { .. }
                | Command::Backends
                | Command::Versions
                | Command::RolloutStatus
                | Command::Metrics
                | Command::MetricsSummary
                | Command::Health
        )
    }
}

/// Where a command came from, recorded with every applied version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The config file, at start or on `reload`.
    File,
    /// SIGHUP.
    Signal,
    /// The Unix socket, with the peer's uid.
    Socket { uid: Option<u32> },
    /// The admin REST API, with the peer address.
    Api { peer: String },
    /// A rollout step.
    Rollout,
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::File => "file".to_string(),
            Source::Signal => "sighup".to_string(),
            Source::Socket { uid: Some(uid) } => format!("socket (uid {uid})"),
            Source::Socket { uid: None } => "socket".to_string(),
            Source::Api { peer } => format!("api ({peer})"),
            Source::Rollout => "rollout".to_string(),
        }
    }
}

/// Why a command was refused. The kind is a stable, bounded name clients can match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is malformed (bad JSON, unknown command, missing field).
    InvalidRequest,
    /// The resulting config would be invalid; nothing changed.
    InvalidConfig,
    /// The change needs a restart (listeners, worker count).
    RestartRequired,
    NotFound,
    /// Conflicts with the current state (e.g. a rollout in progress).
    Conflict,
    /// The change could not reach every worker.
    Unavailable,
    /// The REST API token was missing or wrong.
    Unauthorized,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::RestartRequired => "restart_required",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Unauthorized => "unauthorized",
        }
    }

    /// The REST status for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::InvalidConfig => 422,
            ErrorKind::RestartRequired => 409,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Unavailable => 503,
            ErrorKind::Unauthorized => 401,
        }
    }
}

impl CommandError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CommandError {
        CommandError {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> CommandError {
        CommandError::new(ErrorKind::InvalidRequest, message)
    }
}

fn string_field(object: &Map<String, Value>, key: &str) -> Result<String, CommandError> {
    match object.get(key) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(CommandError::invalid_request(format!(
            "{key:?} must be a string, got {other}"
        ))),
        None => Err(CommandError::invalid_request(format!("missing {key:?}"))),
    }
}

fn optional_u64(object: &Map<String, Value>, key: &str) -> Result<Option<u64>, CommandError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            CommandError::invalid_request(format!("{key:?} must be a non-negative integer, got {value}"))
        }),
    }
}

fn weight_field(object: &Map<String, Value>) -> Result<Option<u32>, CommandError> {
    optional_u64(object, "weight")?
        .map(|weight| u32::try_from(weight).map_err(|_| CommandError::invalid_request("\"weight\" is too large")))
        .transpose()
}

/// Reads a command from a JSON object such as `{"cmd": "backend_add", "url": "http://127.0.0.1:9004"}`.
pub fn command_from_json(object: &Map<String, Value>) -> Result<Command, CommandError> {
    let name = string_field(object, "cmd")?;
    let command = match name.as_str() {
        "status" => Command::Status,
        "config_show" => Command::ConfigShow,
        "config_apply" => Command::ConfigApply {
            toml: string_field(object, "toml")?,
        },
        "config_diff" => Command::ConfigDiff {
            toml: string_field(object, "toml")?,
        },
        "reload" => Command::Reload,
        "backends" => Command::Backends,
        "backend_add" => Command::BackendAdd {
            url: string_field(object, "url")?,
            weight: weight_field(object)?,
            id: object.get("id").and_then(Value::as_str).map(str::to_owned),
        },
        "backend_remove" => Command::BackendRemove {
            id: string_field(object, "backend")?,
        },
        "backend_set" => Command::BackendSet {
            id: string_field(object, "backend")?,
            weight: weight_field(object)?.ok_or_else(|| CommandError::invalid_request("missing \"weight\""))?,
        },
        "backend_drain" => Command::BackendDrain {
            id: string_field(object, "backend")?,
        },
        "versions" => Command::Versions,
        "rollback" => Command::Rollback {
            version: optional_u64(object, "version")?,
        },
        "log_level" => Command::LogLevel {
            level: string_field(object, "level")?,
        },
        "rollout_start" => {
            let to = match object.get("to") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| CommandError::invalid_request("\"to\" must be a list of backend URLs"))?,
                _ => return Err(CommandError::invalid_request("\"to\" must be a list of backend URLs")),
            };
            let batch = optional_u64(object, "batch")?.unwrap_or(1).max(1) as usize;
            let interval = match object.get("interval") {
                None => Duration::from_secs(5),
                Some(Value::String(text)) => parse_duration(text)
                    .map_err(|reason| CommandError::invalid_request(format!("\"interval\": {reason}")))?,
                Some(other) => {
                    return Err(CommandError::invalid_request(format!(
                        "\"interval\" must be a duration string, got {other}"
                    )))
                }
            };
            Command::RolloutStart { to, batch, interval }
        }
        "rollout_status" => Command::RolloutStatus,
        "metrics" => Command::Metrics,
        "metrics_summary" => Command::MetricsSummary,
        "health" => Command::Health,
        "rollout_pause" => Command::RolloutPause,
        "rollout_resume" => Command::RolloutResume,
        "rollout_abort" => Command::RolloutAbort,
        other => return Err(CommandError::invalid_request(format!("unknown command {other:?}"))),
    };
    Ok(command)
}

/// The reply line for a request with optional `id`.
pub fn reply_json(id: Option<&Value>, result: &Result<Value, CommandError>) -> Value {
    let mut reply = match result {
        Ok(result) => json!({ "ok": true, "result": result }),
        Err(error) => {
            json!({ "ok": false, "error": { "kind": error.kind.as_str(), "message": error.message } })
        }
    };
    if let (Some(id), Some(object)) = (id, reply.as_object_mut()) {
        object.insert("id".to_string(), id.clone());
    }
    reply
}

/// Parses one request line into its id and command.
pub fn parse_request_line(line: &str) -> (Option<Value>, Result<Command, CommandError>) {
    let value: Value = match serde_json::from_str(line) {
        Ok(value) => value,
        Err(error) => {
            return (
                None,
                Err(CommandError::invalid_request(format!("malformed JSON: {error}"))),
            )
        }
    };
    let Some(object) = value.as_object() else {
        return (
            None,
            Err(CommandError::invalid_request("a request must be a JSON object")),
        );
    };
    (object.get("id").cloned(), command_from_json(object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_keeps_the_id() {
        let (id, command) =
            parse_request_line(r#"{"id": 7, "cmd": "backend_add", "url": "http://127.0.0.1:1", "weight": 3}"#);
        assert_eq!(id, Some(json!(7)));
        assert_eq!(
            command.unwrap(),
            Command::BackendAdd {
                url: "http://127.0.0.1:1".into(),
                weight: Some(3),
                id: None
            }
        );
    }

    #[test]
    fn refuses_malformed_requests_with_a_kind() {
        for line in [
            "{",
            "[1]",
            r#"{"cmd": 3}"#,
            r#"{"cmd": "fly"}"#,
            r#"{"cmd": "backend_set", "backend": "a"}"#,
        ] {
            let (_, command) = parse_request_line(line);
            assert_eq!(command.unwrap_err().kind, ErrorKind::InvalidRequest, "{line}");
        }
    }

    #[test]
    fn replies_echo_the_id() {
        let reply = reply_json(
            Some(&json!("x")),
            &Err(CommandError::new(ErrorKind::NotFound, "no backend b")),
        );
        assert_eq!(
            reply,
            json!({"ok": false, "error": {"kind": "not_found", "message": "no backend b"}, "id": "x"})
        );
    }
}
