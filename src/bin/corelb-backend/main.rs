//! `corelb-backend`: the example origin server for demos and tests. Answers every path with its id, echoes requests
//! on `/echo`, serves generated bodies of any size on `/bytes`, counts connections on `/stats`, holds requests to
//! `/hold` until `/control/release`, and can be made slow, failing or unhealthy from flags or, live, from requests
//! (`/control/latency?delay=…`, `/control/errors?rate=…&status=…`, `/control/health/fail`), so tests and demos can
//! misbehave it at will. It reads HTTP
//! with its own framing (`wire`), not corelb's parser, so the two check each other.

use std::cell::Cell;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::Parser;
use corelb::config::duration::parse_duration;
use corelb::net::{BufferedStream, Watchdog};
use monoio::net::{TcpListener, TcpStream};
use wire::{parse_head, write_chunk, Body, ChunkedReader, Head, LAST_CHUNK};

mod wire;

#[derive(Debug, Parser)]
#[command(name = "corelb-backend", about = "Example backend for corelb demos and tests")]
struct Args {
    /// Port to listen on (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value_t = 9001)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    address: std::net::IpAddr,
    /// Identity reported in bodies and in the X-Backend-Id header.
    #[arg(long, default_value = "1")]
    id: String,
    /// Latency added to every response, e.g. "50ms".
    #[arg(long, value_parser = parse_duration)]
    latency: Option<Duration>,
    /// Fraction of requests (0.0..=1.0) answered with `--error-status`, evenly spaced (0.5 fails every other one).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// The status of an injected failure.
    #[arg(long, default_value_t = 500)]
    error_status: u16,
    /// Start with /health failing.
    #[arg(long)]
    unhealthy: bool,
    /// Close a kept-alive connection after this long without a request, e.g. "200ms".
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    idle_timeout: Duration,
    /// Do not log each request.
    #[arg(long)]
    quiet: bool,
}

/// State shared by every connection (one thread, so plain cells).
struct Backend {
    id: String,
    latency: Cell<Option<Duration>>,
    errors: Cell<Errors>,
    healthy: Cell<bool>,
    quiet: bool,
    idle_timeout: Duration,
    connections: Cell<u64>,
    /// Requests served, not counting `/stats`, `/health` and `/control/...`.
    requests: Cell<u64>,
    /// Requests to `/control/release` so far: a request to `/hold` is answered once this has grown.
    releases: Cell<u64>,
    /// Requests held on `/hold` right now.
    held: Cell<u64>,
    /// Connections open now that have carried a counted request (not only `/stats`, `/health`, `/control/`),
    /// and the most open at once: what a proxy's connection limit is checked against.
    open: Cell<u64>,
    peak_open: Cell<u64>,
    /// Keeps the socket timeouts of every connection.
    watchdog: Rc<Watchdog>,
}

const IDLE: Duration = Duration::from_secs(120);

/// Injected failures: a `rate` of the requests answered with `status`, spaced evenly by a running debt (each request
/// adds the rate; a failure pays 1), so a test sees exactly the fraction asked for, with no random draw.
#[derive(Debug, Clone, Copy)]
struct Errors {
    rate: f64,
    status: u16,
    debt: f64,
}

impl Errors {
    /// Whether this request fails.
    fn next(&mut self) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        self.debt += self.rate;
        // A hair under 1 counts: tenths added ten times must make a failure.
        let fails = self.debt >= 1.0 - 1e-9;
        if fails {
            self.debt -= 1.0;
        }
        fails
    }
}

/// A status an injected failure may use.
fn failure_status(status: u16) -> bool {
    (400..=599).contains(&status)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.error_rate) {
        eprintln!("error: --error-rate must be between 0.0 and 1.0");
        return ExitCode::from(2);
    }
    if !failure_status(args.error_status) {
        eprintln!("error: --error-status must be between 400 and 599");
        return ExitCode::from(2);
    }
    let backend = Rc::new(Backend {
        id: args.id.clone(),
        latency: Cell::new(args.latency),
        errors: Cell::new(Errors {
            rate: args.error_rate,
            status: args.error_status,
            debt: 0.0,
        }),
        healthy: Cell::new(!args.unhealthy),
        quiet: args.quiet,
        idle_timeout: args.idle_timeout,
        connections: Cell::new(0),
        requests: Cell::new(0),
        releases: Cell::new(0),
        held: Cell::new(0),
        open: Cell::new(0),
        peak_open: Cell::new(0),
        watchdog: Watchdog::new(),
    });
    let address = SocketAddr::new(args.address, args.port);
    let runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let mut runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start event loop: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::bind(address) {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("error: cannot listen on {address}: {error}");
                return ExitCode::from(1);
            }
        };
        let local = listener.local_addr().unwrap_or(address);
        eprintln!("corelb-backend {} listening on {local}", backend.id);
        let _ = std::io::stderr().flush();
        monoio::spawn(Rc::clone(&backend.watchdog).run());
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    backend.connections.set(backend.connections.get() + 1);
                    monoio::spawn(serve(Rc::clone(&backend), stream));
                }
                Err(error) => {
                    eprintln!("accept failed: {error}");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

/// The status to answer this request with when it is one of the injected failures.
fn inject_failure(backend: &Backend) -> Option<u16> {
    let mut errors = backend.errors.get();
    let fails = errors.next();
    backend.errors.set(errors);
    fails.then_some(errors.status)
}

fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Counts a connection among the open ones from its first counted request until it closes.
struct OpenConnection<'a> {
    backend: &'a Backend,
    counted: bool,
}

impl OpenConnection<'_> {
    fn count(&mut self) {
        if !self.counted {
            self.counted = true;
            let open = self.backend.open.get() + 1;
            self.backend.open.set(open);
            self.backend.peak_open.set(self.backend.peak_open.get().max(open));
        }
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.backend.open.set(self.backend.open.get() - 1);
        }
    }
}

async fn serve(backend: Rc<Backend>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut connection = BufferedStream::new(stream, &backend.watchdog);
    let mut open = OpenConnection {
        backend: &backend,
        counted: false,
    };
    loop {
        let head = loop {
            match parse_head(connection.buffered()) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(error) => {
                    let body = format!("bad request: {error}\n");
                    let response = respond(&backend.id, 400, "Bad Request", &[], body.as_bytes(), true);
                    let _ = connection.write_all(response, IDLE).await;
                    return;
                }
            }
            let wait = if connection.buffered().is_empty() {
                backend.idle_timeout
            } else {
                IDLE
            };
            match connection.fill(wait).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        connection.consume(head.len);
        let body_length = match read_body(&mut connection, head.body).await {
            Some(length) => length,
            None => return,
        };
        let (target, method) = (&head.target, &head.method);
        // Asking for figures, flipping a switch or a health probe is not a request a test counts.
        if !(target.starts_with("/stats") || target.starts_with("/control/") || target.starts_with("/health")) {
            backend.requests.set(backend.requests.get() + 1);
            open.count();
        }
        if !backend.quiet {
            eprintln!("backend {} {method} {target} body={body_length}", backend.id);
        }
        let mut delay = backend.latency.get();
        if let Some(extra) = query_param(target, "delay").and_then(|value| parse_duration(value).ok()) {
            delay = Some(extra);
        }
        if let Some(delay) = delay {
            monoio::time::sleep(delay).await;
        }
        if target.split('?').next() == Some("/hold") {
            hold(&backend).await;
        }
        let close = head.close || target.starts_with("/close");
        let keep_going = answer(&backend, &mut connection, &head, body_length, close).await;
        if !keep_going || close {
            return;
        }
    }
}

/// Waits for the next request to `/control/release`: a test holds requests in flight as long as it needs, with
/// no timing to guess.
async fn hold(backend: &Backend) {
    let arrived_at = backend.releases.get();
    backend.held.set(backend.held.get() + 1);
    while backend.releases.get() == arrived_at {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    backend.held.set(backend.held.get() - 1);
}

/// Reads and counts a request body. `None` when the connection failed or the body is malformed.
async fn read_body(connection: &mut BufferedStream, body: Body) -> Option<u64> {
    match body {
        Body::None => Some(0),
        Body::Length(length) => {
            let mut remaining = length;
            connection.reserve_for_body();
            while remaining > 0 {
                if connection.buffered().is_empty() && connection.fill(IDLE).await.ok()? == 0 {
                    return None;
                }
                let take = (connection.buffered().len() as u64).min(remaining) as usize;
                connection.consume(take);
                remaining -= take as u64;
            }
            Some(length)
        }
        Body::Chunked => {
            let mut reader = ChunkedReader::default();
            connection.reserve_for_body();
            loop {
                let used = reader.read(connection.buffered()).ok()?;
                connection.consume(used);
                if reader.is_done() {
                    return Some(reader.data);
                }
                if connection.fill(IDLE).await.ok()? == 0 {
                    return None;
                }
            }
        }
    }
}

fn respond_json(id: &str, body: &str, close: bool) -> Vec<u8> {
    respond(
        id,
        200,
        "OK",
        &[("Content-Type", "application/json".into())],
        body.as_bytes(),
        close,
    )
}

fn respond(id: &str, status: u16, reason: &str, headers: &[(&str, String)], body: &[u8], close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nX-Backend-Id: {id}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            character if (character as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", character as u32)),
            character => out.push(character),
        }
    }
    out.push('"');
    out
}

async fn answer(
    backend: &Backend,
    connection: &mut BufferedStream,
    head: &Head,
    body_length: u64,
    close: bool,
) -> bool {
    let id = &backend.id;
    let (target, method) = (head.target.as_str(), head.method.as_str());
    let path = target.split('?').next().unwrap_or("/");
    let forced_status = query_param(target, "status").and_then(|value| value.parse::<u16>().ok());
    let response = if path == "/health" {
        if backend.healthy.get() {
            respond(id, 200, "OK", &[], b"ok\n", close)
        } else {
            respond(id, 503, "Service Unavailable", &[], b"unhealthy\n", close)
        }
    } else if path == "/control/release" {
        backend.releases.set(backend.releases.get() + 1);
        respond(id, 200, "OK", &[], b"released\n", close)
    } else if path == "/control/health/fail" || path == "/control/health/ok" {
        backend.healthy.set(path.ends_with("/ok"));
        respond(id, 200, "OK", &[], b"switched\n", close)
    } else if path == "/control/latency" {
        let delay = query_param(target, "delay").and_then(|value| parse_duration(value).ok());
        backend.latency.set(delay.filter(|delay| !delay.is_zero()));
        respond(id, 200, "OK", &[], b"switched\n", close)
    } else if path == "/control/errors" {
        let mut errors = backend.errors.get();
        let rate = query_param(target, "rate").and_then(|value| value.parse::<f64>().ok());
        errors.rate = rate.filter(|rate| (0.0..=1.0).contains(rate)).unwrap_or(0.0);
        if let Some(status) = query_param(target, "status").and_then(|value| value.parse::<u16>().ok()) {
            errors.status = if failure_status(status) { status } else { 500 };
        }
        errors.debt = 0.0;
        backend.errors.set(errors);
        respond(id, 200, "OK", &[], b"switched\n", close)
    } else if let Some(status) = (path != "/stats").then(|| inject_failure(backend)).flatten() {
        respond(id, status, "Injected Failure", &[], b"injected failure\n", close)
    } else if let Some(status) = forced_status.filter(|status| (200..=599).contains(status)) {
        respond(
            id,
            status,
            "Status",
            &[],
            format!("status {status}\n").as_bytes(),
            close,
        )
    } else if path == "/echo" {
        let headers: Vec<String> = head
            .fields
            .iter()
            .map(|(name, value)| format!("[{},{}]", json_string(name), json_string(value)))
            .collect();
        let version = head.version;
        let body = format!(
            "{{\"id\":{},\"method\":{},\"path\":{},\"version\":\"{version}\",\"headers\":[{}],\"body_length\":{body_length}}}\n",
            json_string(id),
            json_string(method),
            json_string(target),
            headers.join(",")
        );
        respond_json(id, &body, close)
    } else if path == "/stats" {
        let body = format!(
            "{{\"id\":{},\"connections\":{},\"requests\":{},\"held\":{},\"open\":{},\"peak_open\":{}}}\n",
            json_string(id),
            backend.connections.get(),
            backend.requests.get(),
            backend.held.get(),
            backend.open.get(),
            backend.peak_open.get()
        );
        respond_json(id, &body, close)
    } else if path == "/bytes" {
        let length: u64 = query_param(target, "n")
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        let chunked = query_param(target, "chunked") == Some("1");
        return send_bytes(id, connection, length, chunked, head.method == "HEAD", close).await;
    } else {
        let body = format!("backend {id}\n");
        respond(
            id,
            200,
            "OK",
            &[("X-Body-Length", body_length.to_string())],
            body.as_bytes(),
            close,
        )
    };
    connection.write_all(response, IDLE).await.0.is_ok()
}

/// Streams `length` generated bytes (a repeating alphabet), framed by Content-Length or chunked.
async fn send_bytes(
    id: &str,
    connection: &mut BufferedStream,
    length: u64,
    chunked: bool,
    head_only: bool,
    close: bool,
) -> bool {
    const BLOCK: usize = 64 * 1024;
    let mut out = Vec::with_capacity(BLOCK + 64);
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nX-Backend-Id: {id}\r\nContent-Type: application/octet-stream\r\n"
    );
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    } else {
        let _ = write!(out, "Content-Length: {length}\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if head_only {
        return connection.write_all(out, IDLE).await.0.is_ok();
    }
    let pattern: Vec<u8> = (0..BLOCK).map(|index| b'a' + (index % 26) as u8).collect();
    let mut remaining = length;
    loop {
        let take = remaining.min(BLOCK as u64) as usize;
        if chunked {
            write_chunk(&mut out, &pattern[..take]);
            if take as u64 == remaining {
                out.extend_from_slice(LAST_CHUNK);
            }
        } else {
            out.extend_from_slice(&pattern[..take]);
        }
        remaining -= take as u64;
        let (result, buf) = connection.write_all(out, IDLE).await;
        if result.is_err() {
            return false;
        }
        out = buf;
        out.clear();
        if remaining == 0 {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(rate: f64, requests: usize) -> Vec<bool> {
        let mut errors = Errors {
            rate,
            status: 503,
            debt: 0.0,
        };
        (0..requests).map(|_| errors.next()).collect()
    }

    #[test]
    fn injected_failures_are_exactly_the_rate_and_evenly_spaced() {
        assert_eq!(failures(0.5, 6), [false, true, false, true, false, true]);
        assert_eq!(failures(0.1, 100).iter().filter(|failed| **failed).count(), 10);
        assert!(failures(1.0, 5).iter().all(|failed| *failed));
        assert!(!failures(0.0, 5).iter().any(|failed| *failed));
    }
}
