//! Everything that can go wrong with one proxied request, and the one place that decides what each means: the status
//! the client sees, the label metrics and logs use, and which side was at fault. Every match is exhaustive, so a new
//! variant does not compile until someone decides all three.

use std::io;

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
    #[error("out of file descriptors")]
    OutOfDescriptors,
    #[error("every upstream connection this worker may open is in use")]
    UpstreamLimit,
    #[error("connect to backend {backend} failed: {source}")]
    ConnectFailed { backend: String, source: io::Error },
    #[error("connect to backend {backend} timed out")]
    ConnectTimeout { backend: String },
    #[error("backend {backend} did not respond in time")]
    UpstreamTimeout { backend: String },
    #[error("backend {backend} connection failed: {source}")]
    UpstreamIo { backend: String, source: io::Error },
    #[error("backend {backend} closed the connection before responding")]
    UpstreamClosed { backend: String },
    #[error("backend {backend} sent an invalid response: {reason}")]
    BadResponse { backend: String, reason: String },
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
            ProxyError::NoBackend | ProxyError::OutOfDescriptors | ProxyError::UpstreamLimit => Some(503),
            ProxyError::ConnectFailed { .. } => Some(502),
            ProxyError::ConnectTimeout { .. } | ProxyError::UpstreamTimeout { .. } => Some(504),
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
            ProxyError::OutOfDescriptors => "out_of_descriptors",
            ProxyError::UpstreamLimit => "upstream_limit",
            ProxyError::ConnectFailed { .. } => "connect_failed",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
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
            ProxyError::NoBackend | ProxyError::OutOfDescriptors | ProxyError::UpstreamLimit => Side::Proxy,
            ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UpstreamIo { .. }
            | ProxyError::UpstreamClosed { .. }
            | ProxyError::BadResponse { .. } => Side::Upstream,
        }
    }

    /// The upstream connection ended (reset, EOF) rather than answered badly or slowly: the one failure after
    /// which a request may be sent again (see `forward::retry_decision`).
    pub fn connection_lost(&self) -> bool {
        match self {
            ProxyError::UpstreamIo { .. } | ProxyError::UpstreamClosed { .. } => true,
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
            | ProxyError::OutOfDescriptors
            | ProxyError::UpstreamLimit
            | ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::BadResponse { .. } => false,
        }
    }
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
    fn only_a_lost_connection_counts_as_lost() {
        assert!(ProxyError::UpstreamClosed { backend: "b".into() }.connection_lost());
        assert!(!ProxyError::UpstreamTimeout { backend: "b".into() }.connection_lost());
        assert!(!ProxyError::ConnectFailed {
            backend: "b".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused)
        }
        .connection_lost());
    }
}
