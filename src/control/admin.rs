//! The admin REST API (`/api/v1/...`): the same commands as the control socket, as JSON over HTTP, for tools that
//! prefer HTTP. It runs on its own thread with blocking I/O (a handful of calls, never on the request path), one
//! request per connection. When a token is configured every call needs `Authorization: Bearer <token>`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crossbeam_channel::Sender;
use serde_json::{json, Value};

use super::command::{command_from_json, reply_json, Command, CommandError, ErrorKind, Source, MAX_REQUEST_BYTES};
use super::socket::dispatch;
use super::ControlRequest;
use crate::config::AdminConfig;
use crate::http::head::{parse_request, HeadLimits};
use crate::http::BodyFraming;

const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 16 * 1024,
    max_request_line: 8 * 1024,
    max_headers: 64,
};
const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn serve(config: &AdminConfig, requests: Sender<ControlRequest>) -> io::Result<()> {
    let token = config.token.clone();
    spawn_listener(config.listen, "admin API", move |stream| {
        let _ = serve_client(stream, &requests, token.as_deref());
    })
}

/// Serves `GET /metrics` (Prometheus text) and `GET /health` on the metrics listener.
pub fn serve_metrics(address: SocketAddr, requests: Sender<ControlRequest>) -> io::Result<()> {
    spawn_listener(address, "metrics", move |stream| {
        let _ = serve_metrics_client(stream, &requests);
    })
}

/// Accepts on `address` in a thread, handling each connection on a thread of its own.
fn spawn_listener(
    address: SocketAddr,
    name: &str,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) -> io::Result<()> {
    let listener = TcpListener::bind(address)?;
    tracing::info!(address = %listener.local_addr()?, "{name} listening");
    let handle = std::sync::Arc::new(handle);
    std::thread::Builder::new()
        .name(format!("corelb-{}", name.replace(' ', "-")))
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let handle = std::sync::Arc::clone(&handle);
                let _ = std::thread::Builder::new()
                    .name("corelb-http-client".into())
                    .spawn(move || handle(stream));
            }
        })?;
    Ok(())
}

fn write_response(stream: &mut TcpStream, status: u16, content_type: &str, extra: &str, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())
}

fn serve_metrics_client(mut stream: TcpStream, requests: &Sender<ControlRequest>) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let peer = stream
        .peer_addr()
        .map(|address| address.to_string())
        .unwrap_or_default();
    let request = match read_request(&mut stream) {
        Ok(request) => request,
        Err(error) => return write_response(&mut stream, 400, "text/plain", "", &format!("{}\n", error.message)),
    };
    let path = request.path.split('?').next().unwrap_or("");
    match (request.method.as_str(), path) {
        ("GET", "/metrics") => match dispatch(requests, Command::Metrics, Source::Api { peer }) {
            Ok(Value::String(text)) => {
                write_response(&mut stream, 200, "text/plain; version=0.0.4; charset=utf-8", "", &text)
            }
            Ok(_) | Err(_) => write_response(&mut stream, 503, "text/plain", "", "metrics unavailable\n"),
        },
        ("GET", "/health") => match dispatch(requests, Command::Health, Source::Api { peer }) {
            Ok(health) => {
                let status = if health["status"] == "ok" { 200 } else { 503 };
                write_response(&mut stream, status, "application/json", "", &format!("{health}\n"))
            }
            Err(error) => write_response(&mut stream, 503, "text/plain", "", &format!("{}\n", error.message)),
        },
        _ => write_response(&mut stream, 404, "text/plain", "", "try /metrics or /health\n"),
    }
}

struct ApiRequest {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// Appends what one read returns to `out`; the peer closing early is `closed`.
fn read_more(stream: &mut TcpStream, chunk: &mut [u8], out: &mut Vec<u8>, closed: &str) -> Result<(), CommandError> {
    let read = stream
        .read(chunk)
        .map_err(|error| CommandError::invalid_request(error.to_string()))?;
    if read == 0 {
        return Err(CommandError::invalid_request(closed));
    }
    out.extend_from_slice(&chunk[..read]);
    Ok(())
}

fn read_request(stream: &mut TcpStream) -> Result<ApiRequest, CommandError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head = loop {
        if let Some(head) =
            parse_request(&buf, &LIMITS).map_err(|error| CommandError::invalid_request(error.to_string()))?
        {
            break head;
        }
        read_more(stream, &mut chunk, &mut buf, "connection closed mid-request")?;
    };
    let length = match head.framing {
        BodyFraming::None => 0,
        BodyFraming::Length(length) if length as usize <= MAX_REQUEST_BYTES => length as usize,
        BodyFraming::Length(_) => return Err(CommandError::invalid_request("request body exceeds 1 MiB")),
        BodyFraming::Chunked | BodyFraming::UntilClose => {
            return Err(CommandError::invalid_request("send the body with Content-Length"))
        }
    };
    let mut body = buf[head.len..].to_vec();
    while body.len() < length {
        read_more(stream, &mut chunk, &mut body, "connection closed mid-body")?;
    }
    body.truncate(length);
    let text = |range: std::ops::Range<usize>| String::from_utf8_lossy(&buf[range]).into_owned();
    let authorization = head
        .fields
        .iter()
        .find(|field| buf[field.name.clone()].eq_ignore_ascii_case(b"authorization"))
        .map(|field| text(field.value.clone()));
    Ok(ApiRequest {
        method: text(head.method_range.clone()),
        path: text(head.target.clone()),
        authorization,
        body,
    })
}

fn json_body(body: &[u8]) -> Result<serde_json::Map<String, Value>, CommandError> {
    if body.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(CommandError::invalid_request("the body must be a JSON object")),
        Err(error) => Err(CommandError::invalid_request(format!("malformed JSON: {error}"))),
    }
}

/// Maps a method and path to a command, the same command the socket would run.
fn route(request: &ApiRequest) -> Result<Command, CommandError> {
    let path = request.path.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let object = || json_body(&request.body);
    let with = |object: Result<serde_json::Map<String, Value>, CommandError>, name: &str| {
        let mut object = object?;
        object.insert("cmd".to_string(), json!(name));
        command_from_json(&object)
    };
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["api", "v1", "status"]) => Ok(Command::Status),
        ("GET", ["api", "v1", "backends"]) => Ok(Command::Backends),
        ("POST", ["api", "v1", "backends"]) => with(object(), "backend_add"),
        ("PUT", ["api", "v1", "backends", id]) => {
            let mut object = object()?;
            if object.get("drain").and_then(Value::as_bool).unwrap_or(false) {
                Ok(Command::BackendDrain { id: id.to_string() })
            } else {
                object.insert("backend".to_string(), json!(id));
                with(Ok(object), "backend_set")
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
        ("POST", ["api", "v1", "rollback"]) => with(object(), "rollback"),
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

fn serve_client(mut stream: TcpStream, requests: &Sender<ControlRequest>, token: Option<&str>) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let peer = stream
        .peer_addr()
        .map(|address| address.to_string())
        .unwrap_or_default();
    let result = read_request(&mut stream).and_then(|request| {
        if !authorised(&request, token) {
            return Err(CommandError::new(
                ErrorKind::Unauthorized,
                "missing or wrong bearer token",
            ));
        }
        let command = route(&request)?;
        dispatch(requests, command, Source::Api { peer })
    });
    let status = match &result {
        Ok(_) => 200,
        Err(error) => error.kind.http_status(),
    };
    let extra = if status == 401 {
        "WWW-Authenticate: Bearer\r\n"
    } else {
        ""
    };
    let body = format!("{}\n", reply_json(None, &result));
    write_response(&mut stream, status, "application/json", extra, &body)
}
