//! The control plane's vocabulary. Socket lines, REST calls, file reloads and SIGHUP all become a [`Command`]; every
//! edit goes through one pure reducer (`control::state::apply`) and one way of a change (`control::change`), so
//! every path validates and applies a change the same way.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};

/// Longest control request line or REST body accepted.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// A control command, as `ctl`, the socket server and the admin API all speak it: one type, serialised by serde, so
/// each command's name and fields are spelled here only (`{"cmd": "backend_add", "url": ...}` on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
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
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<u32>,
        /// The new backend's id. On the wire it shares its key with the request id replies echo, so a value
        /// that is not a string is a request id only.
        #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "string_only")]
        id: Option<String>,
    },
    BackendRemove {
        #[serde(rename = "backend")]
        id: String,
    },
    BackendSet {
        #[serde(rename = "backend")]
        id: String,
        weight: u32,
    },
    BackendDrain {
        #[serde(rename = "backend")]
        id: String,
    },
    Versions,
    Rollback {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    LogLevel {
        level: String,
    },
    RolloutStart {
        to: Vec<String>,
        /// Backends replaced per step (0 is taken as 1).
        #[serde(default = "one", deserialize_with = "at_least_one")]
        batch: usize,
        #[serde(default = "five_seconds", with = "duration_text")]
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
    /// Read every TLS frontend's certificate files again; a broken one is refused and the old one stays.
    CertReload,
    /// The certificates in force: per frontend, each one's files, names and expiry.
    Certificates,
}

fn one() -> usize {
    1
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

fn at_least_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    Ok(usize::deserialize(deserializer)?.max(1))
}

fn string_only<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Value>::deserialize(deserializer)?.and_then(|value| value.as_str().map(str::to_owned)))
}

/// Durations travel in the config file's spelling ("5s", "250ms").
mod duration_text {
    use std::time::Duration;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::config::duration::{format_duration, parse_duration};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*duration))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map_err(D::Error::custom)
    }
}

impl Command {
    /// The command's name on the wire, as serde spells it.
    pub fn name(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|value| value.get("cmd")?.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The request line for this command, as `ctl` sends it.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
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
                | Command::Certificates
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
    /// The certificate files changed on disk (`[tls] watch`).
    Watch,
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
            Source::Watch => "certificate watch".to_string(),
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

/// Reads a command from a JSON object such as `{"cmd": "backend_add", "url": "http://127.0.0.1:9004"}`. Keys a
/// command does not use (the request `id`) are ignored.
pub fn command_from_json(object: &Map<String, Value>) -> Result<Command, CommandError> {
    serde_json::from_value(Value::Object(object.clone()))
        .map_err(|error| CommandError::invalid_request(format!("bad request: {error}")))
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
    fn every_command_reads_back_as_itself() {
        let commands = [
            Command::Status,
            Command::ConfigApply { toml: "x = 1".into() },
            Command::BackendAdd {
                url: "http://127.0.0.1:1".into(),
                weight: None,
                id: Some("b".into()),
            },
            Command::BackendSet {
                id: "b".into(),
                weight: 7,
            },
            Command::Rollback { version: None },
            Command::RolloutStart {
                to: vec!["http://127.0.0.1:2".into()],
                batch: 2,
                interval: Duration::from_millis(250),
            },
            Command::RolloutAbort,
            Command::MetricsSummary,
        ];
        for command in commands {
            let wire = command.to_json();
            let object = wire.as_object().unwrap();
            assert_eq!(command_from_json(object).unwrap(), command, "{wire}");
            assert_eq!(object["cmd"], command.name().as_str());
        }
        assert_eq!(
            Command::BackendDrain { id: "b".into() }.to_json(),
            json!({"cmd": "backend_drain", "backend": "b"})
        );
        assert_eq!(
            Command::RolloutStart {
                to: vec![],
                batch: 1,
                interval: Duration::from_secs(5)
            }
            .to_json()["interval"],
            "5s"
        );
    }

    #[test]
    fn defaults_fill_what_a_request_leaves_out() {
        let (_, command) = parse_request_line(r#"{"cmd": "rollout_start", "to": ["http://127.0.0.1:2"], "batch": 0}"#);
        assert_eq!(
            command.unwrap(),
            Command::RolloutStart {
                to: vec!["http://127.0.0.1:2".into()],
                batch: 1,
                interval: Duration::from_secs(5)
            }
        );
        let (_, bad) = parse_request_line(r#"{"cmd": "rollout_start", "to": [], "interval": "soon"}"#);
        assert_eq!(bad.unwrap_err().kind, ErrorKind::InvalidRequest);
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
