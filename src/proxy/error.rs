//! Everything that can go wrong with one proxied request, and the one place that decides what each means: the status
//! the client sees, the label metrics and logs use, and which side was at fault. Every match is exhaustive, so a new
//! variant does not compile until someone decides all three.

use std::io;

use super::body::BodyError;
use crate::http::{ChunkedError, HeadError};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request head: {0}")]
    BadRequest(#[from] HeadError),
    #[error("bad request body: {0}")]
    BadRequestBody(ChunkedError),
    #[error("client sent no complete request head in time")]
    ClientHeaderTimeout,
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("client sent its request body too slowly")]
    ClientBodyTimeout,
    #[error("client stalled while sending or receiving a body")]
    ClientTimeout,
    #[error("client closed the connection mid-request")]
    ClientClosed,
    #[error("client connection failed: {0}")]
    ClientIo(io::Error),
    #[error("rate limit exceeded")]
    RateLimited,
    #[error("no backend available")]
    NoBackend,
    #[error("every backend that could take the request has its circuit breaker open")]
    CircuitOpen,
    #[error("every backend is unhealthy (healthcheck.panic_mode = \"fail_closed\")")]
    NoHealthyBackend,
    #[error("out of file descriptors")]
    OutOfDescriptors,
    #[error("every upstream connection this worker may open is in use")]
    UpstreamLimit,
    #[error("every backend that could take the request is at its max_connections ({})", if *.waited { "the wait in the capacity queue ran out" } else { "and the capacity queue is full" })]
    AtCapacity { waited: bool },
    #[error("connect to backend {backend} failed: {source}")]
    ConnectFailed { backend: String, source: io::Error },
    #[error("TLS to backend {backend} failed: {reason}")]
    UpstreamTls { backend: String, reason: String },
    #[error("connect to backend {backend} timed out")]
    ConnectTimeout { backend: String },
    #[error("backend {backend} did not respond in time")]
    UpstreamTimeout { backend: String },
    #[error("no response within the request's deadline (timeouts.request)")]
    RequestTimeout,
    #[error("{0}; the retry budget is spent, so it was not retried")]
    RetryBudgetExhausted(Box<ProxyError>),
    #[error("backend {backend} connection failed: {source}")]
    UpstreamIo { backend: String, source: io::Error },
    #[error("backend {backend} closed the connection before responding")]
    UpstreamClosed { backend: String },
    #[error("backend {backend} sent an invalid response: {reason}")]
    BadResponse { backend: String, reason: String },
}

/// Whether an upstream connection failed in TLS (a rustls error: an alert from the backend, a bad record) rather
/// than in the socket.
fn is_tls_failure(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// Who caused a failure: it decides whether the backend is blamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Proxy,
}

impl ProxyError {
    /// The status to answer with, or `None` when no answer can reach the client.
    pub fn status(&self) -> Option<u16> {
        match self {
            ProxyError::BadRequest(head) => Some(match head {
                HeadError::Malformed(_) => 400,
                HeadError::TooLarge(_) | HeadError::TooManyHeaders(_) => 431,
                HeadError::UriTooLong(_) => 414,
                HeadError::UnsupportedVersion => 505,
                HeadError::UnsupportedTransferCoding => 501,
                HeadError::UnsupportedExpectation => 417,
                HeadError::MethodNotAllowed => 405,
            }),
            ProxyError::BadRequestBody(_) => Some(400),
            ProxyError::ClientHeaderTimeout | ProxyError::ClientBodyTimeout => Some(408),
            ProxyError::BodyTooLarge { .. } => Some(413),
            ProxyError::ClientTimeout | ProxyError::ClientClosed | ProxyError::ClientIo(_) => None,
            ProxyError::RateLimited => Some(429),
            ProxyError::NoBackend
            | ProxyError::CircuitOpen
            | ProxyError::NoHealthyBackend
            | ProxyError::OutOfDescriptors
            | ProxyError::UpstreamLimit
            | ProxyError::AtCapacity { .. } => Some(503),
            ProxyError::ConnectFailed { .. } | ProxyError::UpstreamTls { .. } => Some(502),
            ProxyError::ConnectTimeout { .. } | ProxyError::UpstreamTimeout { .. } | ProxyError::RequestTimeout => {
                Some(504)
            }
            ProxyError::RetryBudgetExhausted(cause) => cause.status(),
            ProxyError::UpstreamIo { .. } | ProxyError::UpstreamClosed { .. } | ProxyError::BadResponse { .. } => {
                Some(502)
            }
        }
    }

    /// A short, bounded category name for logs, metrics and the response body.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(head) => match head {
                HeadError::Malformed(_) => "bad_request",
                HeadError::TooLarge(_) | HeadError::TooManyHeaders(_) => "header_too_large",
                HeadError::UriTooLong(_) => "uri_too_long",
                HeadError::UnsupportedVersion => "unsupported_version",
                HeadError::UnsupportedTransferCoding => "unsupported_transfer_coding",
                HeadError::UnsupportedExpectation => "unsupported_expectation",
                HeadError::MethodNotAllowed => "method_not_allowed",
            },
            ProxyError::BadRequestBody(_) => "bad_request_body",
            ProxyError::ClientHeaderTimeout => "client_header_timeout",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::ClientBodyTimeout => "client_body_timeout",
            ProxyError::ClientTimeout => "client_timeout",
            ProxyError::ClientClosed => "client_closed",
            ProxyError::ClientIo(_) => "client_io",
            ProxyError::RateLimited => "rate_limited",
            ProxyError::NoBackend => "no_backend",
            ProxyError::CircuitOpen => "circuit_open",
            ProxyError::NoHealthyBackend => "no_healthy_backend",
            ProxyError::OutOfDescriptors => "out_of_descriptors",
            ProxyError::UpstreamLimit => "upstream_limit",
            ProxyError::AtCapacity { .. } => "backend_at_capacity",
            ProxyError::ConnectFailed { .. } => "connect_failed",
            ProxyError::UpstreamTls { .. } => "upstream_tls",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::RequestTimeout => "request_timeout",
            ProxyError::RetryBudgetExhausted(_) => "retry_budget_exhausted",
            // After the handshake, a backend can still refuse over TLS: a TLS 1.3 server checks the client's
            // certificate once the client has finished, and its alert arrives with the first read.
            ProxyError::UpstreamIo { source, .. } if is_tls_failure(source) => "upstream_tls",
            ProxyError::UpstreamIo { .. } => "upstream_io",
            ProxyError::UpstreamClosed { .. } => "upstream_closed",
            ProxyError::BadResponse { .. } => "bad_response",
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::BadRequestBody(_)
            | ProxyError::ClientHeaderTimeout
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientBodyTimeout
            | ProxyError::ClientTimeout
            | ProxyError::ClientClosed
            | ProxyError::ClientIo(_)
            | ProxyError::RateLimited => Side::Client,
            ProxyError::NoBackend
            | ProxyError::CircuitOpen
            | ProxyError::NoHealthyBackend
            | ProxyError::OutOfDescriptors
            | ProxyError::UpstreamLimit
            | ProxyError::AtCapacity { .. } => Side::Proxy,
            ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::RequestTimeout
            | ProxyError::UpstreamIo { .. }
            | ProxyError::UpstreamClosed { .. }
            | ProxyError::BadResponse { .. } => Side::Upstream,
            ProxyError::RetryBudgetExhausted(cause) => cause.side(),
        }
    }

    /// What a retry this failure allows; whether the request itself can be sent again is the request's to say
    /// (`retry::replayable`).
    pub fn retry(&self) -> Retry {
        match self {
            // Nothing of the request was sent: another backend may take it.
            ProxyError::ConnectFailed { .. } | ProxyError::UpstreamTls { .. } | ProxyError::ConnectTimeout { .. } => {
                Retry::OtherBackend
            }
            ProxyError::UpstreamIo { .. } | ProxyError::UpstreamClosed { .. } => Retry::FreshConnection,
            ProxyError::UpstreamTimeout { .. } => Retry::Elsewhere,
            ProxyError::BadRequest(_)
            | ProxyError::BadRequestBody(_)
            | ProxyError::ClientHeaderTimeout
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientBodyTimeout
            | ProxyError::ClientTimeout
            | ProxyError::ClientClosed
            | ProxyError::ClientIo(_)
            | ProxyError::RateLimited
            | ProxyError::NoBackend
            | ProxyError::CircuitOpen
            | ProxyError::NoHealthyBackend
            | ProxyError::OutOfDescriptors
            | ProxyError::UpstreamLimit
            | ProxyError::AtCapacity { .. }
            | ProxyError::RequestTimeout
            | ProxyError::RetryBudgetExhausted(_)
            | ProxyError::BadResponse { .. } => Retry::No,
        }
    }

    /// An upstream failure while moving a body, named for `backend`.
    pub fn from_upstream_body(backend: &str, error: BodyError) -> ProxyError {
        match error {
            BodyError::Read(source) | BodyError::Write(source) if source.kind() == io::ErrorKind::TimedOut => {
                ProxyError::UpstreamTimeout {
                    backend: backend.to_string(),
                }
            }
            BodyError::Read(source) | BodyError::Write(source) => ProxyError::UpstreamIo {
                backend: backend.to_string(),
                source,
            },
            BodyError::ReadEof => ProxyError::UpstreamClosed {
                backend: backend.to_string(),
            },
            BodyError::Malformed(error) => ProxyError::bad_response(backend, &error.to_string()),
            // Only a watched copy stops this way, and the sender handles it before mapping errors.
            BodyError::Answered(_) => ProxyError::bad_response(backend, "answered before the request body was sent"),
            // Budgets bound request bodies only.
            BodyError::TooLarge(_) | BodyError::TooSlow => {
                ProxyError::bad_response(backend, "response body out of budget")
            }
        }
    }

    /// A client failure while moving a body.
    pub fn from_client_body(error: BodyError) -> ProxyError {
        match error {
            BodyError::Read(source) | BodyError::Write(source) if source.kind() == io::ErrorKind::TimedOut => {
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

    pub fn bad_response(backend: &str, reason: &str) -> ProxyError {
        ProxyError::BadResponse {
            backend: backend.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// What a retry a failed attempt allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not sent again: the backend may have acted on it, its answer was slow or garbled rather than missing, or
    /// the failure was not the backend's (the client's, or corelb's own limits).
    No,
    /// Nothing reached a backend: the request goes to another one.
    OtherBackend,
    /// The connection ended before any response byte: a request that can be replayed is sent again on a fresh
    /// connection, to another backend when there is one (the failed one is likely dying).
    FreshConnection,
    /// The try timed out waiting for the response head: the backend may have received the request, so only an
    /// idempotent one that can be replayed goes to another backend.
    Elsewhere,
}

/// The standard reason phrase for the statuses the proxy generates.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_alert_after_the_handshake_is_an_upstream_tls_failure() {
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        let refused = ProxyError::UpstreamIo {
            backend: "b".into(),
            source: alert,
        };
        assert_eq!((refused.status(), refused.label()), (Some(502), "upstream_tls"));
        let reset = ProxyError::UpstreamIo {
            backend: "b".into(),
            source: io::Error::from(io::ErrorKind::ConnectionReset),
        };
        assert_eq!(reset.label(), "upstream_io");
    }

    #[test]
    fn maps_categories_to_statuses() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let cases: Vec<(ProxyError, Option<u16>, &str)> = vec![
            (
                ProxyError::BadRequest(HeadError::Malformed("x")),
                Some(400),
                "bad_request",
            ),
            (
                ProxyError::BadRequest(HeadError::TooLarge(1)),
                Some(431),
                "header_too_large",
            ),
            (
                ProxyError::BadRequest(HeadError::UriTooLong(1)),
                Some(414),
                "uri_too_long",
            ),
            (
                ProxyError::BadRequest(HeadError::UnsupportedVersion),
                Some(505),
                "unsupported_version",
            ),
            (ProxyError::NoBackend, Some(503), "no_backend"),
            (ProxyError::CircuitOpen, Some(503), "circuit_open"),
            (
                ProxyError::AtCapacity { waited: true },
                Some(503),
                "backend_at_capacity",
            ),
            (ProxyError::NoHealthyBackend, Some(503), "no_healthy_backend"),
            (
                ProxyError::ConnectFailed {
                    backend: "b".into(),
                    source: refused,
                },
                Some(502),
                "connect_failed",
            ),
            (
                ProxyError::UpstreamTimeout { backend: "b".into() },
                Some(504),
                "upstream_timeout",
            ),
            (ProxyError::ClientClosed, None, "client_closed"),
        ];
        for (error, status, label) in cases {
            assert_eq!(error.status(), status, "{error}");
            assert_eq!(error.label(), label, "{error}");
        }
    }

    #[test]
    fn only_a_failed_connect_goes_elsewhere_and_only_a_lost_connection_is_replayed() {
        let refused = ProxyError::ConnectFailed {
            backend: "b".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(refused.retry(), Retry::OtherBackend);
        assert_eq!(
            ProxyError::ConnectTimeout { backend: "b".into() }.retry(),
            Retry::OtherBackend
        );
        assert_eq!(
            ProxyError::UpstreamClosed { backend: "b".into() }.retry(),
            Retry::FreshConnection
        );
        assert_eq!(
            ProxyError::UpstreamTimeout { backend: "b".into() }.retry(),
            Retry::Elsewhere,
            "a try that timed out may go elsewhere, if the request is idempotent"
        );
        assert_eq!(ProxyError::RequestTimeout.retry(), Retry::No);
        for own_limit in [
            ProxyError::OutOfDescriptors,
            ProxyError::UpstreamLimit,
            ProxyError::NoBackend,
        ] {
            assert_eq!(own_limit.retry(), Retry::No, "{own_limit}");
        }
    }
}
