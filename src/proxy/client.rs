//! One client connection: read a request head, forward it, repeat while both sides keep the connection alive.
//! Requests on one connection are handled in order, so pipelined requests are answered in order.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use super::error::{reason_phrase, ProxyError, Side};
use super::forward::{forward, Disposition, Request};
use crate::http::head::{parse_request, RequestHead, Version};
use crate::http::rewrite::write_local_response;
use crate::net::BufferedStream;
use crate::worker::context::{Generation, WorkerContext};

/// Serves one accepted client connection until it closes.
pub async fn serve_client(context: Rc<WorkerContext>, stream: TcpStream, peer: SocketAddr) {
    let _guard = context.connection_opened();
    let _ = stream.set_nodelay(true);
    let mut client = BufferedStream::new(stream);
    let mut head_bytes: Vec<u8> = Vec::new();
    let mut scratch: Vec<u8> = Vec::with_capacity(4096);
    let mut first = true;
    loop {
        let generation = context.generation();
        let head = match read_request_head(&context, &generation, &mut client, first).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%peer, category = error.label(), error = %error, "refused request");
                respond_with_error(
                    &mut client,
                    &generation,
                    &error,
                    Version::Http11,
                    true,
                    &mut scratch,
                )
                .await;
                linger_close(client).await;
                return;
            }
        };
        first = false;
        head_bytes.clear();
        head_bytes.extend_from_slice(&client.buffered()[..head.len]);
        client.consume(head.len);

        let started = Instant::now();
        let request = Request {
            head_bytes: &head_bytes,
            head: &head,
            peer,
        };
        match forward(&context, &generation, &mut client, request, &mut scratch).await {
            Ok(Disposition::KeepAlive) => {
                tracing::trace!(%peer, elapsed = ?started.elapsed(), "request done");
            }
            Ok(Disposition::Close) => return,
            Err(failure) => {
                let error = &failure.error;
                match error.side() {
                    Side::Upstream | Side::Proxy => tracing::warn!(
                        %peer, backend = failure.backend.as_deref().unwrap_or("-"), category = error.label(),
                        error = %error, "request failed"
                    ),
                    Side::Client => {
                        tracing::debug!(%peer, category = error.label(), error = %error, "client failed")
                    }
                }
                let keep = failure.request_consumed
                    && !failure.response_started
                    && !head.close
                    && !context.draining();
                if !failure.response_started {
                    respond_with_error(
                        &mut client,
                        &generation,
                        error,
                        head.version,
                        !keep,
                        &mut scratch,
                    )
                    .await;
                }
                if !keep {
                    if !failure.response_started {
                        linger_close(client).await;
                    }
                    return;
                }
            }
        }
        if context.draining() {
            return;
        }
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
            client
                .fill_cancelable(timeouts.client_idle, context.idle_wait_handle())
                .await
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
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                return Err(ProxyError::ClientHeaderTimeout)
            }
            Err(error) => return Err(ProxyError::ClientIo(error)),
        }
    }
}

/// How long, and how much, a refused client may keep sending before its connection is cut.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Closes after an error response without destroying it: closing a socket with unread input makes the kernel send
/// a reset, which can discard the response before the client reads it. So stop writing, read and drop what the
/// client still sends (bounded in time and bytes), then close.
async fn linger_close(mut client: BufferedStream) {
    use monoio::io::AsyncWriteRent;
    if client.stream.shutdown().await.is_err() {
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

/// Sends the short error response for `error`, when the error has one.
async fn respond_with_error(
    client: &mut BufferedStream,
    generation: &Generation,
    error: &ProxyError,
    version: Version,
    close: bool,
    scratch: &mut Vec<u8>,
) {
    let Some(status) = error.status() else {
        return;
    };
    let reason = reason_phrase(status);
    let body = format!("{status} {reason}: {}\n", error.label());
    scratch.clear();
    write_local_response(scratch, status, reason, &body, close, version);
    let (_, buf) = client
        .write_all(
            std::mem::take(scratch),
            generation.config.timeouts.client_idle,
        )
        .await;
    *scratch = buf;
}
