//! One health probe: connect (and, to an `https://` backend, run the TLS handshake, verifying the backend's
//! certificate as a request's connection would), send `METHOD path` with `Connection: close`, read the status
//! line, all within the probe's timeout. Only the status line is read; the connection is closed after it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;
use rustls::pki_types::ServerName;

use crate::net::tls::TlsStream;
use crate::net::transport::Transport;

/// The most bytes read looking for the end of the status line.
const MAX_STATUS_LINE: usize = 1024;

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Io(String),
    #[error("closed before a status line")]
    Closed,
    #[error("not an HTTP/1.x status line: {0:?}")]
    BadStatusLine(String),
    #[error("answered {status}, expected {low}-{high}")]
    UnexpectedStatus { status: u16, low: u16, high: u16 },
}

impl ProbeError {
    /// A short, bounded name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            ProbeError::Connect(_) => "connect_failed",
            ProbeError::Tls(_) => "tls_failed",
            ProbeError::Timeout(_) => "timeout",
            ProbeError::Io(_) | ProbeError::Closed => "connection_failed",
            ProbeError::BadStatusLine(_) => "bad_response",
            ProbeError::UnexpectedStatus { .. } => "unexpected_status",
        }
    }
}

/// How a probe speaks TLS to an `https://` backend: the prober's client config (the same roots and client
/// certificate as the workers') and the name the certificate must show.
#[derive(Debug, Clone)]
pub struct ProbeTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

impl PartialEq for ProbeTls {
    fn eq(&self, other: &ProbeTls) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.name == other.name
    }
}

/// The request a probe sends.
pub fn probe_request(method: &str, path: &str, host: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: corelb-health-check\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// Probes `addr` (over TLS when `tls` is set) with `request`; passes when the status lies in `expected`
/// (inclusive).
pub async fn probe(
    addr: SocketAddr,
    tls: Option<&ProbeTls>,
    request: Vec<u8>,
    timeout: Duration,
    expected: (u16, u16),
) -> Result<u16, ProbeError> {
    let status = match monoio::time::timeout(timeout, status_of(addr, tls, request)).await {
        Ok(result) => result?,
        Err(_) => return Err(ProbeError::Timeout(timeout)),
    };
    if (expected.0..=expected.1).contains(&status) {
        Ok(status)
    } else {
        Err(ProbeError::UnexpectedStatus {
            status,
            low: expected.0,
            high: expected.1,
        })
    }
}

async fn status_of(addr: SocketAddr, tls: Option<&ProbeTls>, request: Vec<u8>) -> Result<u16, ProbeError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|error| ProbeError::Connect(error.to_string()))?;
    let mut stream = match tls {
        None => Transport::from(tcp),
        Some(tls) => {
            let failed = |error: std::io::Error| ProbeError::Tls(error.to_string());
            let mut stream = TlsStream::client(tcp, Arc::clone(&tls.config), tls.name.clone()).map_err(failed)?;
            stream.handshake().await.map_err(failed)?;
            Transport::from(stream)
        }
    };
    let (written, _) = stream.write_all(request).await;
    written.map_err(|error| ProbeError::Io(error.to_string()))?;
    let mut received = Vec::with_capacity(512);
    loop {
        // Room to read into: an empty spare capacity would read as the peer closing.
        received.reserve(512);
        let (read, returned) = stream.read_into(received).await;
        received = returned;
        let read = read.map_err(|error| ProbeError::Io(error.to_string()))?;
        if read == 0 {
            return match parse_status_line(&received) {
                Some(result) => result,
                None => Err(ProbeError::Closed),
            };
        }
        if let Some(result) = parse_status_line(&received) {
            return result;
        }
        if received.len() >= MAX_STATUS_LINE {
            return Err(ProbeError::BadStatusLine(lossy_start(&received)));
        }
    }
}

/// The status of a complete status line at the start of `received`; `None` while the line is incomplete.
fn parse_status_line(received: &[u8]) -> Option<Result<u16, ProbeError>> {
    let end = received.windows(2).position(|pair| pair == b"\r\n")?;
    let line = &received[..end];
    let status = line
        .strip_prefix(b"HTTP/1.")
        .filter(|rest| rest.len() >= 5 && rest[0].is_ascii_digit() && rest[1] == b' ')
        .map(|rest| &rest[2..5])
        .filter(|digits| digits.iter().all(u8::is_ascii_digit))
        .filter(|_| line.len() == 12 || line.get(12) == Some(&b' '))
        .and_then(|digits| std::str::from_utf8(digits).ok()?.parse::<u16>().ok());
    Some(status.ok_or_else(|| ProbeError::BadStatusLine(lossy_start(line))))
}

fn lossy_start(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_is_read_strictly() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(Ok(200)));
        assert_eq!(parse_status_line(b"HTTP/1.0 503\r\n"), Some(Ok(503)));
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), None, "incomplete");
        for bad in [
            &b"HTTP/2 200 OK\r\n"[..],
            b"HTTP/1.1 20 OK\r\n",
            b"HTTP/1.1 2000 OK\r\n",
            b"hello\r\n",
        ] {
            assert!(
                matches!(parse_status_line(bad), Some(Err(ProbeError::BadStatusLine(_)))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_probe_request_asks_to_close() {
        let request = probe_request("GET", "/health", "a:1");
        assert_eq!(
            request,
            b"GET /health HTTP/1.1\r\nHost: a:1\r\nUser-Agent: corelb-health-check\r\nConnection: close\r\n\r\n"
        );
    }
}
