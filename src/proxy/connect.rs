//! How a request gets its upstream connection: a clean pooled one, else a descriptor slot and a new connect, else
//! a first-come-first-served wait for either, bounded by `timeouts.connect`.
//!
//! Connection hygiene: an idle connection is reused only if nothing is waiting on it; one with bytes pending or at
//! EOF is closed, never handed to a request.

use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::error::ProxyError;
use crate::net::descriptors::out_of_descriptors;
use crate::net::slots::Slot;
use crate::net::tls::TlsStream;
use crate::net::transport::Transport;
use crate::net::{BufferedStream, PendingInput};
use crate::shard::backend::TlsTarget;
use crate::shard::{BackendState, Generation, WorkerContext};

/// An upstream connection for one attempt.
pub struct Opened {
    pub connection: BufferedStream,
    /// Taken from the idle pool rather than connected for this request.
    pub reused: bool,
}

/// Opens a connection to `backend` for a request: a clean pooled one, else a new one, waiting its turn when this
/// worker holds all the upstream connections it may.
pub async fn open(
    context: &WorkerContext,
    generation: &Generation,
    backend: &BackendState,
    now: Instant,
) -> Result<Opened, ProxyError> {
    let max_idle = generation.config.upstream.idle_timeout;
    let deadline = now + generation.config.timeouts.connect;
    // With requests queued for an upstream connection, this one joins the queue rather than overtake them.
    let at_once = if context.upstream_slots.freed.has_waiters() {
        None
    } else {
        opening_now(context, backend, now, max_idle)
    };
    let opening = match at_once {
        Some(opening) => opening,
        None => Box::pin(wait_for_opening(context, backend, max_idle, deadline)).await?,
    };
    match opening {
        Opening::Idle(connection) => Ok(Opened {
            connection,
            reused: true,
        }),
        Opening::Slot(slot) => Ok(Opened {
            connection: Box::pin(connect(context, backend, slot, deadline)).await?,
            reused: false,
        }),
    }
}

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
            let transport = match &backend.tls {
                None => Transport::from(stream),
                Some(target) => Box::pin(handshake(context, backend, target, stream, deadline)).await?,
            };
            Ok(BufferedStream::new(transport, &context.watchdog).hold(slot))
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

/// The client side of TLS to an `https://` backend, within what is left of the connect deadline.
async fn handshake(
    context: &WorkerContext,
    backend: &BackendState,
    target: &TlsTarget,
    stream: TcpStream,
    deadline: Instant,
) -> Result<Transport, ProxyError> {
    let failed = |reason: String| ProxyError::UpstreamTls {
        backend: backend.id.clone(),
        reason,
    };
    let config = context.tls.borrow().upstream();
    let Some(config) = config else {
        return Err(failed("no TLS client config on this core".to_string()));
    };
    let Some(name) = target.name.clone() else {
        return Err(failed(
            "its server_name is neither a DNS name nor an IP address".to_string(),
        ));
    };
    let mut tls = TlsStream::client(stream, config, name).map_err(|error| failed(error.to_string()))?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    match monoio::time::timeout(remaining, tls.handshake()).await {
        Ok(Ok(())) => Ok(Transport::from(tls)),
        Ok(Err(error)) => Err(failed(error.to_string())),
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
fn opening_now(context: &WorkerContext, backend: &BackendState, now: Instant, max_idle: Duration) -> Option<Opening> {
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
    max_idle: Duration,
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

/// The freshest idle connection to `backend` on which nothing is waiting to be read. One with bytes pending holds
/// a response nobody asked for (a misbehaving backend), one at EOF was closed by the backend: either would hand
/// this request an answer that is not its own, so it is closed and the next one is checked.
fn take_clean_idle(
    context: &WorkerContext,
    backend: &BackendState,
    now: Instant,
    max_idle: Duration,
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
