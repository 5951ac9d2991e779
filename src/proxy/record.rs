//! The one place a finished request is counted in the worker's metrics and written to the access log, whether it
//! was forwarded, refused or answered locally.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use crate::access_log::{format_entry, Entry};
use crate::http::head::{RequestHead, Version};
use crate::http::Method;
use crate::metrics::RequestRecord;
use crate::shard::{BackendState, Generation, WorkerContext};

/// How one request ended, for metrics and the access log.
pub struct Outcome {
    pub started: Instant,
    pub status: u16,
    pub error: Option<&'static str>,
    pub upstream: Option<Duration>,
    pub sent: u64,
    pub received: u64,
    /// The backend involved.
    pub backend: Option<Rc<BackendState>>,
}

impl Outcome {
    pub fn new(started: Instant) -> Outcome {
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

fn field<'a>(head: &RequestHead, head_bytes: &'a [u8], name: &[u8]) -> &'a [u8] {
    head.fields
        .iter()
        .find(|field| head_bytes[field.name.clone()].eq_ignore_ascii_case(name))
        .map_or(&[][..], |field| &head_bytes[field.value.clone()])
}

/// Counts the request and writes its access log line.
#[allow(clippy::too_many_arguments)]
pub fn finish(
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
