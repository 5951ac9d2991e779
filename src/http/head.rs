//! Request and response heads: parsed with `httparse`, then checked for the framing rules that keep a proxy safe
//! from request smuggling (RFC 9112 §6): one unambiguous body length, or the request is refused.

use std::mem::MaybeUninit;
use std::ops::Range;

/// Headers a head may carry at most; `limits.max_headers` may lower it.
pub const MAX_HEADERS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Trace,
    Patch,
    Connect,
    Other,
}

impl Method {
    fn from_bytes(name: &[u8]) -> Method {
        match name {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }

    /// RFC 9110 §9.2.2: repeating the request has the same effect as sending it once.
    pub fn is_idempotent(self) -> bool {
        match self {
            Method::Get | Method::Head | Method::Put | Method::Delete | Method::Options | Method::Trace => true,
            Method::Post | Method::Patch | Method::Connect | Method::Other => false,
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    None,
    Length(u64),
    Chunked,
    /// Response only: the body runs until the server closes the connection.
    UntilClose,
}

impl BodyFraming {
    pub fn is_empty(self) -> bool {
        matches!(self, BodyFraming::None | BodyFraming::Length(0))
    }
}

/// One header field as byte ranges into the buffer the head was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// Why a head was refused. The proxy maps each to a status in one place (`proxy::error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed message head: {0}")]
    Malformed(&'static str),
    #[error("message head larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("request line longer than {0} bytes")]
    UriTooLong(usize),
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    #[error("unsupported expectation")]
    UnsupportedExpectation,
    #[error("method not allowed through a reverse proxy")]
    MethodNotAllowed,
}

/// A parsed request head. Ranges point into the buffer given to [`parse_request`].
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Bytes the head occupies, including the blank line; the body starts here.
    pub len: usize,
    pub method: Method,
    pub method_range: Range<usize>,
    /// The origin-form target (`/path?query`) to send upstream.
    pub target: Range<usize>,
    pub version: Version,
    pub fields: Vec<Field>,
    pub framing: BodyFraming,
    /// The host to forward: the authority of an absolute-form target, else the `Host` field.
    pub host: Option<Range<usize>>,
    /// The client asked to close after this exchange (or did not ask to keep an HTTP/1.0 connection).
    pub close: bool,
    pub expect_continue: bool,
    /// Extra field names listed in `Connection`, which are hop-by-hop and not forwarded.
    pub connection_options: Vec<Range<usize>>,
}

/// A parsed response head. Ranges point into the buffer given to [`parse_response`].
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Range<usize>,
    pub version: Version,
    pub fields: Vec<Field>,
    pub framing: BodyFraming,
    /// The server will close (or may close) the connection after this response.
    pub close: bool,
    pub connection_options: Vec<Range<usize>>,
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_request_line: usize,
    pub max_headers: usize,
}

fn offset_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

fn version_of(minor: Option<u8>) -> Result<Version, HeadError> {
    match minor {
        Some(0) => Ok(Version::Http10),
        Some(1) => Ok(Version::Http11),
        _ => Err(HeadError::UnsupportedVersion),
    }
}

fn check_incomplete(buf: &[u8], limits: &HeadLimits, is_request: bool) -> Result<(), HeadError> {
    if is_request {
        let line_end = buf.iter().position(|&byte| byte == b'\n');
        let line_len = line_end.unwrap_or(buf.len());
        if line_len > limits.max_request_line {
            return Err(HeadError::UriTooLong(limits.max_request_line));
        }
    }
    if buf.len() >= limits.max_head_bytes {
        return Err(HeadError::TooLarge(limits.max_head_bytes));
    }
    Ok(())
}

/// What a request line the parser refused at its version means: 505 only for a well-formed `HTTP/x.y` that corelb
/// does not speak (RFC 9110 §15.6.6); a space inside the target, or garbage where the version goes, is a malformed
/// request line and gets 400.
fn request_line_version_error(buf: &[u8]) -> HeadError {
    let line_end = buf.iter().position(|&byte| byte == b'\n').unwrap_or(buf.len());
    let line = buf[..line_end].strip_suffix(b"\r").unwrap_or(&buf[..line_end]);
    let mut parts = line.split(|&byte| byte == b' ');
    let (Some(_method), Some(_target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return HeadError::Malformed("malformed request line");
    };
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            HeadError::UnsupportedVersion
        }
        _ => HeadError::Malformed("malformed request line"),
    }
}

fn map_httparse_error(error: httparse::Error, limits: &HeadLimits) -> HeadError {
    match error {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders(limits.max_headers),
        httparse::Error::Version => HeadError::UnsupportedVersion,
        httparse::Error::HeaderName => HeadError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid header value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status line"),
        httparse::Error::Token => HeadError::Malformed("invalid token in request line"),
    }
}

/// What the framing-relevant fields of a head said.
#[derive(Default)]
struct FramingFields {
    content_length: Option<u64>,
    transfer_encoding_seen: bool,
    /// Transfer codings, in order, are exactly `chunked`.
    chunked_only: bool,
    /// The final transfer coding is `chunked`.
    chunked_last: bool,
    close: bool,
    keep_alive: bool,
    connection_options: Vec<Range<usize>>,
}

fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    // A list of identical values ("5, 5") is tolerated (RFC 9110 §8.6); anything else is refused.
    let mut result: Option<u64> = None;
    for item in value.split(|&byte| byte == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::Malformed("invalid Content-Length"));
        }
        let number = item
            .iter()
            .fold(0u64, |total, digit| total * 10 + u64::from(digit - b'0'));
        match result {
            Some(previous) if previous != number => {
                return Err(HeadError::Malformed("conflicting Content-Length values"))
            }
            _ => result = Some(number),
        }
    }
    result.ok_or(HeadError::Malformed("invalid Content-Length"))
}

fn read_framing_fields(buf: &[u8], fields: &[Field]) -> Result<FramingFields, HeadError> {
    let mut found = FramingFields::default();
    let mut codings = 0usize;
    for field in fields {
        let name = &buf[field.name.clone()];
        let value = &buf[field.value.clone()];
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = parse_content_length(value)?;
            if found.content_length.is_some_and(|previous| previous != length) {
                return Err(HeadError::Malformed("conflicting Content-Length values"));
            }
            found.content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            found.transfer_encoding_seen = true;
            for coding in value.split(|&byte| byte == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                codings += 1;
                found.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&byte| byte == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"close") {
                    found.close = true;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    found.keep_alive = true;
                } else if !option.is_empty() {
                    found.connection_options.push(offset_in(buf, option));
                }
            }
        }
    }
    found.chunked_only = codings == 1 && found.chunked_last;
    Ok(found)
}

fn valid_host(host: &[u8]) -> bool {
    !host.is_empty()
        && host
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || b".-_~:[]%!$&'()*+,;=".contains(&byte))
}

/// Parses a request head from the start of `buf`. `Ok(None)` means more bytes are needed.
pub fn parse_request(buf: &[u8], limits: &HeadLimits) -> Result<Option<RequestHead>, HeadError> {
    // Uninitialised: an initialised array of 256 headers is 8 KiB of stores per parse.
    let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut headers[..max_headers]) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            check_incomplete(buf, limits, true)?;
            return Ok(None);
        }
        Err(httparse::Error::Version) => return Err(request_line_version_error(buf)),
        Err(error) => return Err(map_httparse_error(error, limits)),
    };
    if len > limits.max_head_bytes {
        return Err(HeadError::TooLarge(limits.max_head_bytes));
    }
    let version = version_of(request.version)?;
    let (Some(method_text), Some(path)) = (request.method, request.path) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    let method = Method::from_bytes(method_text.as_bytes());
    if method == Method::Connect {
        return Err(HeadError::MethodNotAllowed);
    }
    let line_len = path.len() + method_text.len() + 11;
    if line_len > limits.max_request_line {
        return Err(HeadError::UriTooLong(limits.max_request_line));
    }
    let method_range = offset_in(buf, method_text.as_bytes());
    let mut target = offset_in(buf, path.as_bytes());
    let mut host = None;
    let path_bytes = path.as_bytes();
    if path_bytes.first() != Some(&b'/') {
        // absolute-form (RFC 9112 §3.2.2): the target's authority replaces Host.
        let scheme_len = if path_bytes.len() >= 7 && path_bytes[..7].eq_ignore_ascii_case(b"http://") {
            7
        } else if path_bytes.len() >= 8 && path_bytes[..8].eq_ignore_ascii_case(b"https://") {
            8
        } else if path_bytes == b"*" && method == Method::Options {
            0
        } else {
            return Err(HeadError::Malformed("invalid request target"));
        };
        if scheme_len > 0 {
            let rest = &path_bytes[scheme_len..];
            let authority_len = rest
                .iter()
                .position(|&byte| byte == b'/' || byte == b'?')
                .unwrap_or(rest.len());
            let authority = target.start + scheme_len..target.start + scheme_len + authority_len;
            if !valid_host(&buf[authority.clone()]) {
                return Err(HeadError::Malformed("invalid authority in request target"));
            }
            host = Some(authority.clone());
            target = authority.end..target.end;
        }
    }
    let fields: Vec<Field> = request
        .headers
        .iter()
        .map(|header| Field {
            name: offset_in(buf, header.name.as_bytes()),
            value: offset_in(buf, header.value),
        })
        .collect();

    let mut host_fields = 0;
    let mut expect_continue = false;
    for field in &fields {
        let name = &buf[field.name.clone()];
        let value = &buf[field.value.clone()];
        if name.eq_ignore_ascii_case(b"host") {
            host_fields += 1;
            let empty_allowed = value.is_empty() && version == Version::Http10;
            if !(valid_host(value) || empty_allowed) {
                return Err(HeadError::Malformed("invalid Host"));
            }
            if host.is_none() && !value.is_empty() {
                host = Some(field.value.clone());
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(HeadError::UnsupportedExpectation);
            }
        }
    }
    if host_fields > 1 {
        return Err(HeadError::Malformed("more than one Host field"));
    }
    if version == Version::Http11 && host_fields == 0 {
        return Err(HeadError::Malformed("HTTP/1.1 request without Host"));
    }

    let framing_fields = read_framing_fields(buf, &fields)?;
    let framing = if framing_fields.transfer_encoding_seen {
        if version == Version::Http10 {
            return Err(HeadError::Malformed("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if framing_fields.content_length.is_some() {
            return Err(HeadError::Malformed("both Transfer-Encoding and Content-Length"));
        }
        if !framing_fields.chunked_last {
            return Err(HeadError::Malformed("final transfer coding is not chunked"));
        }
        if !framing_fields.chunked_only {
            return Err(HeadError::UnsupportedTransferCoding);
        }
        BodyFraming::Chunked
    } else {
        match framing_fields.content_length {
            // An explicit `Content-Length: 0` is forwarded as such: strict servers want it on POST and PUT.
            Some(length) => BodyFraming::Length(length),
            None => BodyFraming::None,
        }
    };
    let close = match version {
        Version::Http11 => framing_fields.close,
        Version::Http10 => framing_fields.close || !framing_fields.keep_alive,
    };
    Ok(Some(RequestHead {
        len,
        method,
        method_range,
        target,
        version,
        fields,
        framing,
        host,
        close,
        expect_continue: expect_continue && !framing.is_empty(),
        connection_options: framing_fields.connection_options,
    }))
}

/// Parses a response head to a request made with `method`. `Ok(None)` means more bytes are needed.
pub fn parse_response(buf: &[u8], method: Method, limits: &HeadLimits) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut headers[..max_headers],
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            check_incomplete(buf, limits, false)?;
            return Ok(None);
        }
        Err(error) => return Err(map_httparse_error(error, limits)),
    };
    if len > limits.max_head_bytes {
        return Err(HeadError::TooLarge(limits.max_head_bytes));
    }
    let version = version_of(response.version)?;
    let status = response.code.ok_or(HeadError::Malformed("missing status code"))?;
    if !(100..=999).contains(&status) {
        return Err(HeadError::Malformed("invalid status code"));
    }
    let reason = response
        .reason
        .map(|reason| offset_in(buf, reason.as_bytes()))
        .unwrap_or(0..0);
    let fields: Vec<Field> = response
        .headers
        .iter()
        .map(|header| Field {
            name: offset_in(buf, header.name.as_bytes()),
            value: offset_in(buf, header.value),
        })
        .collect();
    let framing_fields = read_framing_fields(buf, &fields)?;
    let mut close = match version {
        Version::Http11 => framing_fields.close,
        Version::Http10 => framing_fields.close || !framing_fields.keep_alive,
    };
    // RFC 9112 §6.3: the order of these rules matters.
    let framing = if method == Method::Head || (100..200).contains(&status) || status == 204 || status == 304 {
        BodyFraming::None
    } else if framing_fields.transfer_encoding_seen {
        if framing_fields.content_length.is_some() {
            // Transfer-Encoding wins, but the connection cannot be trusted afterwards.
            close = true;
        }
        // Codings other than a lone `chunked` (or chunked from an HTTP/1.0 server) would reach the client stripped
        // of the header that names them: refuse the response as faulty (RFC 9112 §6.3).
        if framing_fields.chunked_only && version == Version::Http11 {
            BodyFraming::Chunked
        } else {
            return Err(HeadError::UnsupportedTransferCoding);
        }
    } else {
        match framing_fields.content_length {
            Some(length) => BodyFraming::Length(length),
            None => {
                close = true;
                BodyFraming::UntilClose
            }
        }
    };
    Ok(Some(ResponseHead {
        len,
        status,
        reason,
        version,
        fields,
        framing,
        close,
        connection_options: framing_fields.connection_options,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 1024,
        max_request_line: 256,
        max_headers: 16,
    };

    fn request(text: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(text.as_bytes(), &LIMITS)
    }

    fn response(text: &str, method: Method) -> ResponseHead {
        parse_response(text.as_bytes(), method, &LIMITS).unwrap().unwrap()
    }

    #[test]
    fn parses_a_simple_get() {
        let text = "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\n\r\nrest";
        let head = request(text).unwrap().unwrap();
        assert_eq!(head.len, text.len() - 4);
        assert_eq!(head.method, Method::Get);
        assert_eq!(&text[head.target.clone()], "/a?b=1");
        assert_eq!(&text[head.host.clone().unwrap()], "example.com");
        assert_eq!(head.framing, BodyFraming::None);
        assert!(!head.close);
    }

    #[test]
    fn waits_for_more_bytes() {
        assert!(request("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        assert!(request("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().close);
        assert!(
            !request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .close
        );
    }

    #[test]
    fn refuses_smuggling_shapes() {
        let cases = [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        ];
        for case in cases {
            assert!(
                matches!(request(case), Err(HeadError::Malformed(_))),
                "accepted {case:?}: {:?}",
                request(case)
            );
        }
    }

    #[test]
    fn identical_content_lengths_are_tolerated() {
        let head = request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, BodyFraming::Length(5));
    }

    #[test]
    fn maps_limits_and_unsupported_features() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(300));
        assert_eq!(request(&long).unwrap_err(), HeadError::UriTooLong(256));
        let partial_long = format!("GET /{}", "a".repeat(300));
        assert_eq!(request(&partial_long).unwrap_err(), HeadError::UriTooLong(256));
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n", "b".repeat(1100));
        assert_eq!(request(&big).unwrap_err(), HeadError::TooLarge(1024));
        let many: String = (0..20).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(request(&many).unwrap_err(), HeadError::TooManyHeaders(16));
        assert_eq!(
            request("GET / HTTP/2.0\r\n\r\n").unwrap_err(),
            HeadError::UnsupportedVersion
        );
        assert_eq!(
            request("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap_err(),
            HeadError::UnsupportedTransferCoding
        );
        assert_eq!(
            request("GET / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n").unwrap_err(),
            HeadError::UnsupportedExpectation
        );
        assert_eq!(
            request("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap_err(),
            HeadError::MethodNotAllowed
        );
    }

    #[test]
    fn absolute_form_replaces_host() {
        let text = "GET http://Origin:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
        let head = request(text).unwrap().unwrap();
        assert_eq!(&text[head.target.clone()], "/p?q");
        assert_eq!(&text[head.host.clone().unwrap()], "Origin:81");
    }

    #[test]
    fn collects_connection_options() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\n\r\n";
        let head = request(text).unwrap().unwrap();
        assert!(head.close);
        assert_eq!(head.connection_options.len(), 1);
        assert_eq!(&text[head.connection_options[0].clone()], "X-Secret");
    }

    #[test]
    fn only_a_well_formed_unknown_version_is_505() {
        for line in ["GET / HTTP/2.0\r\n\r\n", "GET / HTTP/3.1\r\n\r\n"] {
            assert_eq!(request(line).unwrap_err(), HeadError::UnsupportedVersion, "{line:?}");
        }
        for line in [
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / garbage\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
            "GET / HTTP/x.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(
                matches!(request(line).unwrap_err(), HeadError::Malformed(_)),
                "{line:?}: {:?}",
                request(line)
            );
        }
    }

    #[test]
    fn expect_continue_only_matters_with_a_body() {
        let with_body = "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        assert!(request(with_body).unwrap().unwrap().expect_continue);
        let without = "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n";
        assert!(!request(without).unwrap().unwrap().expect_continue);
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(
            response("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", Method::Get).framing,
            BodyFraming::Length(7)
        );
        assert_eq!(
            response("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", Method::Head).framing,
            BodyFraming::None
        );
        assert_eq!(
            response("HTTP/1.1 204 No Content\r\n\r\n", Method::Get).framing,
            BodyFraming::None
        );
        assert_eq!(
            response("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", Method::Get).framing,
            BodyFraming::None
        );
        assert_eq!(
            response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Method::Get).framing,
            BodyFraming::Chunked
        );
        let until_close = response("HTTP/1.1 200 OK\r\n\r\n", Method::Get);
        assert_eq!(until_close.framing, BodyFraming::UntilClose);
        assert!(until_close.close);
        let both = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            Method::Get,
        );
        assert_eq!(both.framing, BodyFraming::Chunked);
        assert!(both.close);
        assert!(response("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", Method::Get).close);
        assert!(
            response(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                Method::Get
            )
            .close
        );
    }
}
