//! Responses corelb makes itself: its health path, 429 for a rate-limited request, and the short error response
//! for a failed one.

use super::error::{reason_phrase, ProxyError};
use crate::http::head::{RequestHead, Version};
use crate::http::rewrite::{write_local_response, LocalResponse};
use crate::http::Method;
use crate::net::BufferedStream;
use crate::shard::Generation;

/// Answers 429 with `Retry-After` and the `RateLimit-*` fields (IETF draft). Returns the bytes sent.
#[allow(clippy::too_many_arguments)]
pub async fn respond_rate_limited(
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

/// The request is for corelb's own health path.
pub fn is_health_request(generation: &Generation, head: &RequestHead, head_bytes: &[u8]) -> bool {
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
        .filter(|backend| backend.serving() && !backend.failed())
        .count()
}

/// Answers the health path: 200 when at least one backend can serve, 503 otherwise. Returns (bytes sent, healthy).
pub async fn answer_health(
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

/// What a locally generated reply must respect of the request it answers.
#[derive(Debug, Clone, Copy)]
pub struct ReplyTo {
    pub version: Version,
    pub head_only: bool,
}

/// Sends the short error response for `error`, when the error has one. Returns the bytes sent.
pub async fn respond_with_error(
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
