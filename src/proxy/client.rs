//! One client connection: read a request head, forward it, repeat while both sides keep the connection alive.
//! Requests on one connection are handled in order, so pipelined requests are answered in order. Every request,
//! forwarded, refused or answered locally, is counted in the worker's metrics and written to the access log here.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Instant, SystemTime};

use monoio::net::TcpStream;

use super::error::{reason_phrase, ProxyError, Side};
use super::forward::{forward, Disposition, ExchangeStats, Request};
use crate::access_log::{format_entry, Entry};
use crate::http::head::{parse_request, RequestHead, Version};
use crate::http::rewrite::{write_local_response, LocalResponse};
use crate::http::Method;
use crate::metrics::RequestRecord;
use crate::net::BufferedStream;
use crate::shard::request_id::is_well_formed;
use crate::shard::{BackendState, Generation, WorkerContext};

/// Initial read buffer of a client connection: most request heads fit; it grows when one does not.
const CLIENT_BUFFER: usize = 2048;
/// A head-writing buffer grown past this (a large first write) is dropped between requests.
const SCRATCH_IDLE_MAX: usize = 16 * 1024;

/// What a client connection keeps between requests: who it is and buffers reused by every request.
struct Connection {
    context: Rc<WorkerContext>,
    peer: SocketAddr,
    /// `peer`'s address as text, for `X-Forwarded-For`, formatted once.
    peer_ip: String,
    frontend: usize,
    /// The current request's head, copied out of the read buffer.
    head_bytes: Vec<u8>,
    /// Heads being written, and body bytes on their way.
    scratch: Vec<u8>,
    request_id: String,
}

/// How a connection goes on after a request.
enum Next {
    KeepAlive,
    Close,
    /// Close after draining what the client still sends, so the response just written is not destroyed by a reset.
    LingerClose,
}

/// Serves one accepted client connection until it closes. The task lives as long as the connection, mostly waiting
/// for the next request, so it holds only what is kept between requests and the wait for a head; everything a
/// request needs while in flight lives in a boxed future freed when the request ends (10,000 idle keep-alive
/// connections cost what their waits cost).
pub async fn serve_client(
    context: Rc<WorkerContext>,
    stream: TcpStream,
    peer: SocketAddr,
    frontend: usize,
    slot: crate::net::slots::Slot,
) {
    let _guard = context.connection_opened(frontend, slot);
    let _ = stream.set_nodelay(true);
    let mut client = BufferedStream::with_capacity(stream, &context.watchdog, CLIENT_BUFFER);
    let mut connection = Connection {
        peer_ip: peer.ip().to_string(),
        context,
        peer,
        frontend,
        head_bytes: Vec::new(),
        scratch: Vec::new(),
        request_id: String::new(),
    };
    let mut first = true;
    loop {
        let generation = connection.context.generation();
        let next = match read_request_head(&connection.context, &generation, &mut client, first).await {
            Ok(Some(head)) => Box::pin(serve_request(&mut connection, &mut client, head)).await,
            Ok(None) => Next::Close,
            Err(error) => Box::pin(refuse_head(&mut connection, &mut client, &generation, error)).await,
        };
        first = false;
        match next {
            Next::KeepAlive => {
                client.shrink_when_idle(CLIENT_BUFFER);
                if connection.scratch.capacity() > SCRATCH_IDLE_MAX {
                    connection.scratch = Vec::new();
                }
            }
            Next::Close => return,
            Next::LingerClose => {
                Box::pin(linger_close(client)).await;
                return;
            }
        }
    }
}

/// Answers a head that could not be read (malformed, too large, timed out); the connection then closes.
async fn refuse_head(
    connection: &mut Connection,
    client: &mut BufferedStream,
    generation: &Generation,
    error: ProxyError,
) -> Next {
    let context = &connection.context;
    tracing::debug!(peer = %connection.peer, category = error.label(), error = %error, "refused request");
    context.request_ids.generate(&mut connection.request_id);
    let started = Instant::now();
    let sent = respond_with_error(
        client,
        generation,
        &error,
        ReplyTo {
            version: Version::Http11,
            head_only: false,
        },
        true,
        &connection.request_id,
        &mut connection.scratch,
    )
    .await;
    let outcome = Outcome {
        status: error.status().unwrap_or(0),
        error: Some(error.label()),
        sent,
        received: client.buffered().len() as u64,
        ..Outcome::new(started)
    };
    finish(
        context,
        generation,
        connection.frontend,
        connection.peer,
        None,
        &[],
        &connection.request_id,
        &outcome,
    );
    Next::LingerClose
}

/// Serves one request whose head is buffered in `client`: answers it locally, refuses it, or forwards it.
async fn serve_request(connection: &mut Connection, client: &mut BufferedStream, head: RequestHead) -> Next {
    let started = Instant::now();
    let Connection {
        context,
        peer,
        peer_ip,
        frontend,
        head_bytes,
        scratch,
        request_id,
    } = connection;
    let (peer, frontend) = (*peer, *frontend);
    // The wait for this head may have spanned a config change: the request runs on the config current now.
    let generation = context.generation();
    head_bytes.clear();
    head_bytes.extend_from_slice(&client.buffered()[..head.len]);
    client.consume(head.len);
    choose_request_id(context, &head, head_bytes, request_id);
    let log = |outcome: &Outcome, request_id: &str| {
        finish(
            context,
            &generation,
            frontend,
            peer,
            Some(&head),
            head_bytes,
            request_id,
            outcome,
        )
    };

    if is_health_request(&generation, &head, head_bytes) {
        let close = head.close || context.draining();
        let sent = answer_health(client, &generation, &head, close, request_id, scratch).await;
        let outcome = Outcome {
            status: if sent.1 { 200 } else { 503 },
            sent: sent.0,
            received: head.len as u64,
            ..Outcome::new(started)
        };
        log(&outcome, request_id);
        return if close { Next::Close } else { Next::KeepAlive };
    }

    let limited = context.rate_limit.borrow_mut().check(frontend, peer.ip(), started);
    if let Some((decision, limit)) = limited {
        context.with_metrics(|metrics| metrics.rate_limited(frontend, decision.allowed));
        if !decision.allowed {
            // Refused before any backend is chosen: a limited request never reaches one.
            let close = head.close || !head.framing.is_empty() || context.draining();
            let sent =
                respond_rate_limited(client, &generation, &head, &decision, limit, close, request_id, scratch).await;
            let outcome = Outcome {
                status: 429,
                error: Some(ProxyError::RateLimited.label()),
                sent,
                received: head.len as u64,
                ..Outcome::new(started)
            };
            log(&outcome, request_id);
            return if close { Next::LingerClose } else { Next::KeepAlive };
        }
    }

    let request = Request {
        head_bytes,
        head: &head,
        peer,
        peer_ip,
        request_id,
        started,
    };
    let mut stats = ExchangeStats::default();
    let result = forward(context, &generation, client, request, scratch, &mut stats).await;
    let mut outcome = Outcome {
        status: stats.status.unwrap_or(0),
        upstream: stats.upstream,
        sent: stats.sent,
        received: head.len as u64 + stats.body_received,
        backend: stats.backend.take(),
        ..Outcome::new(started)
    };
    let mut linger = false;
    let keep = match result {
        Ok(disposition) => {
            linger = disposition == Disposition::Linger;
            disposition == Disposition::KeepAlive
        }
        Err(failure) => {
            let error = &failure.error;
            match (error.side(), &outcome.backend) {
                (Side::Upstream | Side::Proxy, Some(backend)) => context.warn_backend(backend, error, "request failed"),
                (Side::Upstream | Side::Proxy, None) => {
                    if let Some(suppressed) = context.warnings.open(Instant::now()) {
                        tracing::warn!(%peer, category = error.label(), error = %error, suppressed, "request failed");
                    }
                }
                (Side::Client, _) => {
                    tracing::debug!(%peer, category = error.label(), error = %error, "client failed")
                }
            }
            outcome.error = Some(error.label());
            let keep = failure.request_consumed && !failure.response_started && !head.close && !context.draining();
            if !failure.response_started {
                outcome.sent += respond_with_error(
                    client,
                    &generation,
                    error,
                    ReplyTo {
                        version: head.version,
                        // A HEAD response has no body, however the error reads: the connection stays in sync.
                        head_only: head.method == Method::Head,
                    },
                    !keep,
                    request_id,
                    scratch,
                )
                .await;
                outcome.status = error.status().unwrap_or(0);
            }
            if !keep && !failure.response_started {
                log(&outcome, request_id);
                return Next::LingerClose;
            }
            keep
        }
    };
    log(&outcome, request_id);
    if keep && !context.draining() {
        Next::KeepAlive
    } else if linger || !client.buffered().is_empty() {
        // Pipelined requests we will not answer: closing now would reset the connection and could destroy the
        // response just sent.
        Next::LingerClose
    } else {
        Next::Close
    }
}

/// How one request ended, for metrics and the access log.
struct Outcome {
    started: Instant,
    status: u16,
    error: Option<&'static str>,
    upstream: Option<std::time::Duration>,
    sent: u64,
    received: u64,
    /// The backend involved.
    backend: Option<Rc<BackendState>>,
}

impl Outcome {
    fn new(started: Instant) -> Outcome {
        Outcome {
            started,
            status: 0,
            error: None,
            upstream: None,
            sent: 0,
            received: 0,
            backend: None,
        }
    }
}

/// Answers 429 with `Retry-After` and the `RateLimit-*` fields (IETF draft). Returns the bytes sent.
#[allow(clippy::too_many_arguments)]
async fn respond_rate_limited(
    client: &mut BufferedStream,
    generation: &Generation,
    head: &RequestHead,
    decision: &crate::ratelimit::Decision,
    limit: f64,
    close: bool,
    request_id: &str,
    scratch: &mut Vec<u8>,
) -> u64 {
    let reset = decision.reset_after.as_secs_f64().ceil().max(1.0) as u64;
    let extra_fields = format!(
        "Retry-After: {reset}\r\nRateLimit-Limit: {}\r\nRateLimit-Remaining: {}\r\nRateLimit-Reset: {reset}\r\n",
        limit.round() as u64,
        decision.remaining
    );
    let response = LocalResponse {
        status: 429,
        reason: reason_phrase(429),
        content_type: "text/plain; charset=utf-8",
        body: "429 Too Many Requests: rate_limited\n",
        close,
        version: head.version,
        request_id: request_id.as_bytes(),
        head_only: head.method == Method::Head,
        extra_fields: &extra_fields,
    };
    send_local(client, generation, &response, scratch).await
}

/// Keeps a well-formed incoming `X-Request-Id`, or makes one.
fn choose_request_id(context: &WorkerContext, head: &RequestHead, head_bytes: &[u8], request_id: &mut String) {
    let incoming = head
        .fields
        .iter()
        .find(|field| head_bytes[field.name.clone()].eq_ignore_ascii_case(b"x-request-id"))
        .map(|field| &head_bytes[field.value.clone()])
        .filter(|value| is_well_formed(value));
    match incoming {
        Some(value) => {
            request_id.clear();
            // Well-formed ids are ASCII.
            request_id.push_str(std::str::from_utf8(value).unwrap_or_default());
        }
        None => context.request_ids.generate(request_id),
    }
}

fn field<'a>(head: &RequestHead, head_bytes: &'a [u8], name: &[u8]) -> &'a [u8] {
    head.fields
        .iter()
        .find(|field| head_bytes[field.name.clone()].eq_ignore_ascii_case(name))
        .map_or(&[][..], |field| &head_bytes[field.value.clone()])
}

/// Counts the request and writes its access log line.
#[allow(clippy::too_many_arguments)]
fn finish(
    context: &WorkerContext,
    generation: &Generation,
    frontend: usize,
    peer: SocketAddr,
    head: Option<&RequestHead>,
    head_bytes: &[u8],
    request_id: &str,
    outcome: &Outcome,
) {
    let config = &generation.config;
    let duration = outcome.started.elapsed();
    let method = head.map_or(Method::Other, |head| head.method);
    if config.metrics.enabled {
        context.with_metrics(|metrics| {
            metrics.record(&RequestRecord {
                frontend,
                backend: outcome.backend.as_ref().map_or(0, |backend| backend.metrics_slot),
                method,
                status: outcome.status,
                duration,
                upstream: outcome.upstream,
                received: outcome.received,
                sent: outcome.sent,
                error: outcome.error,
            })
        });
    }
    if config.access_log.enabled {
        let method_text = head.map_or(&b"-"[..], |head| &head_bytes[head.method_range.clone()]);
        let path = head.map_or(&b"-"[..], |head| &head_bytes[head.target.clone()]);
        let entry = Entry {
            time: SystemTime::now(),
            client: peer,
            frontend: config
                .frontends
                .get(frontend)
                .map_or("-", |frontend| frontend.name.as_str()),
            method: std::str::from_utf8(method_text).unwrap_or("-"),
            path,
            version: match head.map(|head| head.version) {
                Some(Version::Http10) => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            status: outcome.status,
            bytes_sent: outcome.sent,
            bytes_received: outcome.received,
            duration,
            upstream: outcome.upstream,
            backend: outcome.backend.as_ref().map_or("-", |backend| backend.id.as_str()),
            worker: context.index,
            error: outcome.error,
            request_id,
            user_agent: head.map_or(&[][..], |head| field(head, head_bytes, b"user-agent")),
            referer: head.map_or(&[][..], |head| field(head, head_bytes, b"referer")),
        };
        let format = config.access_log.format;
        context.access_log(|buffer| format_entry(buffer, &entry, format));
    }
}

/// The request is for corelb's own health path.
fn is_health_request(generation: &Generation, head: &RequestHead, head_bytes: &[u8]) -> bool {
    let endpoint = &generation.config.health_endpoint;
    if !endpoint.enabled || !matches!(head.method, Method::Get | Method::Head) || !head.framing.is_empty() {
        return false;
    }
    let target = &head_bytes[head.target.clone()];
    let path = target.split(|&byte| byte == b'?').next().unwrap_or(target);
    path == endpoint.path.as_bytes()
}

/// Backends this worker would send a request to right now.
pub fn healthy_backends(generation: &Generation) -> usize {
    generation
        .backends
        .iter()
        .zip(&generation.accepting)
        .filter(|(backend, accepting)| **accepting && !backend.failed())
        .count()
}

/// Answers the health path: 200 when at least one backend can serve, 503 otherwise. Returns (bytes sent, healthy).
async fn answer_health(
    client: &mut BufferedStream,
    generation: &Generation,
    head: &RequestHead,
    close: bool,
    request_id: &str,
    scratch: &mut Vec<u8>,
) -> (u64, bool) {
    let healthy = healthy_backends(generation);
    let total = generation.backends.len();
    let ok = healthy > 0;
    let body = format!(
        "{{\"status\":\"{}\",\"healthy_backends\":{healthy},\"backends\":{total}}}\n",
        if ok { "ok" } else { "unavailable" }
    );
    let response = LocalResponse {
        status: if ok { 200 } else { 503 },
        reason: if ok { "OK" } else { "Service Unavailable" },
        content_type: "application/json",
        body: &body,
        close,
        version: head.version,
        request_id: request_id.as_bytes(),
        head_only: head.method == Method::Head,
        extra_fields: "",
    };
    (send_local(client, generation, &response, scratch).await, ok)
}

/// Waits for a complete request head. `Ok(None)`: the client closed or went idle between requests.
async fn read_request_head(
    context: &WorkerContext,
    generation: &Generation,
    client: &mut BufferedStream,
    first: bool,
) -> Result<Option<RequestHead>, ProxyError> {
    let timeouts = &generation.config.timeouts;
    let mut deadline: Option<Instant> = None;
    loop {
        if !client.buffered().is_empty() {
            if let Some(head) = parse_request(client.buffered(), &generation.limits)? {
                return Ok(Some(head));
            }
        }
        let waiting_idle = client.buffered().is_empty();
        let result = if waiting_idle && !first {
            if context.draining() {
                return Ok(None);
            }
            client.fill_idle(timeouts.client_idle).await
        } else {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeouts.client_header);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ProxyError::ClientHeaderTimeout);
            }
            client.fill(remaining).await
        };
        match result {
            Ok(0) if waiting_idle => return Ok(None),
            Ok(0) => return Err(ProxyError::ClientClosed),
            Ok(_) => {}
            Err(error) if waiting_idle => {
                // Idle timeout, shutdown, or a reset between requests: close quietly.
                tracing::trace!(error = %error, "idle client connection closed");
                return Ok(None);
            }
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return Err(ProxyError::ClientHeaderTimeout),
            Err(error) => return Err(ProxyError::ClientIo(error)),
        }
    }
}

/// How long, and how much, a refused client may keep sending before its connection is cut.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
/// How often a lingering socket whose reads timed out is drained.
const LINGER_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Closes after an error response without destroying it: closing a socket with unread input makes the kernel send
/// a reset, which can discard the response before the client reads it. So stop writing, read and drop what the
/// client still sends (bounded in time and bytes), then close.
async fn linger_close(mut client: BufferedStream) {
    if client.reads_ended() {
        return linger_after_read_timeout(client).await;
    }
    if client.shutdown_write().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return;
        }
        let available = client.buffered().len();
        client.consume(available);
        drained += available;
        match client.fill(remaining).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// [`linger_close`] for a connection whose read timed out. Its read side is shut, so reads return at once, and once
/// corelb sends its FIN the kernel answers any further data with a reset (RFC 1122). So no FIN yet: drop what arrives
/// every `LINGER_POLL` until the client closes (the reply said `Connection: close`), or the linger time or bytes run
/// out.
async fn linger_after_read_timeout(mut client: BufferedStream) {
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = 0;
    while drained < LINGER_BYTES && Instant::now() < deadline {
        drained += client.discard_received();
        if client.peer_finished_sending() {
            client.discard_received();
            return;
        }
        monoio::time::sleep(LINGER_POLL).await;
    }
}

/// What a locally generated reply must respect of the request it answers.
#[derive(Debug, Clone, Copy)]
struct ReplyTo {
    version: Version,
    head_only: bool,
}

/// Sends the short error response for `error`, when the error has one. Returns the bytes sent.
async fn respond_with_error(
    client: &mut BufferedStream,
    generation: &Generation,
    error: &ProxyError,
    to: ReplyTo,
    close: bool,
    request_id: &str,
    scratch: &mut Vec<u8>,
) -> u64 {
    let Some(status) = error.status() else {
        return 0;
    };
    let reason = reason_phrase(status);
    let body = format!("{status} {reason}: {}\n", error.label());
    let response = LocalResponse {
        status,
        reason,
        content_type: "text/plain; charset=utf-8",
        body: &body,
        close,
        version: to.version,
        request_id: request_id.as_bytes(),
        head_only: to.head_only,
        extra_fields: "",
    };
    send_local(client, generation, &response, scratch).await
}

/// Writes a response corelb makes itself. Returns the bytes that reached the client (0 when the write failed).
async fn send_local(
    client: &mut BufferedStream,
    generation: &Generation,
    response: &LocalResponse<'_>,
    scratch: &mut Vec<u8>,
) -> u64 {
    scratch.clear();
    write_local_response(scratch, response);
    let sent = scratch.len() as u64;
    let (result, buf) = client
        .write_all(std::mem::take(scratch), generation.config.timeouts.client_idle)
        .await;
    *scratch = buf;
    if result.is_ok() {
        sent
    } else {
        0
    }
}
