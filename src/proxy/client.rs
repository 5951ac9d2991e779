//! One client connection: read a request head, forward it, repeat while both sides keep the connection alive.
//! Requests on one connection are handled in order, so pipelined requests are answered in order. How the connection
//! goes on after each request is decided in one pure function, [`next_step`].

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::error::{ProxyError, Side};
use super::forward::{forward, Disposition, ExchangeStats, Request};
use super::linger::linger_close;
use super::local::{answer_health, is_health_request, respond_rate_limited, respond_with_error, ReplyTo};
use super::record::{finish, Outcome};
use crate::http::head::{parse_request, RequestHead, Version};
use crate::http::rewrite::Identity;
use crate::http::Method;
use crate::net::tls::accept;
use crate::net::transport::Transport;
use crate::net::BufferedStream;
use crate::shard::request_id::is_well_formed;
use crate::shard::tls::Terminate;
use crate::shard::{Generation, WorkerContext};
use crate::tls::certificate::subject_of;

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
    /// `https` when the client speaks TLS, else `http`.
    scheme: &'static str,
    /// On a frontend that passes the client's TLS identity on: the header and the verified subject.
    identity: Option<(Arc<str>, Option<String>)>,
    /// The current request's head, copied out of the read buffer.
    head_bytes: Vec<u8>,
    /// Heads being written, and body bytes on their way.
    scratch: Vec<u8>,
    request_id: String,
}

/// How a connection goes on after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
    /// Close after draining what the client still sends, so the response just written is not destroyed by a reset.
    LingerClose,
}

/// What a request left its connection in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Answered by corelb itself, with nothing of the request left unread.
    Answered,
    /// Refused before its body was read; `unread_body`: it has one.
    Refused { unread_body: bool },
    /// Forwarded: the exchange says how the connection can go on.
    Forwarded(Disposition),
    /// Failed before any response byte reached the client, which gets an error reply; `request_consumed`: the
    /// request was read whole, so the connection is still in sync.
    FailedBeforeResponse { request_consumed: bool },
    /// Failed while the response was being relayed: nothing more can be said on this connection.
    FailedMidResponse,
}

/// What else decides the next step: the client asked to close, the worker is shutting down, the client has sent
/// more (pipelined) than was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Circumstances {
    client_close: bool,
    draining: bool,
    pipelined: bool,
}

/// How the connection goes on after a request. A connection closes when the client or a shutdown asks, or when it
/// is out of sync; it lingers when the client may still be sending (closing on unread input would reset the
/// connection and could destroy the response just sent).
fn next_step(ended: Ended, now: Circumstances) -> Next {
    let ending = now.client_close || now.draining;
    match ended {
        Ended::Answered if ending => Next::Close,
        Ended::Refused { unread_body } if ending || unread_body => Next::LingerClose,
        Ended::Answered | Ended::Refused { .. } => Next::KeepAlive,
        Ended::FailedBeforeResponse { request_consumed } if request_consumed && !ending => Next::KeepAlive,
        Ended::FailedBeforeResponse { .. } => Next::LingerClose,
        Ended::Forwarded(Disposition::KeepAlive) if !now.draining => Next::KeepAlive,
        Ended::Forwarded(Disposition::Linger) => Next::LingerClose,
        Ended::Forwarded(_) | Ended::FailedMidResponse if now.pipelined => Next::LingerClose,
        Ended::Forwarded(_) | Ended::FailedMidResponse => Next::Close,
    }
}

/// Serves one accepted client connection until it closes. The task lives as long as the connection, mostly waiting
/// for the next request, so it holds only what is kept between requests and the wait for a head; everything a
/// request needs while in flight lives in a boxed future freed when the request ends (10,000 idle keep-alive
/// connections cost what their waits cost).
pub async fn serve_client(
    context: Rc<WorkerContext>,
    stream: Transport,
    peer: SocketAddr,
    frontend: usize,
    slot: crate::net::slots::Slot,
) {
    let _guard = context.connection_opened(frontend, slot);
    serve_connection(context, stream, peer, frontend, None).await;
}

/// A connection accepted on a TLS frontend: the handshake, within the frontend's handshake timeout, then the
/// same exchanges as over plain TCP. A failed handshake is counted by its reason and the connection closed (rustls
/// has sent the client its alert).
pub async fn serve_tls_client(
    context: Rc<WorkerContext>,
    tcp: monoio::net::TcpStream,
    peer: SocketAddr,
    frontend: usize,
    slot: crate::net::slots::Slot,
    terminate: Terminate,
) {
    let _guard = context.connection_opened(frontend, slot);
    let started = Instant::now();
    let stream = match accept(tcp, terminate.server, &context.watchdog, terminate.handshake_timeout).await {
        Ok(stream) => stream,
        Err(failure) => {
            tracing::debug!(%peer, reason = failure.reason(), error = %failure, "TLS handshake failed");
            context.with_metrics(|metrics| metrics.tls_handshake_failed(frontend, failure.reason()));
            return;
        }
    };
    let session = stream.session();
    context.with_metrics(|metrics| {
        let version = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => Some("1.3"),
            Some(rustls::ProtocolVersion::TLSv1_2) => Some("1.2"),
            _ => None,
        };
        let cipher = session
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str());
        metrics.tls_handshake_done(
            frontend,
            version.unwrap_or("unknown"),
            cipher.unwrap_or("unknown"),
            session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            started.elapsed(),
        )
    });
    let identity = terminate.identity_header.map(|header| {
        let subject = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| subject_of(leaf.as_ref()));
        (header, subject)
    });
    serve_connection(context, Transport::Tls(Box::new(stream)), peer, frontend, identity).await;
}

async fn serve_connection(
    context: Rc<WorkerContext>,
    stream: Transport,
    peer: SocketAddr,
    frontend: usize,
    identity: Option<(Arc<str>, Option<String>)>,
) {
    let scheme = if stream.is_tls() { "https" } else { "http" };
    let mut client = BufferedStream::with_capacity(stream, &context.watchdog, CLIENT_BUFFER);
    let mut connection = Connection {
        peer_ip: peer.ip().to_string(),
        scheme,
        identity,
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
        scheme,
        identity,
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

    let circumstances = |client: &BufferedStream| Circumstances {
        client_close: head.close,
        draining: context.draining(),
        pipelined: !client.buffered().is_empty(),
    };

    if is_health_request(&generation, &head, head_bytes) {
        let next = next_step(Ended::Answered, circumstances(client));
        let close = next != Next::KeepAlive;
        let sent = answer_health(client, &generation, &head, close, request_id, scratch).await;
        let outcome = Outcome {
            status: if sent.1 { 200 } else { 503 },
            sent: sent.0,
            received: head.len as u64,
            ..Outcome::new(started)
        };
        log(&outcome, request_id);
        return next;
    }

    let limited = context.rate_limit.borrow_mut().check(frontend, peer.ip(), started);
    if let Some((decision, limit)) = limited {
        context.with_metrics(|metrics| metrics.rate_limited(frontend, decision.allowed));
        if !decision.allowed {
            // Refused before any backend is chosen: a limited request never reaches one.
            let ended = Ended::Refused {
                unread_body: !head.framing.is_empty(),
            };
            let next = next_step(ended, circumstances(client));
            let close = next != Next::KeepAlive;
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
            return next;
        }
    }

    let timeouts = &generation.config.timeouts;
    let own = generation.config.frontends.get(frontend);
    let request = Request {
        head_bytes,
        head: &head,
        peer,
        peer_ip,
        scheme,
        request_id,
        identity: identity.as_ref().map(|(header, subject)| Identity {
            header: header.as_bytes(),
            subject: subject.as_deref().map(str::as_bytes),
        }),
        started,
        request_timeout: own
            .and_then(|frontend| frontend.request_timeout)
            .unwrap_or(timeouts.request),
        per_try_timeout: own
            .and_then(|frontend| frontend.per_try_timeout)
            .or(timeouts.per_try)
            .unwrap_or(timeouts.upstream_response),
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
    let failure = match result {
        Ok(disposition) => {
            log(&outcome, request_id);
            return next_step(Ended::Forwarded(disposition), circumstances(client));
        }
        Err(failure) => failure,
    };
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
    if failure.response_started {
        log(&outcome, request_id);
        return next_step(Ended::FailedMidResponse, circumstances(client));
    }
    let ended = Ended::FailedBeforeResponse {
        request_consumed: failure.request_consumed,
    };
    let next = next_step(ended, circumstances(client));
    outcome.sent += respond_with_error(
        client,
        &generation,
        error,
        ReplyTo {
            version: head.version,
            // A HEAD response has no body, however the error reads: the connection stays in sync.
            head_only: head.method == Method::Head,
        },
        next != Next::KeepAlive,
        request_id,
        scratch,
    )
    .await;
    outcome.status = error.status().unwrap_or(0);
    log(&outcome, request_id);
    next
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

#[cfg(test)]
mod tests {
    use super::*;

    const CALM: Circumstances = Circumstances {
        client_close: false,
        draining: false,
        pipelined: false,
    };

    #[test]
    fn a_connection_is_kept_only_when_everything_allows_it() {
        assert_eq!(next_step(Ended::Answered, CALM), Next::KeepAlive);
        assert_eq!(
            next_step(Ended::Forwarded(Disposition::KeepAlive), CALM),
            Next::KeepAlive
        );
        let consumed = Ended::FailedBeforeResponse { request_consumed: true };
        assert_eq!(next_step(consumed, CALM), Next::KeepAlive);
        for ending in [
            Circumstances {
                client_close: true,
                ..CALM
            },
            Circumstances { draining: true, ..CALM },
        ] {
            assert_eq!(next_step(Ended::Answered, ending), Next::Close);
            assert_eq!(next_step(consumed, ending), Next::LingerClose);
            assert_ne!(
                next_step(Ended::Refused { unread_body: false }, ending),
                Next::KeepAlive
            );
        }
    }

    #[test]
    fn a_connection_with_unread_input_lingers_rather_than_resets() {
        assert_eq!(next_step(Ended::Refused { unread_body: true }, CALM), Next::LingerClose);
        let half_read = Ended::FailedBeforeResponse {
            request_consumed: false,
        };
        assert_eq!(next_step(half_read, CALM), Next::LingerClose);
        assert_eq!(
            next_step(Ended::Forwarded(Disposition::Linger), CALM),
            Next::LingerClose
        );
        let pipelined = Circumstances {
            pipelined: true,
            ..CALM
        };
        assert_eq!(
            next_step(Ended::Forwarded(Disposition::Close), pipelined),
            Next::LingerClose
        );
        assert_eq!(next_step(Ended::FailedMidResponse, pipelined), Next::LingerClose);
        assert_eq!(next_step(Ended::Forwarded(Disposition::Close), CALM), Next::Close);
        assert_eq!(next_step(Ended::FailedMidResponse, CALM), Next::Close);
    }

    #[test]
    fn a_shutdown_ends_a_kept_alive_exchange() {
        let draining = Circumstances { draining: true, ..CALM };
        assert_eq!(
            next_step(Ended::Forwarded(Disposition::KeepAlive), draining),
            Next::Close
        );
    }
}
