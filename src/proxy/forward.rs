//! One request/response exchange: choose a backend, get a connection (idle or new), send the request and stream its
//! body, read the response head, stream the response back, and return the connection to the pool when it is clean.
//!
//! Connection hygiene: a connection that carried an early answer, or bytes past the response's framed end, is
//! closed, never pooled. Retries run in one bounded loop in [`forward`]: a failed connect sent nothing, so the
//! request moves on to another backend; a connection that fails before any response byte (the keep-alive race, or a
//! backend that just died) is reported to the backend's state, and a request that can be replayed
//! ([`replayable`]) is sent again on a fresh connection, to another backend when there is one.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use super::body::{copy_body, BodyBudget, BodyError, BodyRole, CopyTimeouts, Encoding};
use super::connect::{open, Opened};
use super::error::{ProxyError, Retry, Side};
use super::hash_key;
use super::retry::{every_serving_backend_unhealthy, replayable, Route, Stage};
use crate::config::PanicMode;
use crate::http::head::{parse_response, RequestHead, ResponseHead, Version};
use crate::http::rewrite::{
    write_client_response, write_upstream_request, ClientFraming, ClientSide, Identity, ResponseShape,
};
use crate::http::{BodyFraming, Method};
use crate::net::{BufferedStream, PipePool};
use crate::shard::capacity::{NoRoom, Waiter};
use crate::shard::{Admission, BackendState, Generation, Outcome, WorkerContext};

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
    /// `X-Forwarded-Proto`: `https` when the client spoke TLS.
    pub scheme: &'static str,
    pub request_id: &'a str,
    /// The client's TLS identity, on a frontend that passes it on.
    pub identity: Option<Identity<'a>>,
    /// When the request's head was read: the start of its body's time budget and of its deadline.
    pub started: Instant,
    /// The whole request's budget up to the response head (`timeouts.request`, or the frontend's own).
    pub request_timeout: std::time::Duration,
    /// One try's wait for the response head (`timeouts.per_try`, or the frontend's own).
    pub per_try_timeout: std::time::Duration,
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

/// Reads a final (non-1xx) response head. The `bool` in the error says whether any response byte arrived.
async fn read_response_head(
    upstream: &mut BufferedStream,
    method: Method,
    generation: &Generation,
    backend: &BackendState,
    try_deadline: Instant,
) -> Result<ResponseHead, (ProxyError, bool)> {
    let between_reads = generation.config.timeouts.upstream_response;
    let mut any_byte = false;
    loop {
        any_byte |= !upstream.buffered().is_empty();
        match parse_response(upstream.buffered(), method, &generation.limits) {
            Ok(Some(head)) if head.status == 101 => {
                return Err((
                    ProxyError::bad_response(&backend.id, "unexpected 101 Switching Protocols"),
                    true,
                ));
            }
            Ok(Some(head)) if head.status < 200 => {
                // Interim responses (100 Continue, 103 Early Hints) are not forwarded: the proxy answered
                // Expect itself.
                upstream.consume(head.len);
                continue;
            }
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(error) => return Err((ProxyError::bad_response(&backend.id, &error.to_string()), true)),
        }
        let timeout = between_reads.min(try_deadline.saturating_duration_since(Instant::now()));
        if timeout.is_zero() {
            return Err((
                ProxyError::UpstreamTimeout {
                    backend: backend.id.clone(),
                },
                true,
            ));
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
                error: ProxyError::from_upstream_body(&backend.id, BodyError::Write(source)),
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
                BodyError::Write(_) => ProxyError::from_upstream_body(&backend.id, error),
                other => ProxyError::from_client_body(other),
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

/// Decides a retry on another backend after a try that timed out or answered with a status to retry: tries left,
/// another backend to take it, and budget; then waits the backoff (within the deadline) and checks again that
/// another backend can take it. False leaves the request with what this try brought.
async fn retry_elsewhere(
    context: &WorkerContext,
    generation: &Generation,
    route: &mut Route,
    index: usize,
    deadline: Instant,
) -> bool {
    let now = Instant::now();
    if !route.elsewhere(index) || !route.can_go_elsewhere(generation, now) || !context.take_retry(now) {
        return false;
    }
    let wait = context.backoff(&generation.config, route.retries());
    let remaining = deadline.saturating_duration_since(now);
    if wait >= remaining {
        return false;
    }
    monoio::time::sleep(wait).await;
    route.can_go_elsewhere(generation, Instant::now())
}

/// Why no backend could be picked: every one is unhealthy, or every one left is stopped by its breaker, or there
/// is none to take it.
fn nobody_to_ask(generation: &Generation, now: Instant) -> ProxyError {
    if every_serving_backend_unhealthy(generation) {
        return ProxyError::NoHealthyBackend;
    }
    let stopped = generation
        .backends
        .iter()
        .any(|backend| backend.admits(now) == Admission::Stopped);
    if stopped {
        ProxyError::CircuitOpen
    } else {
        ProxyError::NoBackend
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
    if let Some(key) = hash_key::of_request(&generation.config.balancer, request.head_bytes, head, request.peer_ip) {
        route = route.keyed(key);
    }
    let sticky_backend = generation
        .sticky
        .as_ref()
        .and_then(|sticky| sticky.backend_of(request.head_bytes, head));
    route = route.sticky(sticky_backend);
    let max_body_bytes = generation.config.limits.max_body_bytes;
    if let BodyFraming::Length(length) = head.framing {
        if length > max_body_bytes {
            // Refused before any backend is chosen: the body is never read, the connection lingers and closes.
            let error = ProxyError::BodyTooLarge { limit: max_body_bytes };
            return Err(fail(error, false, false, None));
        }
    }

    // One bounded loop for every retry: the error says what it allows, the request whether it can be sent again,
    // the route how often and where, and the worker's budget whether retries may add load at all.
    let replayable_anywhere = bodiless && idempotent;
    let deadline = request.started + request.request_timeout;
    context.count_request(Instant::now());
    let mut last_connect_error = None;
    // Set when the request first waits for a backend under its max_connections: its wait ends there.
    let mut queued_until: Option<Instant> = None;
    let mut waiter = Waiter::default();
    let (index, backend, mut upstream, sent_at, response, request_complete, _in_flight) = loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(fail(ProxyError::RequestTimeout, false, bodiless, None));
        }
        let panic_open = generation.config.healthcheck.panic_mode == PanicMode::FailOpen;
        let picked = route.pick(generation, now).or_else(|| {
            let index = panic_open.then(|| route.pick_in_panic(generation, now)).flatten()?;
            context.with_metrics(|metrics| metrics.panic_routed());
            Some(index)
        });
        let Some(index) = picked else {
            if route.held_back_by_capacity(generation, now) {
                let upstream = &generation.config.upstream;
                let until = *queued_until.get_or_insert_with(|| (now + upstream.capacity_queue_timeout).min(deadline));
                match context
                    .capacity
                    .next_turn(&mut waiter, upstream.capacity_queue, until)
                    .await
                {
                    Ok(()) => continue,
                    Err(_) if route.waits_for_sticky(generation, Instant::now()) => {
                        // The client's own backend stays full: another one serves it, and its cookie moves.
                        route.give_up_sticky();
                        continue;
                    }
                    Err(no_room) => {
                        let error = ProxyError::AtCapacity {
                            waited: no_room == NoRoom::TimedOut,
                        };
                        return Err(fail(error, false, bodiless, None));
                    }
                }
            }
            let error = last_connect_error.unwrap_or_else(|| nobody_to_ask(generation, now));
            return Err(fail(error, false, bodiless, None));
        };
        let backend = Rc::clone(&generation.backends[index]);
        // Held until this attempt's outcome is recorded: a half-open trial slot is given back if it never is.
        let claim = backend.claim(now);
        // In flight from the pick, not from the connect: the load-based balancers must see a request that is still
        // connecting, or a burst would all go to the backend that looked idle.
        let in_flight = backend.begin_request(&context.capacity);
        let Opened {
            connection: mut upstream,
            reused,
        } = match open(context, generation, &backend, now).await {
            Ok(opened) => opened,
            Err(error) => match error.retry() {
                Retry::OtherBackend => {
                    context.record(&backend, Outcome::ConnectFailed, now);
                    // Nothing was sent: another backend is tried at once, without a backoff.
                    let again = route.connect_failed(index, generation.backends.len());
                    if !again {
                        // The last backend tried is the one the failure is counted for.
                        stats.backend = Some(Rc::clone(&backend));
                        return Err(fail(error, false, bodiless, None));
                    }
                    if !context.take_retry(now) {
                        stats.backend = Some(Rc::clone(&backend));
                        let error = ProxyError::RetryBudgetExhausted(Box::new(error));
                        return Err(fail(error, false, bodiless, None));
                    }
                    context.warn_backend(&backend, &error, "backend connect failed; trying another");
                    context.with_metrics(|metrics| metrics.retried("connect_failed"));
                    last_connect_error = Some(error);
                    continue;
                }
                // corelb's own limits (descriptors, upstream slots) blame no backend and are not retried.
                Retry::No | Retry::FreshConnection | Retry::Elsewhere => {
                    if let Some(suppressed) = context.warnings.open(now) {
                        tracing::warn!(error = %error, suppressed, worker = context.index, "cannot open an upstream connection");
                    }
                    return Err(fail(error, false, bodiless, None));
                }
            },
        };
        if !reused {
            context.record(&backend, Outcome::Connected, now);
        }
        stats.backend = Some(Rc::clone(&backend));
        context.with_metrics(|metrics| metrics.upstream_connected(backend.metrics_slot, reused));
        let client_side = ClientSide {
            address: request.peer_ip.as_bytes(),
            scheme: request.scheme,
            fallback_host: &backend.authority,
            request_id: request.request_id.as_bytes(),
            identity: request.identity,
        };
        scratch.clear();
        write_upstream_request(scratch, request.head_bytes, head, &client_side);

        let sent_at = Instant::now();
        let try_deadline = (sent_at + request.per_try_timeout).min(deadline);
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
                match read_response_head(&mut upstream, head.method, generation, &backend, try_deadline).await {
                    Ok(response) => {
                        let answered = Instant::now();
                        let outcome = Outcome::Responded {
                            status: response.status,
                            latency: answered.saturating_duration_since(sent_at),
                        };
                        context.record(&backend, outcome, answered);
                        drop(claim);
                        let retry_status = complete
                            && replayable_anywhere
                            && generation.config.retries.on_status.contains(&response.status);
                        if retry_status {
                            // The answer is held while the retry is decided: if no other backend can take the
                            // request after the backoff, this answer goes to the client after all.
                            if retry_elsewhere(context, generation, &mut route, index, deadline).await {
                                context.with_metrics(|metrics| metrics.retried("status"));
                                last_connect_error = None;
                                continue;
                            }
                        }
                        break (index, backend, upstream, sent_at, response, complete, in_flight);
                    }
                    Err((error, true)) => {
                        context.record(&backend, Outcome::BadAnswer, Instant::now());
                        drop(claim);
                        // The request's own deadline, not the try's, was the one that ran out.
                        let error = if try_deadline >= deadline && error.retry() == Retry::Elsewhere {
                            ProxyError::RequestTimeout
                        } else {
                            error
                        };
                        let again = error.retry() == Retry::Elsewhere
                            && complete
                            && replayable_anywhere
                            && retry_elsewhere(context, generation, &mut route, index, deadline).await;
                        if again {
                            context.warn_backend(
                                &backend,
                                &error,
                                "backend did not answer in time; retrying elsewhere",
                            );
                            context.with_metrics(|metrics| metrics.retried("per_try_timeout"));
                            last_connect_error = None;
                            continue;
                        }
                        return Err(fail(error, false, complete, Some(&backend)));
                    }
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
        context.record(&backend, Outcome::LostBeforeResponse { fresh: !reused }, Instant::now());
        drop(claim);
        let may_replay = failed.error.retry() == Retry::FreshConnection
            && replayable(failed.stage, bodiless, idempotent)
            && failed.request_consumed;
        // A pooled connection the backend had closed (the keep-alive race) is corelb's own loss: its replay is
        // bounded by the route but neither waits nor spends the budget. A fresh connection lost is the backend's
        // failure, and its retry does both.
        let again = may_replay
            && route.replay(index)
            && (reused || {
                let now = Instant::now();
                if context.take_retry(now) {
                    let wait = context.backoff(&generation.config, route.retries());
                    monoio::time::sleep(wait.min(deadline.saturating_duration_since(now))).await;
                    true
                } else {
                    false
                }
            });
        if again {
            context.warn_backend(
                &backend,
                &failed.error,
                "upstream connection failed before responding; retrying",
            );
            context
                .with_metrics(|metrics| metrics.retried(if reused { "stale_connection" } else { "upstream_failed" }));
            last_connect_error = None;
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
        // A client not already holding this backend's cookie is given it (again, if its own backend could not
        // take the request).
        set_cookie: match &generation.sticky {
            Some(sticky) if sticky_backend != Some(index) => sticky.set_cookie(index),
            _ => &[],
        },
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
                BodyError::Write(_) => ProxyError::from_client_body(error),
                other => ProxyError::from_upstream_body(&backend.id, other),
            };
            return Err(fail(error, true, request_complete, Some(&backend)));
        }
    }

    match upstream_after_exchange(&upstream, &response, request_complete) {
        AfterExchange::Reuse if !backend.may_pool() => {}
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
