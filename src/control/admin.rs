//! The admin REST API (`/api/v1/...`) and the metrics listener (`/metrics`, `/health`): the same commands as the
//! control socket, as JSON over HTTP, one request per connection. Every API call needs `Authorization: Bearer
//! <token>`. This module turns received bytes into a command and a result into response bytes; the connections
//! themselves are served by the shared loop in [`super::listeners`].

use serde::Deserialize;
use serde_json::Value;

use super::command::{reply_json, Command, CommandError, ErrorKind, Source, MAX_REQUEST_BYTES};
use crate::http::head::{parse_request, HeadLimits};
use crate::http::BodyFraming;

const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 16 * 1024,
    max_request_line: 8 * 1024,
    max_headers: 64,
};

/// What the bytes of one HTTP connection call for.
pub enum Exchange {
    /// The request has not arrived whole yet.
    Incomplete,
    /// Answer at once, without the control thread.
    Respond(Vec<u8>),
    /// Run `command` on the control thread, then render its result as `answer` says.
    Dispatch {
        command: Command,
        source: Source,
        answer: Answer,
    },
}

/// How a command's result becomes an HTTP response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    /// Prometheus text.
    Metrics,
    /// corelb's health as JSON; 200 when it can serve, 503 otherwise.
    Health,
    /// The API's JSON reply, with the status the error kind maps to.
    Api,
}

fn http_response(status: u16, content_type: &str, extra: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A request on the metrics listener.
pub fn metrics_exchange(input: &[u8], peer: &str) -> Exchange {
    let request = match parse_api_request(input) {
        Ok(Some(request)) => request,
        Ok(None) => return Exchange::Incomplete,
        Err(error) => return Exchange::Respond(http_response(400, "text/plain", "", &format!("{}\n", error.message))),
    };
    let path = request.path.split('?').next().unwrap_or("");
    let (command, answer) = match (request.method.as_str(), path) {
        ("GET", "/metrics") => (Command::Metrics, Answer::Metrics),
        ("GET", "/health") => (Command::Health, Answer::Health),
        _ => return Exchange::Respond(http_response(404, "text/plain", "", "try /metrics or /health\n")),
    };
    Exchange::Dispatch {
        command,
        source: Source::Api { peer: peer.to_string() },
        answer,
    }
}

/// A request on the admin API listener.
pub fn admin_exchange(input: &[u8], peer: &str, token: Option<&str>) -> Exchange {
    let command = match parse_api_request(input) {
        Ok(None) => return Exchange::Incomplete,
        Ok(Some(request)) if !authorised(&request, token) => Err(CommandError::new(
            ErrorKind::Unauthorized,
            "missing or wrong bearer token",
        )),
        Ok(Some(request)) => route(&request),
        Err(error) => Err(error),
    };
    match command {
        Ok(command) => Exchange::Dispatch {
            command,
            source: Source::Api { peer: peer.to_string() },
            answer: Answer::Api,
        },
        Err(error) => Exchange::Respond(render(Answer::Api, &Err(error))),
    }
}

/// The response for a command's result.
pub fn render(answer: Answer, result: &Result<Value, CommandError>) -> Vec<u8> {
    match answer {
        Answer::Metrics => match result {
            Ok(Value::String(text)) => http_response(200, "text/plain; version=0.0.4; charset=utf-8", "", text),
            Ok(_) | Err(_) => http_response(503, "text/plain", "", "metrics unavailable\n"),
        },
        Answer::Health => match result {
            Ok(health) => {
                let status = if health["status"] == "ok" { 200 } else { 503 };
                http_response(status, "application/json", "", &format!("{health}\n"))
            }
            Err(error) => http_response(503, "text/plain", "", &format!("{}\n", error.message)),
        },
        Answer::Api => {
            let status = match result {
                Ok(_) => 200,
                Err(error) => error.kind.http_status(),
            };
            let extra = if status == 401 {
                "WWW-Authenticate: Bearer\r\n"
            } else {
                ""
            };
            http_response(
                status,
                "application/json",
                extra,
                &format!("{}\n", reply_json(None, result)),
            )
        }
    }
}

struct ApiRequest {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// Parses a whole request from `input`; `None` while more bytes are needed.
fn parse_api_request(input: &[u8]) -> Result<Option<ApiRequest>, CommandError> {
    let Some(head) = parse_request(input, &LIMITS).map_err(|error| CommandError::invalid_request(error.to_string()))?
    else {
        return Ok(None);
    };
    let length = match head.framing {
        BodyFraming::None => 0,
        BodyFraming::Length(length) if length as usize <= MAX_REQUEST_BYTES => length as usize,
        BodyFraming::Length(_) => return Err(CommandError::invalid_request("request body exceeds 1 MiB")),
        BodyFraming::Chunked | BodyFraming::UntilClose => {
            return Err(CommandError::invalid_request("send the body with Content-Length"))
        }
    };
    let Some(body) = input.get(head.len..head.len + length) else {
        return Ok(None);
    };
    let text = |range: std::ops::Range<usize>| String::from_utf8_lossy(&input[range]).into_owned();
    let authorization = head
        .fields
        .iter()
        .find(|field| input[field.name.clone()].eq_ignore_ascii_case(b"authorization"))
        .map(|field| text(field.value.clone()));
    Ok(Some(ApiRequest {
        method: text(head.method_range.clone()),
        path: text(head.target.clone()),
        authorization,
        body: body.to_vec(),
    }))
}

/// The body of `POST /api/v1/backends`.
#[derive(Deserialize)]
struct NewBackend {
    url: String,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    id: Option<String>,
}

/// The body of `PUT /api/v1/backends/{id}`: a new weight, or `"drain": true`.
#[derive(Deserialize)]
struct BackendChange {
    #[serde(default)]
    drain: bool,
    #[serde(default)]
    weight: Option<u32>,
}

/// The body of `POST /api/v1/rollback` (empty for the previous version).
#[derive(Deserialize)]
struct RollbackTo {
    #[serde(default)]
    version: Option<u64>,
}

/// A JSON body read into `T`; an empty body is read as `{}`.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, CommandError> {
    let body = if body.is_empty() { b"{}".as_slice() } else { body };
    serde_json::from_slice(body).map_err(|error| CommandError::invalid_request(format!("bad request body: {error}")))
}

/// Maps a method and path to a command, the same command the socket would run.
fn route(request: &ApiRequest) -> Result<Command, CommandError> {
    let path = request.path.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["api", "v1", "status"]) => Ok(Command::Status),
        ("GET", ["api", "v1", "backends"]) => Ok(Command::Backends),
        ("POST", ["api", "v1", "backends"]) => {
            let NewBackend { url, weight, id } = json_body(&request.body)?;
            Ok(Command::BackendAdd { url, weight, id })
        }
        ("PUT", ["api", "v1", "backends", id]) => {
            let id = id.to_string();
            match json_body(&request.body)? {
                BackendChange { drain: true, .. } => Ok(Command::BackendDrain { id }),
                BackendChange {
                    weight: Some(weight), ..
                } => Ok(Command::BackendSet { id, weight }),
                BackendChange { weight: None, .. } => Err(CommandError::invalid_request(
                    "the body needs \"weight\" or \"drain\": true",
                )),
            }
        }
        ("DELETE", ["api", "v1", "backends", id]) => Ok(Command::BackendRemove { id: id.to_string() }),
        ("GET", ["api", "v1", "config"]) => Ok(Command::ConfigShow),
        ("POST", ["api", "v1", "config"]) => {
            let toml = String::from_utf8(request.body.clone())
                .map_err(|_| CommandError::invalid_request("the config must be UTF-8 TOML"))?;
            Ok(Command::ConfigApply { toml })
        }
        ("GET", ["api", "v1", "versions"]) => Ok(Command::Versions),
        ("GET", ["api", "v1", "certificates"]) => Ok(Command::Certificates),
        ("POST", ["api", "v1", "certificates", "reload"]) => Ok(Command::CertReload),
        ("POST", ["api", "v1", "rollback"]) => {
            let RollbackTo { version } = json_body(&request.body)?;
            Ok(Command::Rollback { version })
        }
        _ => Err(CommandError::new(
            ErrorKind::NotFound,
            format!("no such endpoint: {} {path}", request.method),
        )),
    }
}

fn authorised(request: &ApiRequest, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let Some(given) = request
        .authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Constant-time comparison: the token is a secret.
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn respond_status(exchange: Exchange) -> String {
        match exchange {
            Exchange::Respond(bytes) => String::from_utf8_lossy(&bytes).lines().next().unwrap_or("").to_string(),
            Exchange::Incomplete => "incomplete".into(),
            Exchange::Dispatch { command, .. } => format!("dispatch {command:?}"),
        }
    }

    #[test]
    fn a_request_is_dispatched_only_once_its_whole_body_is_there() {
        let request = b"POST /api/v1/backends HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nContent-Length: 27\r\n\r\n{\"url\": \"http://1.2.3.4:5\"}";
        for cut in [10, 60, request.len() - 1] {
            assert_eq!(
                respond_status(admin_exchange(&request[..cut], "p", Some("t"))),
                "incomplete"
            );
        }
        assert!(respond_status(admin_exchange(request, "p", Some("t"))).starts_with("dispatch BackendAdd"));
    }

    #[test]
    fn a_call_without_the_token_is_refused_before_it_is_routed() {
        let request = b"GET /api/v1/status HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            respond_status(admin_exchange(request, "p", Some("t"))),
            "HTTP/1.1 401 Unauthorized"
        );
        let wrong = b"GET /api/v1/status HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer u\r\n\r\n";
        assert_eq!(
            respond_status(admin_exchange(wrong, "p", Some("t"))),
            "HTTP/1.1 401 Unauthorized"
        );
    }

    #[test]
    fn the_metrics_listener_knows_two_paths() {
        assert_eq!(
            respond_status(metrics_exchange(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", "p")),
            "dispatch Metrics"
        );
        assert_eq!(
            respond_status(metrics_exchange(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n", "p")),
            "dispatch Health"
        );
        assert_eq!(
            respond_status(metrics_exchange(b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n", "p")),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            respond_status(metrics_exchange(
                b"GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
                "p"
            )),
            "HTTP/1.1 400 Bad Request"
        );
    }
}
