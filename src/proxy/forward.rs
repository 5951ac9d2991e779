//! One request/response exchange: choose a backend, get a connection (idle or new), send the request and stream its
//! body, read the response head, stream the response back, and return the connection to the pool when it is clean.
//!
//! Two retries are safe and done here. A failed connect sent nothing, so the request moves on to another backend. A
//! reused idle connection that fails before any response byte came back is the keep-alive race (the backend closed it
//! as we picked it): a bodiless request is sent again, once, on a fresh connection to the same backend.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use super::body::{copy_body, BodyError, CopyTimeouts, Encoding};
use super::error::ProxyError;
use crate::http::head::{parse_response, RequestHead, ResponseHead, Version};
use crate::http::rewrite::{write_client_response, write_upstream_request, ClientFraming, ClientSide, ResponseShape};
use crate::http::{BodyFraming, Method};
use crate::net::BufferedStream;
use crate::worker::context::{BackendState, Generation, WorkerContext};

/// What happens to the client connection after a successful exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    KeepAlive,
    Close,
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
    generation: &Generation,
) -> Result<BufferedStream, ProxyError> {
    let timeout = generation.config.timeouts.connect;
    // Once per new connection, so a timer here costs little; the socket's later operations use the watchdog. The
    // callers box this future: a timer entry is cache-line padded (128-byte aligned), and inline it would make every
    // request's forwarding state large and over-aligned.
    match monoio::time::timeout(timeout, TcpStream::connect_addr(backend.addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(BufferedStream::new(stream, &context.watchdog))
        }
        Ok(Err(source)) => Err(ProxyError::ConnectFailed {
            backend: backend.id.clone(),
            source,
        }),
        Err(_) => Err(ProxyError::ConnectTimeout {
            backend: backend.id.clone(),
        }),
    }
}

/// A fresh connection in place of a reused one the backend had already closed (the keep-alive race).
async fn replace_stale(
    context: &WorkerContext,
    generation: &Generation,
    backend: &BackendState,
) -> Result<BufferedStream, ProxyError> {
    context.with_metrics(|metrics| {
        metrics.retried("stale_connection");
        metrics.upstream_connected(backend.metrics_slot, false);
    });
    Box::pin(connect(context, backend, generation)).await
}

/// Picks a backend and connects to it, moving on to the next backend when a connect fails.
async fn open_upstream(
    context: &WorkerContext,
    generation: &Generation,
) -> Result<(Rc<BackendState>, BufferedStream, bool), ProxyError> {
    let upstream = &generation.config.upstream;
    let mut tried: Vec<usize> = Vec::new();
    let mut last_error = None;
    loop {
        let now = Instant::now();
        let backends = &generation.backends;
        let accepting = &generation.accepting;
        let pick = generation
            .balancer
            .pick(|index| accepting[index] && !tried.contains(&index) && backends[index].available(now))
            // Every backend marked down: try one anyway rather than refuse outright; it may be back.
            .or_else(|| {
                if tried.is_empty() {
                    generation.balancer.pick(|index| accepting[index])
                } else {
                    None
                }
            });
        let Some(index) = pick else {
            return Err(last_error.unwrap_or(ProxyError::NoBackend));
        };
        let backend = Rc::clone(&backends[index]);
        if let Some(connection) = backend.take_idle(now, upstream.idle_timeout) {
            return Ok((backend, connection, true));
        }
        match Box::pin(connect(context, &backend, generation)).await {
            Ok(connection) => {
                backend.mark_succeeded();
                return Ok((backend, connection, false));
            }
            Err(error) => {
                tracing::warn!(backend = %backend.id, error = %error, "backend connect failed; trying another");
                backend.mark_failed(now + upstream.fail_timeout);
                context.with_metrics(|metrics| metrics.retried("connect_failed"));
                tried.push(index);
                last_error = Some(error);
                if tried.len() >= upstream.max_connect_attempts as usize || tried.len() >= backends.len() {
                    return Err(last_error.unwrap_or(ProxyError::NoBackend));
                }
            }
        }
    }
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
    let pipes = generation.config.server.splice_bodies.then_some(&context.pipes);

    let (backend, mut upstream, mut reused) = open_upstream(context, generation)
        .await
        .map_err(|error| fail(error, false, bodiless, None))?;
    let _in_flight = backend.begin_request();
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

    let upstream_timeouts = CopyTimeouts {
        read: timeouts.client_idle,
        write: timeouts.upstream_response,
    };
    let mut retried = false;
    let mut sent_at: Instant;
    let response = loop {
        sent_at = Instant::now();
        // Send the head, and the body if there is one.
        if bodiless {
            let (result, buf) = upstream
                .write_all(std::mem::take(scratch), timeouts.upstream_response)
                .await;
            *scratch = buf;
            if let Err(source) = result {
                let can_retry = reused && !retried && source.kind() != std::io::ErrorKind::TimedOut;
                if can_retry {
                    retried = true;
                    upstream = replace_stale(context, generation, &backend)
                        .await
                        .map_err(|error| fail(error, false, true, Some(&backend)))?;
                    reused = false;
                    continue;
                }
                let error = upstream_error(&backend, BodyError::Write(source));
                return Err(fail(error, false, true, Some(&backend)));
            }
        } else {
            if head.expect_continue && head.version == Version::Http11 {
                let (result, _) = client.write_all(CONTINUE.to_vec(), timeouts.client_idle).await;
                if let Err(source) = result {
                    return Err(fail(ProxyError::ClientIo(source), true, false, Some(&backend)));
                }
            }
            let encoding = match head.framing {
                BodyFraming::Chunked => Encoding::Chunked,
                _ => Encoding::Identity,
            };
            let copied = copy_body(
                client,
                &mut upstream,
                head.framing,
                encoding,
                scratch,
                upstream_timeouts,
                pipes,
            )
            .await;
            match copied {
                Ok(received) => stats.body_received = received,
                Err(error) => {
                    let error = match error {
                        BodyError::Write(_) => upstream_error(&backend, error),
                        other => client_error(other),
                    };
                    return Err(fail(error, false, false, Some(&backend)));
                }
            }
        }

        match read_response_head(&mut upstream, head.method, generation, &backend).await {
            Ok(response) => break response,
            Err((error, any_byte)) => {
                let stale = matches!(error, ProxyError::UpstreamClosed { .. } | ProxyError::UpstreamIo { .. });
                // The backend may have acted on the request before closing: only an idempotent one is sent again.
                let replayable = bodiless && head.method.is_idempotent() && !scratch.is_empty();
                if stale && reused && !retried && !any_byte && replayable {
                    tracing::debug!(backend = %backend.id, "reused connection was closed by the backend; retrying");
                    retried = true;
                    upstream = replace_stale(context, generation, &backend)
                        .await
                        .map_err(|error| fail(error, false, true, Some(&backend)))?;
                    reused = false;
                    continue;
                }
                return Err(fail(error, false, true, Some(&backend)));
            }
        }
    };

    // Stream the response back.
    let client_framing = ClientFraming::for_response(response.framing, head.version);
    let close = head.close || context.draining() || client_framing.forces_close();
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
    )
    .await
    {
        Ok(body) => stats.sent = head_len + body,
        Err(error) => {
            let error = match error {
                BodyError::Write(_) => client_error(error),
                other => upstream_error(&backend, other),
            };
            return Err(fail(error, true, true, Some(&backend)));
        }
    }

    let reusable = !response.close
        && response.framing != BodyFraming::UntilClose
        && upstream.buffered().is_empty()
        && !upstream.expired();
    if reusable {
        let capacity = generation.config.upstream.max_idle_per_backend;
        backend.put_idle(upstream, Instant::now(), capacity);
    }
    Ok(if close {
        Disposition::Close
    } else {
        Disposition::KeepAlive
    })
}
