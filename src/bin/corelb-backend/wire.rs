//! The example backend's own HTTP/1.1 framing, written apart from corelb's parser on purpose: the backend is the
//! peer corelb is tested against, and a framing bug shared by both sides would hide. It is strict where framing is
//! at stake (CRLF line ends, one Content-Length, chunked as the last coding, no obs-fold) and reports what it
//! refused, so a request corelb mangled shows up as a 400 in a test rather than as a quiet success.

/// A request head as this backend read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: &'static str,
    /// Fields in arrival order, as sent.
    pub fields: Vec<(String, String)>,
    pub body: Body,
    /// The client asked to close after this exchange (or HTTP/1.0 without keep-alive).
    pub close: bool,
    /// Bytes of the head, blank line included.
    pub len: usize,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

const MAX_HEAD: usize = 64 * 1024;

/// Reads a head from the start of `buffer`: `Ok(None)` until the blank line has arrived.
pub fn parse_head(buffer: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") else {
        if buffer.len() > MAX_HEAD {
            return Err(format!("head over {MAX_HEAD} bytes"));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buffer[..end]).map_err(|_| "head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {request_line:?}"));
    };
    if method.is_empty() || !method.bytes().all(is_token) || target.is_empty() {
        return Err(format!("bad request line {request_line:?}"));
    }
    let version = match version {
        "HTTP/1.1" => "HTTP/1.1",
        "HTTP/1.0" => "HTTP/1.0",
        other => return Err(format!("unsupported version {other:?}")),
    };
    let mut fields = Vec::new();
    for line in lines {
        if line.contains('\n') || line.contains('\r') {
            return Err("bare CR or LF in the head".to_string());
        }
        if line.starts_with([' ', '\t']) {
            return Err("obsolete line folding".to_string());
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("field without a colon: {line:?}"));
        };
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(format!("bad field name {name:?}"));
        }
        fields.push((name.to_string(), value.trim_matches([' ', '\t']).to_string()));
    }
    let field = |wanted: &'static str| values(&fields, wanted);
    let lengths: Vec<&str> = field("content-length").collect();
    let codings: Vec<String> = field("transfer-encoding")
        .flat_map(|value| value.split(','))
        .map(|coding| coding.trim().to_ascii_lowercase())
        .collect();
    let body = match (lengths.as_slice(), codings.last()) {
        ([], None) => Body::None,
        ([length], None) => Body::Length(length.parse().map_err(|_| format!("bad Content-Length {length:?}"))?),
        (_, None) => return Err("more than one Content-Length".to_string()),
        ([], Some(last)) if last == "chunked" => Body::Chunked,
        ([], Some(other)) => return Err(format!("unknown final transfer coding {other:?}")),
        (_, Some(_)) => return Err("both Content-Length and Transfer-Encoding".to_string()),
    };
    let tokens: Vec<String> = field("connection")
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .collect();
    let close = if version == "HTTP/1.0" {
        !tokens.iter().any(|token| token == "keep-alive")
    } else {
        tokens.iter().any(|token| token == "close")
    };
    Ok(Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        version,
        fields,
        body,
        close,
        len: end + 4,
    }))
}

/// The values of every field named `wanted`, in order.
fn values<'a>(fields: &'a [(String, String)], wanted: &'static str) -> impl Iterator<Item = &'a str> + 'a {
    fields
        .iter()
        .filter(move |(name, _)| name.eq_ignore_ascii_case(wanted))
        .map(|(_, value)| value.as_str())
}

fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Where a chunked body's reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// A size line is next.
    Size,
    /// This many data bytes, then CRLF.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, until the empty one.
    Trailers,
    Done,
}

/// Reads a chunked body as it arrives, counting its data.
#[derive(Debug)]
pub struct ChunkedReader {
    state: Chunked,
    pub data: u64,
}

impl Default for ChunkedReader {
    fn default() -> Self {
        ChunkedReader {
            state: Chunked::Size,
            data: 0,
        }
    }
}

impl ChunkedReader {
    pub fn is_done(&self) -> bool {
        self.state == Chunked::Done
    }

    /// Reads what it can of `input`; returns how many bytes it used (the rest waits for more input).
    pub fn read(&mut self, input: &[u8]) -> Result<usize, String> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                Chunked::Done => return Ok(used),
                Chunked::Data(remaining) => {
                    let take = remaining.min(rest.len() as u64);
                    if take == 0 {
                        return Ok(used);
                    }
                    used += take as usize;
                    self.data += take;
                    self.state = if take == remaining {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(remaining - take)
                    };
                }
                Chunked::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(used);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF".to_string());
                    }
                    used += 2;
                    self.state = Chunked::Size;
                }
                Chunked::Size | Chunked::Trailers => {
                    let Some(end) = rest.windows(2).position(|window| window == b"\r\n") else {
                        if rest.len() > 4096 {
                            return Err("chunk line over 4 KiB".to_string());
                        }
                        return Ok(used);
                    };
                    let line = std::str::from_utf8(&rest[..end]).map_err(|_| "chunk line is not UTF-8".to_string())?;
                    used += end + 2;
                    if self.state == Chunked::Trailers {
                        if line.is_empty() {
                            self.state = Chunked::Done;
                        }
                        continue;
                    }
                    let digits = line.split(';').next().unwrap_or("").trim_end_matches([' ', '\t']);
                    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                        return Err(format!("bad chunk size {line:?}"));
                    }
                    let size = u64::from_str_radix(digits, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
                    self.state = if size == 0 {
                        Chunked::Trailers
                    } else {
                        Chunked::Data(size)
                    };
                }
            }
        }
    }
}

/// One chunk of a chunked response.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_head_and_its_framing() {
        let head = parse_head(b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap()
            .unwrap();
        assert_eq!(
            (head.method.as_str(), head.target.as_str(), head.version),
            ("POST", "/a?b=1", "HTTP/1.1")
        );
        assert_eq!(head.body, Body::Length(3));
        assert_eq!(head.len, 52);
        assert!(!head.close);
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
        let old = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(old.close);
    }

    #[test]
    fn refuses_ambiguous_framing() {
        for bad in [
            &b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn reads_a_chunked_body_in_pieces() {
        let body = b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n";
        let mut reader = ChunkedReader::default();
        let mut used = 0;
        for end in 1..=body.len() {
            used += reader.read(&body[used..end]).unwrap();
        }
        assert!(reader.is_done());
        assert_eq!((used, reader.data), (body.len(), 19));
        assert!(ChunkedReader::default().read(b"zz\r\n").is_err());
    }
}
