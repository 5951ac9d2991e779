//! The heads a proxy forwards: hop-by-hop fields removed (RFC 9110 §7.6.1), framing rewritten to what the proxy
//! actually sends, and the forwarding fields (`X-Forwarded-*`, `Via`) set.

use std::io::Write;

use super::head::{BodyFraming, Field, RequestHead, ResponseHead, Version};

/// The `Via` received-by name.
const VIA: &[u8] = b"1.1 corelb";

/// Fields never forwarded as received: hop-by-hop ones, framing (rewritten), and those the proxy sets itself.
pub fn is_rewritten(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 13] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"via",
        b"x-request-id",
    ];
    NAMES.iter().any(|known| name.eq_ignore_ascii_case(known))
        // Proxy-Connection, Proxy-Authorization, ...; and `Proxy` itself (httpoxy).
        || (name.len() >= 5 && name[..5].eq_ignore_ascii_case(b"proxy"))
}

fn forwardable<'a>(
    buf: &'a [u8],
    fields: &'a [Field],
    connection_options: &'a [std::ops::Range<usize>],
) -> impl Iterator<Item = &'a Field> + 'a {
    fields.iter().filter(move |field| {
        let name = &buf[field.name.clone()];
        !is_rewritten(name)
            && !connection_options
                .iter()
                .any(|option| buf[option.clone()].eq_ignore_ascii_case(name))
    })
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the comma-joined values of every field called `name`, then `extra`.
fn put_appended(out: &mut Vec<u8>, buf: &[u8], fields: &[Field], name: &[u8], extra: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for field in fields {
        if buf[field.name.clone()].eq_ignore_ascii_case(name) {
            let value = buf[field.value.clone()].trim_ascii();
            if !value.is_empty() {
                out.extend_from_slice(value);
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
}

fn put_framing(out: &mut Vec<u8>, framing: BodyFraming) {
    match framing {
        BodyFraming::Length(length) => {
            put_content_length(out, length);
        }
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
}

/// What the proxy knows about the client connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide<'a> {
    /// The client's address as text, formatted once per connection.
    pub address: &'a [u8],
    pub scheme: &'static str,
    /// `Host` to send when the client sent none (HTTP/1.0): the backend's authority.
    pub fallback_host: &'a [u8],
    /// Sent upstream as `X-Request-Id` (the client's, when well-formed, else one corelb made).
    pub request_id: &'a [u8],
    /// The client's verified TLS identity, on a frontend that passes it on.
    pub identity: Option<Identity<'a>>,
}

/// The header a frontend passes the client certificate's subject in, and the subject (`None`: the client showed
/// no certificate). The client's own fields of that name are never forwarded, so a client cannot claim one.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub header: &'a [u8],
    pub subject: Option<&'a [u8]>,
}

/// Writes the HTTP/1.1 request head to send upstream for `head` (parsed from `buf`).
pub fn write_upstream_request(out: &mut Vec<u8>, buf: &[u8], head: &RequestHead, client: &ClientSide) {
    out.extend_from_slice(&buf[head.method_range.clone()]);
    out.push(b' ');
    let target = &buf[head.target.clone()];
    // An absolute-form target without a path ("http://h?q") still needs one in origin-form.
    if target.first() != Some(&b'/') && target != b"*" {
        out.push(b'/');
    }
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = head
        .host
        .clone()
        .map(|range| &buf[range])
        .unwrap_or(client.fallback_host);
    put_field(out, b"Host", host);
    for field in forwardable(buf, &head.fields, &head.connection_options) {
        // The proxy answers `Expect: 100-continue` itself and then streams the body.
        let name = &buf[field.name.clone()];
        if name.eq_ignore_ascii_case(b"expect")
            || client
                .identity
                .is_some_and(|identity| name.eq_ignore_ascii_case(identity.header))
        {
            continue;
        }
        put_field(out, name, &buf[field.value.clone()]);
    }
    if let Some(Identity {
        header,
        subject: Some(subject),
    }) = client.identity
    {
        put_field(out, header, subject);
    }
    put_appended(out, buf, &head.fields, b"X-Forwarded-For", client.address);
    put_field(out, b"X-Forwarded-Proto", client.scheme.as_bytes());
    put_field(out, b"X-Forwarded-Host", host);
    put_appended(out, buf, &head.fields, b"Via", VIA);
    if !client.request_id.is_empty() {
        put_field(out, b"X-Request-Id", client.request_id);
    }
    put_framing(out, head.framing);
    out.extend_from_slice(b"\r\n");
}

/// How the proxy frames a response body towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    None,
    Length(u64),
    Chunked,
    /// Raw bytes, then close: for HTTP/1.0 clients when the length is not known in advance.
    UntilClose,
}

impl ClientFraming {
    /// Chooses client framing for an upstream body: HTTP/1.1 clients get unknown lengths re-chunked so their
    /// connection survives; HTTP/1.0 clients cannot take chunks.
    pub fn for_response(upstream: BodyFraming, client_version: Version) -> ClientFraming {
        match (upstream, client_version) {
            (BodyFraming::None, _) => ClientFraming::None,
            (BodyFraming::Length(length), _) => ClientFraming::Length(length),
            (BodyFraming::Chunked | BodyFraming::UntilClose, Version::Http11) => ClientFraming::Chunked,
            (BodyFraming::Chunked | BodyFraming::UntilClose, Version::Http10) => ClientFraming::UntilClose,
        }
    }

    pub fn forces_close(self) -> bool {
        self == ClientFraming::UntilClose
    }
}

/// Per-response choices the proxy made.
#[derive(Debug, Clone, Copy)]
pub struct ResponseShape<'a> {
    pub framing: ClientFraming,
    pub client_version: Version,
    /// The proxy will close the client connection after this response.
    pub close: bool,
    /// Worker index to expose as `X-Corelb-Worker`, when configured.
    pub worker: Option<usize>,
    /// Returned as `X-Request-Id` (empty: none).
    pub request_id: &'a [u8],
    /// A whole `Set-Cookie: ...\r\n` line to add (sticky sessions; empty: none).
    pub set_cookie: &'a [u8],
}

/// Writes the response head to send to the client for `head` (parsed from `buf`).
pub fn write_client_response(out: &mut Vec<u8>, buf: &[u8], head: &ResponseHead, shape: &ResponseShape) {
    out.extend_from_slice(b"HTTP/1.1 ");
    put_decimal(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(&buf[head.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    for field in forwardable(buf, &head.fields, &head.connection_options) {
        put_field(out, &buf[field.name.clone()], &buf[field.value.clone()]);
    }
    put_appended(out, buf, &head.fields, b"Via", VIA);
    match shape.framing {
        ClientFraming::Length(length) => put_content_length(out, length),
        ClientFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        // A 304 or HEAD response keeps the upstream's Content-Length: it describes the representation.
        ClientFraming::None => {
            if let Some(field) = head
                .fields
                .iter()
                .find(|field| buf[field.name.clone()].eq_ignore_ascii_case(b"content-length"))
            {
                put_field(out, b"Content-Length", &buf[field.value.clone()]);
            }
        }
        ClientFraming::UntilClose => {}
    }
    put_connection(out, shape.close, shape.client_version);
    if let Some(worker) = shape.worker {
        out.extend_from_slice(b"X-Corelb-Worker: ");
        put_decimal(out, worker as u64);
        out.extend_from_slice(b"\r\n");
    }
    if !shape.request_id.is_empty() {
        put_field(out, b"X-Request-Id", shape.request_id);
    }
    out.extend_from_slice(shape.set_cookie);
    out.extend_from_slice(b"\r\n");
}

fn put_content_length(out: &mut Vec<u8>, length: u64) {
    out.extend_from_slice(b"Content-Length: ");
    put_decimal(out, length);
    out.extend_from_slice(b"\r\n");
}

/// Appends `value` in decimal; `write!` costs a formatter round trip per number on the request path.
fn put_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

fn put_connection(out: &mut Vec<u8>, close: bool, client_version: Version) {
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
}

/// A short response generated by the proxy itself (errors, its own health answer).
#[derive(Debug, Clone, Copy)]
pub struct LocalResponse<'a> {
    pub status: u16,
    pub reason: &'a str,
    pub content_type: &'a str,
    pub body: &'a str,
    pub close: bool,
    pub version: Version,
    /// Returned as `X-Request-Id` (empty: none).
    pub request_id: &'a [u8],
    /// A HEAD request: the head only.
    pub head_only: bool,
    /// Further fields, already formatted as `Name: value\r\n` lines (e.g. `Retry-After`).
    pub extra_fields: &'a str,
}

/// Writes a complete local response.
pub fn write_local_response(out: &mut Vec<u8>, response: &LocalResponse) {
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len()
    );
    out.extend_from_slice(response.extra_fields.as_bytes());
    put_connection(out, response.close, response.version);
    if !response.request_id.is_empty() {
        put_field(out, b"X-Request-Id", response.request_id);
    }
    out.extend_from_slice(b"\r\n");
    if !response.head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::{parse_request, parse_response, HeadLimits, Method};

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 4096,
        max_request_line: 1024,
        max_headers: 64,
    };

    fn forward(text: &str) -> String {
        forward_with(text, None)
    }

    fn forward_with(text: &str, identity: Option<Identity>) -> String {
        let head = parse_request(text.as_bytes(), &LIMITS).unwrap().unwrap();
        let mut out = Vec::new();
        let client = ClientSide {
            address: b"10.0.0.9",
            scheme: "http",
            fallback_host: b"127.0.0.1:9001",
            request_id: b"",
            identity,
        };
        write_upstream_request(&mut out, text.as_bytes(), &head, &client);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_identity_header_is_the_verified_one_never_the_clients() {
        let text =
            "GET / HTTP/1.1\r\nHost: a\r\nx-client-subject: CN=forged\r\nX-Client-Subject: CN=forged too\r\n\r\n";
        let verified = forward_with(
            text,
            Some(Identity {
                header: b"X-Client-Subject",
                subject: Some(b"CN=alice,O=Example"),
            }),
        );
        assert!(!verified.contains("forged"), "{verified}");
        assert!(
            verified.contains("\r\nX-Client-Subject: CN=alice,O=Example\r\n"),
            "{verified}"
        );
        let anonymous = forward_with(
            text,
            Some(Identity {
                header: b"X-Client-Subject",
                subject: None,
            }),
        );
        assert!(
            !anonymous.to_ascii_lowercase().contains("x-client-subject"),
            "{anonymous}"
        );
        // Without the setting, the field is an ordinary one.
        assert!(forward(text).contains("CN=forged"));
    }

    #[test]
    fn strips_hop_by_hop_and_sets_forwarding_fields() {
        let out = forward(
            "GET /x HTTP/1.1\r\nHost: site\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: 5\r\n\
             TE: trailers\r\nUpgrade: websocket\r\nProxy-Authorization: basic\r\nProxy: evil\r\n\
             X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nVia: 1.0 edge\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            out,
            "GET /x HTTP/1.1\r\nHost: site\r\nAccept: */*\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.9\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: site\r\nVia: 1.0 edge, 1.1 corelb\r\n\r\n"
        );
    }

    #[test]
    fn normalises_framing_and_drops_expect() {
        let out = forward(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        );
        assert!(out.ends_with("Via: 1.1 corelb\r\nContent-Length: 5\r\n\r\n"), "{out}");
        assert_eq!(out.matches("Content-Length").count(), 1);
        assert!(!out.contains("Expect"));
        let chunked = forward("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert!(chunked.contains("\r\nTransfer-Encoding: chunked\r\n"), "{chunked}");
    }

    #[test]
    fn http10_without_host_gets_the_backend_authority() {
        let out = forward("GET / HTTP/1.0\r\n\r\n");
        assert!(out.starts_with("GET / HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n"), "{out}");
    }

    #[test]
    fn response_is_reframed_for_the_client() {
        let text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: X-A\r\nX-A: 1\r\nServer: s\r\n\r\n";
        let head = parse_response(text.as_bytes(), Method::Get, &LIMITS).unwrap().unwrap();
        let mut out = Vec::new();
        let shape = ResponseShape {
            framing: ClientFraming::for_response(head.framing, Version::Http10),
            client_version: Version::Http10,
            close: true,
            worker: Some(1),
            request_id: b"r1",
            set_cookie: b"Set-Cookie: srv=v; Path=/\r\n",
        };
        write_client_response(&mut out, text.as_bytes(), &head, &shape);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: s\r\nVia: 1.1 corelb\r\nConnection: close\r\nX-Corelb-Worker: 1\r\nX-Request-Id: r1\r\n\
             Set-Cookie: srv=v; Path=/\r\n\r\n"
        );
    }

    #[test]
    fn decimals_are_written_exactly() {
        for value in [0u64, 7, 10, 99, 1000, 65_536, u64::MAX] {
            let mut out = b"x".to_vec();
            put_decimal(&mut out, value);
            assert_eq!(out, format!("x{value}").into_bytes());
        }
    }
}
