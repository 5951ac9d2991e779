//! One request/response exchange: choose a backend, get a connection (idle or new), send the request and stream its
//! body, read the response head, stream the response back, and return the connection to the pool when it is clean.
//!
//! Connection hygiene: an idle connection is reused only if nothing is waiting on it; one that carried an early
//! answer, or bytes past the response's framed end, is closed, never pooled. Retries: a failed connect sent nothing,
//! so the request moves on to another backend; a connection that fails before any response byte (the keep-alive
//! race, or a backend that just died) purges that backend's idle pool here and, when the request can be replayed
//! ([`retry_decision`]), sends it again on a fresh connection, to another backend when there is one.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use super::body::{copy_body, BodyBudget, BodyError, BodyRole, CopyTimeouts, Encoding};
use super::error::{ProxyError, Side};
use crate::http::head::{parse_response, RequestHead, ResponseHead, Version};
use crate::http::rewrite::{write_client_response, write_upstream_request, ClientFraming, ClientSide, ResponseShape};
use crate::http::{BodyFraming, Method};
use crate::net::descriptors::out_of_descriptors;
use crate::net::slots::Slot;
use crate::net::{BufferedStream, PendingInput, PipePool};
use crate::shard::{BackendState, Generation, WorkerContext};

/// What happens to the client connection after a successful exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    KeepAlive,
    Close,
    /// Close, but first drain what the client is still sending (the backend answered before the request body
    /// ended), so the response is not destroyed by a reset.
    Linger,
}

/// A failed exchange and how far it got, which decides whether the client can still be answered or kept.
#[derive(Debug)]
pub struct Failure {
    pub error: ProxyError,
    /// Response bytes already reached the client: no error response is possible.
    pub response_started: bool,
    /// The request body was read completely: the client connection is still in sync.
    pub request_consumed: bool,
    pub backend: Option<String>,
}

/// The request being forwarded: its head bytes (copied out of the client buffer) and parsed head.
pub struct Request<'a> {
    pub head_bytes: &'a [u8],
    pub head: &'a RequestHead,
    pub peer: SocketAddr,
    /// `peer`'s address as text, formatted once per connection.
    pub peer_ip: &'a str,
    pub request_id: &'a str,
    /// When the request's head was read: the start of its body's time budget.
    pub started: Instant,
}

/// What an exchange did, for metrics and the access log; filled in as far as the exchange got.
#[derive(Default)]
pub struct ExchangeStats {
    pub backend: Option<Rc<BackendState>>,
    /// The status sent to the client by the backend's response.
    pub status: Option<u16>,
    /// From the first byte sent upstream to the response head.
    pub upstream: Option<std::time::Duration>,
    /// Request body bytes read from the client.
    pub body_received: u64,
    /// Response bytes (head and body) written to the client.
    pub sent: u64,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

async fn connect(
    context: &WorkerContext,
    backend: &BackendState,
    slot: Slot,
    deadline: Instant,
) -> Result<BufferedStream, ProxyError> {
    // Once per new connection, so a timer here costs little; the socket's later operations use the watchdog. The
    // callers box this future: a timer entry is cache-line padded (128-byte aligned), and inline it would make every
    // request's forwarding state large and over-aligned.
    let remaining = deadline.saturating_duration_since(Instant::now());
    match monoio::time::timeout(remaining, TcpStream::connect_addr(backend.addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(BufferedStream::new(stream, &context.watchdog).hold(slot))
        }
        // The process is out of descriptors: not the backend's fault, and no other backend would do better.
        Ok(Err(source)) if out_of_descriptors(&source) => Err(ProxyError::OutOfDescriptors),
        Ok(Err(source)) => Err(ProxyError::ConnectFailed {
            backend: backend.id.clone(),
            source,
        }),
        Err(_) => Err(ProxyError::ConnectTimeout {
            backend: backend.id.clone(),
        }),
    }
}

/// How a request gets its upstream connection.
enum Opening {
    /// A clean pooled connection to the chosen backend.
    Idle(BufferedStream),
    /// A descriptor slot for a new connection.
    Slot(Slot),
}

/// What this worker can give a request for `backend` at once: a clean pooled connection, else a slot for a new
/// one. At the worker's limit the connection idle longest (to any backend) is closed to free a slot.
fn opening_now(
    context: &WorkerContext,
    backend: &BackendState,
    now: Instant,
    max_idle: std::time::Duration,
) -> Option<Opening> {
    loop {
        if let Some(connection) = take_clean_idle(context, backend, now, max_idle) {
            return Some(Opening::Idle(connection));
        }
        if let Some(slot) = context.upstream_slots.try_take() {
            return Some(Opening::Slot(slot));
        }
        if !context.close_an_idle_upstream() {
            return None;
        }
    }
}

/// Waits its turn (first come, first served) until `deadline` for a slot to free or a connection to come back to
/// a pool. A woken request that finds nothing keeps its place at the front.
async fn wait_for_opening(
    context: &WorkerContext,
    backend: &BackendState,
    max_idle: std::time::Duration,
    deadline: Instant,
) -> Result<Opening, ProxyError> {
    let mut front = false;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let turn = context.upstream_slots.freed.next_turn(front);
        if monoio::time::timeout(remaining, turn).await.is_err() {
            return Err(ProxyError::UpstreamLimit);
        }
        if let Some(opening) = opening_now(context, backend, Instant::now(), max_idle) {
            return Ok(opening);
        }
        front = true;
    }
}

/// Where a request that failed before any response byte came back may go next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not sent again: the backend may have acted on it, or its answer was slow rather than missing.
    No,
    /// Sent again on a fresh connection, to another backend when there is one (the failed one is likely dying).
    Elsewhere,
}

/// How far an exchange got when its connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Writing the request failed: the backend's socket was already gone, so it cannot have acted on it.
    Writing,
    /// The request was written and the connection ended (reset, EOF) before any response byte.
    Awaiting,
}

/// Whether a request whose upstream connection failed before any response byte may be sent again. A bodiless
/// request is still held whole, so it can be replayed; a body was streamed from the client and is gone. An
/// idempotent request (RFC 9110 §9.2.2) may be replayed even if the backend received it; any other only when the
/// write itself failed.
pub fn retry_decision(error: &ProxyError, stage: Stage, bodiless: bool, idempotent: bool) -> Retry {
    let connection_failed = error.connection_lost();
    let replayable = match stage {
        Stage::Writing => bodiless,
        Stage::Awaiting => bodiless && idempotent,
    };
    if connection_failed && replayable {
        Retry::Elsewhere
    } else {
        Retry::No
    }
}

/// The backends one request has tried, and how many more tries it has.
struct Route {
    tried: Vec<usize>,
    /// Most backends tried for one request (`upstream.max_connect_attempts`).
    limit: usize,
    /// Exchanges that failed before any response byte and were sent again.
    replays: u32,
}

/// A request is replayed after a failed exchange at most this often, and at most `max_connect_attempts` times; at
/// least once, so that even with an attempt limit of one the keep-alive race gets a fresh connection.
const MAX_REPLAYS: u32 = 2;

impl Route {
    fn new(limit: u32) -> Route {
        Route {
            tried: Vec::new(),
            limit: limit.max(1) as usize,
            replays: 0,
        }
    }

    /// Records that `index` failed; whether the request may try again.
    fn failed(&mut self, index: usize, backends: usize) -> bool {
        if !self.tried.contains(&index) {
            self.tried.push(index);
        }
        self.tried.len() < self.limit.min(backends)
    }

    /// Records a failed exchange to be sent again; false when the request has been replayed enough.
    fn replay(&mut self, index: usize) -> bool {
        if !self.tried.contains(&index) {
            self.tried.push(index);
        }
        self.replays += 1;
        self.replays <= MAX_REPLAYS && self.replays as usize <= self.limit
    }
}

/// A backend chosen for one attempt and the connection to it.
struct Upstream {
    index: usize,
    backend: Rc<BackendState>,
    connection: BufferedStream,
    reused: bool,
}

/// Picks a backend (one `route` has not tried when there is one) and a connection to it: an idle one that is
/// clean, or a new one. A failed connect moves on to the next backend.
async fn open_upstream(
    context: &WorkerContext,
    generation: &Generation,
    route: &mut Route,
) -> Result<Upstream, ProxyError> {
    let upstream = &generation.config.upstream;
    let mut last_error = None;
    loop {
        let now = Instant::now();
        let backends = &generation.backends;
        let accepting = &generation.accepting;
        let tried = &route.tried;
        let pick = generation
            .balancer
            .pick(|index| accepting[index] && !tried.contains(&index) && backends[index].available(now))
            // Every untried backend marked down: try one anyway rather than refuse outright; it may be back.
            .or_else(|| {
                generation
                    .balancer
                    .pick(|index| accepting[index] && !tried.contains(&index))
            })
            // A request replayed after a failed exchange, with every backend tried: a fresh connection to one
            // of them (its idle pool was purged) rather than none.
            .or_else(|| {
                if route.replays > 0 && last_error.is_none() {
                    generation.balancer.pick(|index| accepting[index])
                } else {
                    None
                }
            });
        let Some(index) = pick else {
            return Err(last_error.unwrap_or(ProxyError::NoBackend));
        };
        let backend = Rc::clone(&backends[index]);
        // With requests queued for an upstream connection, this one joins the queue rather than overtake them.
        let at_once = if context.upstream_slots.freed.has_waiters() {
            None
        } else {
            opening_now(context, &backend, now, upstream.idle_timeout)
        };
        let deadline = now + generation.config.timeouts.connect;
        let opening = match at_once {
            Some(opening) => Ok(opening),
            None => Box::pin(wait_for_opening(context, &backend, upstream.idle_timeout, deadline)).await,
        };
        let connected = match opening {
            Ok(Opening::Idle(connection)) => {
                return Ok(Upstream {
                    index,
                    backend,
                    connection,
                    reused: true,
                })
            }
            Ok(Opening::Slot(slot)) => Box::pin(connect(context, &backend, slot, deadline)).await,
            Err(error) => Err(error),
        };
        match connected {
            Ok(connection) => {
                backend.mark_succeeded();
                return Ok(Upstream {
                    index,
                    backend,
                    connection,
                    reused: false,
                });
            }
            // corelb's own limits (descriptors, upstream slots) blame no backend and are not retried.
            Err(error) if error.side() == Side::Proxy => {
                if let Some(suppressed) = context.warnings.open(now) {
                    tracing::warn!(error = %error, suppressed, worker = context.index, "cannot open an upstream connection");
                }
                return Err(error);
            }
            Err(error) => {
                context.warn_backend(&backend, &error, "backend connect failed; trying another");
                backend.mark_failed(now + upstream.fail_timeout);
                context.with_metrics(|metrics| metrics.retried("connect_failed"));
                last_error = Some(error);
                if !route.failed(index, backends.len()) {
                    return Err(last_error.unwrap_or(ProxyError::NoBackend));
                }
            }
        }
    }
}

/// The freshest idle connection to `backend` on which nothing is waiting to be read. One with bytes pending holds
/// a response nobody asked for (a misbehaving backend), one at EOF was closed by the backend: either would hand
/// this request an answer that is not its own, so it is closed and the next one is checked.
fn take_clean_idle(
    context: &WorkerContext,
    backend: &BackendState,
    now: Instant,
    max_idle: std::time::Duration,
) -> Option<BufferedStream> {
    while let Some(connection) = backend.take_idle(now, max_idle) {
        match connection.pending_input() {
            PendingInput::Nothing => return Some(connection),
            PendingInput::Bytes => context.with_metrics(|metrics| metrics.upstream_discarded("unsolicited_bytes")),
            PendingInput::Closed => context.with_metrics(|metrics| metrics.upstream_discarded("closed_by_backend")),
        }
    }
    None
}

/// Reads a final (non-1xx) response head. The `bool` in the error says whether any response byte arrived.
async fn read_response_head(
    upstream: &mut BufferedStream,
    method: Method,
    generation: &Generation,
    backend: &BackendState,
) -> Result<ResponseHead, (ProxyError, bool)> {
    let timeout = generation.config.timeouts.upstream_response;
    let mut any_byte = false;
    loop {
        any_byte |= !upstream.buffered().is_empty();
        match parse_response(upstream.buffered(), method, &generation.limits) {
            Ok(Some(head)) if head.status == 101 => {
                return Err((bad_response(backend, "unexpected 101 Switching Protocols"), true));
            }
            Ok(Some(head)) if head.status < 200 => {
                // Interim responses (100 Continue, 103 Early Hints) are not forwarded: the proxy answered
                // Expect itself.
                upstream.consume(head.len);
                continue;
            }
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(error) => return Err((bad_response(backend, &error.to_string()), true)),
        }
        match upstream.fill(timeout).await {
            Ok(0) => {
                return Err((
                    ProxyError::UpstreamClosed {
                        backend: backend.id.clone(),
                    },
                    any_byte,
                ))
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                return Err((
                    ProxyError::UpstreamTimeout {
                        backend: backend.id.clone(),
                    },
                    true,
                ))
            }
            Err(source) => {
                return Err((
                    ProxyError::UpstreamIo {
                        backend: backend.id.clone(),
                        source,
                    },
                    any_byte,
                ))
            }
        }
    }
}

fn bad_response(backend: &BackendState, reason: &str) -> ProxyError {
    ProxyError::BadResponse {
        backend: backend.id.clone(),
        reason: reason.to_string(),
    }
}

fn upstream_error(backend: &BackendState, error: BodyError) -> ProxyError {
    match error {
        BodyError::Read(source) | BodyError::Write(source) if source.kind() == std::io::ErrorKind::TimedOut => {
            ProxyError::UpstreamTimeout {
                backend: backend.id.clone(),
            }
        }
        BodyError::Read(source) | BodyError::Write(source) => ProxyError::UpstreamIo {
            backend: backend.id.clone(),
            source,
        },
        BodyError::ReadEof => ProxyError::UpstreamClosed {
            backend: backend.id.clone(),
        },
        BodyError::Malformed(error) => bad_response(backend, &error.to_string()),
        // Only a watched copy stops this way, and `send_request` handles it before mapping errors.
        BodyError::Answered(_) => bad_response(backend, "answered before the request body was sent"),
        // Budgets bound request bodies only.
        BodyError::TooLarge(_) | BodyError::TooSlow => bad_response(backend, "response body out of budget"),
    }
}

fn client_error(error: BodyError) -> ProxyError {
    match error {
        BodyError::Read(source) | BodyError::Write(source) if source.kind() == std::io::ErrorKind::TimedOut => {
            ProxyError::ClientTimeout
        }
        BodyError::Read(source) | BodyError::Write(source) => ProxyError::ClientIo(source),
        BodyError::ReadEof => ProxyError::ClientClosed,
        BodyError::Malformed(error) => ProxyError::BadRequestBody(error),
        // The client is never the watched side of a copy.
        BodyError::Answered(_) => ProxyError::ClientClosed,
        BodyError::TooLarge(limit) => ProxyError::BodyTooLarge { limit },
        BodyError::TooSlow => ProxyError::ClientBodyTimeout,
    }
}

/// How sending a request ended.
enum Sent {
    /// Head and body reached the backend's socket; the body held this many bytes.
    Complete(u64),
    /// The backend answered before the body was complete (this many body bytes were read from the client): the
    /// rest stays unread, so neither connection can carry another exchange.
    Answered(u64),
}

/// A request that could not be sent, and whether the client's connection is still in sync.
struct SendFailure {
    error: ProxyError,
    stage: Stage,
    request_consumed: bool,
    response_started: bool,
}

/// Sends the request head in `scratch` and streams the body, watching for an early answer from the backend.
#[allow(clippy::too_many_arguments)]
async fn send_request(
    client: &mut BufferedStream,
    upstream: &mut BufferedStream,
    head: &RequestHead,
    scratch: &mut Vec<u8>,
    generation: &Generation,
    pipes: Option<&PipePool>,
    backend: &BackendState,
    started: Instant,
) -> Result<Sent, SendFailure> {
    let timeouts = &generation.config.timeouts;
    if head.framing.is_empty() {
        let (result, buf) = upstream
            .write_all(std::mem::take(scratch), timeouts.upstream_response)
            .await;
        *scratch = buf;
        return match result {
            Ok(()) => Ok(Sent::Complete(0)),
            Err(source) => Err(SendFailure {
                error: upstream_error(backend, BodyError::Write(source)),
                stage: Stage::Writing,
                request_consumed: true,
                response_started: false,
            }),
        };
    }
    if head.expect_continue && head.version == Version::Http11 {
        let (result, _) = client.write_all(CONTINUE.to_vec(), timeouts.client_idle).await;
        if let Err(source) = result {
            return Err(SendFailure {
                error: ProxyError::ClientIo(source),
                stage: Stage::Writing,
                request_consumed: false,
                // No other answer can follow a broken write.
                response_started: true,
            });
        }
    }
    let encoding = match head.framing {
        BodyFraming::Chunked => Encoding::Chunked,
        _ => Encoding::Identity,
    };
    let copy_timeouts = CopyTimeouts {
        read: timeouts.client_idle,
        write: timeouts.upstream_response,
    };
    let copied = copy_body(
        client,
        upstream,
        head.framing,
        encoding,
        scratch,
        copy_timeouts,
        pipes,
        BodyRole::Request(BodyBudget {
            max_bytes: generation.config.limits.max_body_bytes,
            started,
            grace: timeouts.client_body,
            min_rate: generation.config.limits.min_body_rate,
        }),
    )
    .await;
    match copied {
        Ok(received) => Ok(Sent::Complete(received)),
        Err(BodyError::Answered(received)) => Ok(Sent::Answered(received)),
        Err(error) => {
            let error = match error {
                BodyError::Write(_) => upstream_error(backend, error),
                other => client_error(other),
            };
            Err(SendFailure {
                error,
                stage: Stage::Writing,
                request_consumed: false,
                response_started: false,
            })
        }
    }
}

/// Forwards one request. `scratch` is a reusable buffer for heads; `client` is positioned at the request body.
pub async fn forward(
    context: &WorkerContext,
    generation: &Generation,
    client: &mut BufferedStream,
    request: Request<'_>,
    scratch: &mut Vec<u8>,
    stats: &mut ExchangeStats,
) -> Result<Disposition, Failure> {
    let head = request.head;
    let timeouts = &generation.config.timeouts;
    let fail =
        |error: ProxyError, response_started: bool, request_consumed: bool, backend: Option<&BackendState>| Failure {
            error,
            response_started,
            request_consumed,
            backend: backend.map(|backend| backend.id.clone()),
        };
    let bodiless = head.framing.is_empty();
    let idempotent = head.method.is_idempotent();
    let pipes = generation.config.server.splice_bodies.then_some(&context.pipes);
    let mut route = Route::new(generation.config.upstream.max_connect_attempts);
    let max_body_bytes = generation.config.limits.max_body_bytes;
    if let BodyFraming::Length(length) = head.framing {
        if length > max_body_bytes {
            // Refused before any backend is chosen: the body is never read, the connection lingers and closes.
            let error = ProxyError::BodyTooLarge { limit: max_body_bytes };
            return Err(fail(error, false, false, None));
        }
    }

    let (backend, mut upstream, sent_at, response, request_complete, _in_flight) = loop {
        let Upstream {
            index,
            backend,
            connection: mut upstream,
            reused,
        } = open_upstream(context, generation, &mut route)
            .await
            .map_err(|error| fail(error, false, bodiless, None))?;
        let in_flight = backend.begin_request();
        stats.backend = Some(Rc::clone(&backend));
        context.with_metrics(|metrics| metrics.upstream_connected(backend.metrics_slot, reused));
        let client_side = ClientSide {
            address: request.peer_ip.as_bytes(),
            scheme: "http",
            fallback_host: &backend.authority,
            request_id: request.request_id.as_bytes(),
        };
        scratch.clear();
        write_upstream_request(scratch, request.head_bytes, head, &client_side);

        let sent_at = Instant::now();
        let failed = match send_request(
            client,
            &mut upstream,
            head,
            scratch,
            generation,
            pipes,
            &backend,
            request.started,
        )
        .await
        {
            Ok(sent) => {
                let (received, complete) = match sent {
                    Sent::Complete(received) => (received, true),
                    Sent::Answered(received) => (received, false),
                };
                stats.body_received = received;
                match read_response_head(&mut upstream, head.method, generation, &backend).await {
                    Ok(response) => break (backend, upstream, sent_at, response, complete, in_flight),
                    Err((error, true)) => return Err(fail(error, false, complete, Some(&backend))),
                    Err((error, false)) => SendFailure {
                        error,
                        stage: Stage::Awaiting,
                        request_consumed: complete,
                        response_started: false,
                    },
                }
            }
            Err(failure) => failure,
        };
        if failed.error.side() != Side::Upstream {
            // The client failed (or its body was out of budget): the backend is not to blame.
            return Err(fail(
                failed.error,
                failed.response_started,
                failed.request_consumed,
                Some(&backend),
            ));
        }
        // The connection failed before any response byte: the backend is likely going away, so its other idle
        // connections on this worker are dropped, and a request that can be sent again goes elsewhere.
        backend.purge_idle();
        if !reused {
            backend.mark_failed(Instant::now() + generation.config.upstream.fail_timeout);
        }
        let retry = retry_decision(&failed.error, failed.stage, bodiless, idempotent);
        if retry == Retry::Elsewhere && failed.request_consumed && route.replay(index) {
            context.warn_backend(
                &backend,
                &failed.error,
                "upstream connection failed before responding; retrying",
            );
            context
                .with_metrics(|metrics| metrics.retried(if reused { "stale_connection" } else { "upstream_failed" }));
            continue;
        }
        return Err(fail(
            failed.error,
            failed.response_started,
            failed.request_consumed,
            Some(&backend),
        ));
    };

    // Stream the response back. After an early answer the client is still sending a body nobody will read: the
    // response says `Connection: close` and the connection lingers (RFC 9112 §9.6) rather than drain a body of
    // any size.
    let client_framing = ClientFraming::for_response(response.framing, head.version);
    let close = head.close || context.draining() || client_framing.forces_close() || !request_complete;
    let shape = ResponseShape {
        framing: client_framing,
        client_version: head.version,
        close,
        worker: generation.config.server.expose_worker_header.then_some(context.index),
        request_id: request.request_id.as_bytes(),
    };
    stats.upstream = Some(sent_at.elapsed());
    stats.status = Some(response.status);
    scratch.clear();
    write_client_response(scratch, upstream.buffered(), &response, &shape);
    let head_len = scratch.len() as u64;
    upstream.consume(response.len);
    let encoding = match client_framing {
        ClientFraming::Chunked => Encoding::Chunked,
        ClientFraming::None | ClientFraming::Length(_) | ClientFraming::UntilClose => Encoding::Identity,
    };
    let client_timeouts = CopyTimeouts {
        read: timeouts.upstream_response,
        write: timeouts.client_idle,
    };
    match copy_body(
        &mut upstream,
        client,
        response.framing,
        encoding,
        scratch,
        client_timeouts,
        pipes,
        BodyRole::Response,
    )
    .await
    {
        Ok(body) => stats.sent = head_len + body,
        Err(error) => {
            let error = match error {
                BodyError::Write(_) => client_error(error),
                other => upstream_error(&backend, other),
            };
            return Err(fail(error, true, request_complete, Some(&backend)));
        }
    }

    match upstream_after_exchange(&upstream, &response, request_complete) {
        AfterExchange::Reuse => {
            let capacity = generation.config.upstream.max_idle_per_backend;
            backend.put_idle(upstream, Instant::now(), capacity);
            // A request waiting for an upstream slot may take this connection instead.
            context.upstream_slots.freed.wake_one();
        }
        AfterExchange::Close => {}
        AfterExchange::Discard(reason) => context.with_metrics(|metrics| metrics.upstream_discarded(reason)),
    }
    Ok(if !request_complete {
        Disposition::Linger
    } else if close {
        Disposition::Close
    } else {
        Disposition::KeepAlive
    })
}

/// What becomes of an upstream connection whose exchange ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterExchange {
    /// Back to the idle pool.
    Reuse,
    /// Closed as the backend asked (or as the framing requires).
    Close,
    /// Closed because the exchange was not clean; the reason is counted.
    Discard(&'static str),
}

/// A connection goes back to the pool only when the exchange on it ended exactly where both sides agree it did:
/// the whole request was written, the response ended at its framed end, and nothing more arrived.
fn upstream_after_exchange(
    upstream: &BufferedStream,
    response: &ResponseHead,
    request_complete: bool,
) -> AfterExchange {
    if upstream.expired() || response.close || response.framing == BodyFraming::UntilClose {
        AfterExchange::Close
    } else if !request_complete {
        AfterExchange::Discard("early_response")
    } else if !upstream.buffered().is_empty() {
        AfterExchange::Discard("bytes_after_response")
    } else {
        AfterExchange::Reuse
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset() -> ProxyError {
        ProxyError::UpstreamIo {
            backend: "b".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        }
    }

    #[test]
    fn an_idempotent_bodiless_request_is_sent_elsewhere_after_a_silent_failure() {
        for stage in [Stage::Writing, Stage::Awaiting] {
            assert_eq!(retry_decision(&reset(), stage, true, true), Retry::Elsewhere);
            let closed = ProxyError::UpstreamClosed { backend: "b".into() };
            assert_eq!(retry_decision(&closed, stage, true, true), Retry::Elsewhere);
        }
    }

    #[test]
    fn a_post_is_sent_again_only_when_the_backend_cannot_have_seen_it() {
        assert_eq!(retry_decision(&reset(), Stage::Writing, true, false), Retry::Elsewhere);
        assert_eq!(retry_decision(&reset(), Stage::Awaiting, true, false), Retry::No);
    }

    #[test]
    fn a_streamed_body_is_never_sent_again() {
        assert_eq!(retry_decision(&reset(), Stage::Writing, false, true), Retry::No);
        assert_eq!(retry_decision(&reset(), Stage::Awaiting, false, true), Retry::No);
    }

    #[test]
    fn a_slow_or_garbled_answer_is_not_retried() {
        let slow = ProxyError::UpstreamTimeout { backend: "b".into() };
        let garbled = ProxyError::BadResponse {
            backend: "b".into(),
            reason: "x".into(),
        };
        for error in [slow, garbled] {
            assert_eq!(retry_decision(&error, Stage::Awaiting, true, true), Retry::No);
        }
    }

    #[test]
    fn a_route_tries_each_backend_once_within_its_limit() {
        let mut route = Route::new(3);
        assert!(route.failed(0, 5));
        assert!(route.failed(0, 5), "the same backend is counted once");
        assert!(route.failed(1, 5));
        assert!(!route.failed(2, 5), "three tried of a limit of three");
        let mut small = Route::new(3);
        assert!(!small.failed(0, 1), "one backend, nothing else to try");
    }

    #[test]
    fn replays_are_bounded() {
        let mut route = Route::new(10);
        assert!(route.replay(0));
        assert!(route.replay(0));
        assert!(!route.replay(0));
        let mut single = Route::new(1);
        assert!(single.replay(0), "one replay even with an attempt limit of one");
        assert!(!single.replay(0));
    }
}
