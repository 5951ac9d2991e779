//! The chunked transfer coding (RFC 9112 §7.1), decoded strictly: CRLF line endings only, bounded extension and
//! trailer sizes, and no size overflow. The proxy re-encodes what it decodes, so extensions and trailers never
//! reach a backend in a shape it might read differently.

/// Longest chunk-size line (size plus extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// Most trailer bytes accepted; trailers are read and dropped.
const MAX_TRAILERS: usize = 16 * 1024;
/// Hex digits in a chunk size; 15 keeps the value below 2^60.
const MAX_SIZE_DIGITS: u8 = 15;

/// The terminating zero-size chunk with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("invalid chunk size")]
    InvalidSize,
    #[error("chunk size too large")]
    SizeTooLarge,
    #[error("invalid chunk extension")]
    InvalidExtension,
    #[error("chunk size line too long")]
    LineTooLong,
    #[error("missing CRLF in chunked framing")]
    MissingCrlf,
    #[error("chunked trailer section too large")]
    TrailersTooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size { value: u64, digits: u8 },
    SizeSpace { value: u64 },
    Extension { value: u64 },
    SizeLf { value: u64 },
    Data { remaining: u64 },
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Incremental decoder: feed it bytes as they arrive, get body data out.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    line_len: usize,
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size { value: 0, digits: 0 },
            line_len: 0,
            trailer_len: 0,
        }
    }

    /// The last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, handing each run of body bytes to `on_data`. Returns how many bytes of `input` were
    /// consumed; decoding stops right after the end of the message, so bytes of a following message stay unread.
    pub fn decode(&mut self, input: &[u8], mut on_data: impl FnMut(&[u8])) -> Result<usize, ChunkedError> {
        let mut position = 0;
        while position < input.len() {
            if let State::Data { remaining } = self.state {
                let available = (input.len() - position) as u64;
                let take = remaining.min(available) as usize;
                on_data(&input[position..position + take]);
                position += take;
                let remaining = remaining - take as u64;
                self.state = if remaining == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining }
                };
                continue;
            }
            if self.state == State::Done {
                break;
            }
            let byte = input[position];
            position += 1;
            self.state = self.step(byte)?;
        }
        Ok(position)
    }

    fn count_line_byte(&mut self) -> Result<(), ChunkedError> {
        self.line_len += 1;
        if self.line_len > MAX_SIZE_LINE {
            return Err(ChunkedError::LineTooLong);
        }
        Ok(())
    }

    fn after_size_line(&mut self, value: u64) -> State {
        self.line_len = 0;
        if value == 0 {
            State::TrailerStart
        } else {
            State::Data { remaining: value }
        }
    }

    fn step(&mut self, byte: u8) -> Result<State, ChunkedError> {
        let next = match self.state {
            State::Size { value, digits } => {
                self.count_line_byte()?;
                match (byte as char).to_digit(16) {
                    Some(digit) => {
                        if digits == MAX_SIZE_DIGITS {
                            return Err(ChunkedError::SizeTooLarge);
                        }
                        State::Size {
                            value: value * 16 + u64::from(digit),
                            digits: digits + 1,
                        }
                    }
                    None if digits == 0 => return Err(ChunkedError::InvalidSize),
                    None => match byte {
                        b'\r' => State::SizeLf { value },
                        b' ' | b'\t' => State::SizeSpace { value },
                        b';' => State::Extension { value },
                        _ => return Err(ChunkedError::InvalidSize),
                    },
                }
            }
            State::SizeSpace { value } => {
                self.count_line_byte()?;
                match byte {
                    b' ' | b'\t' => State::SizeSpace { value },
                    b';' => State::Extension { value },
                    b'\r' => State::SizeLf { value },
                    _ => return Err(ChunkedError::InvalidSize),
                }
            }
            State::Extension { value } => {
                self.count_line_byte()?;
                match byte {
                    b'\r' => State::SizeLf { value },
                    b'\t' => State::Extension { value },
                    byte if byte < 0x20 || byte == 0x7f => return Err(ChunkedError::InvalidExtension),
                    _ => State::Extension { value },
                }
            }
            State::SizeLf { value } => match byte {
                b'\n' => self.after_size_line(value),
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::DataLf => match byte {
                b'\n' => State::Size { value: 0, digits: 0 },
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::TrailerStart => match byte {
                b'\r' => State::EndLf,
                _ => {
                    self.count_trailer_byte()?;
                    State::TrailerLine
                }
            },
            State::TrailerLine => {
                self.count_trailer_byte()?;
                match byte {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(ChunkedError::MissingCrlf),
                    _ => State::TrailerLine,
                }
            }
            State::TrailerLf => match byte {
                b'\n' => State::TrailerStart,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::EndLf => match byte {
                b'\n' => State::Done,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::Data { .. } | State::Done => self.state,
        };
        Ok(next)
    }

    fn count_trailer_byte(&mut self) -> Result<(), ChunkedError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILERS {
            return Err(ChunkedError::TrailersTooLarge);
        }
        Ok(())
    }
}

/// Appends a chunk-size line for `len` data bytes.
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut position = digits.len();
    let mut remaining = len;
    loop {
        position -= 1;
        digits[position] = HEX[remaining & 0xf];
        remaining >>= 4;
        if remaining == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[position..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends `data` as one chunk (nothing for empty data, which would end the body).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    write_chunk_header(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkedError> {
        let mut decoder = ChunkedDecoder::new();
        let mut body = Vec::new();
        let used = decoder.decode(input, |data| body.extend_from_slice(data))?;
        Ok((body, used, decoder.is_done()))
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let input = b"5\r\nhello\r\n6;name=\"v\"\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (body, used, done) = decode_all(input).unwrap();
        assert_eq!(body, b"hello world");
        assert!(done);
        assert_eq!(&input[used..], b"NEXT");
    }

    #[test]
    fn decodes_byte_by_byte() {
        let input = b"A\r\n0123456789\r\n0\r\n\r\n";
        let mut decoder = ChunkedDecoder::new();
        let mut body = Vec::new();
        for byte in input.iter() {
            let used = decoder
                .decode(std::slice::from_ref(byte), |data| body.extend_from_slice(data))
                .unwrap();
            assert_eq!(used, 1);
        }
        assert!(decoder.is_done());
        assert_eq!(body, b"0123456789");
    }

    #[test]
    fn refuses_malformed_framing() {
        let cases: [(&[u8], ChunkedError); 7] = [
            (b"x\r\n", ChunkedError::InvalidSize),
            (b"\r\n", ChunkedError::InvalidSize),
            (b"5\nhello", ChunkedError::InvalidSize),
            (b"5\r\nhelloXX", ChunkedError::MissingCrlf),
            (b"1000000000000000\r\n", ChunkedError::SizeTooLarge),
            (b"5;a\x01\r\n", ChunkedError::InvalidExtension),
            (b"5 x\r\n", ChunkedError::InvalidSize),
        ];
        for (input, expected) in cases {
            assert_eq!(decode_all(input).unwrap_err(), expected, "{input:?}");
        }
    }

    #[test]
    fn bounds_lines_and_trailers() {
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE));
        assert_eq!(decode_all(&long_ext).unwrap_err(), ChunkedError::LineTooLong);
        let mut long_trailer = b"0\r\n".to_vec();
        long_trailer.extend(std::iter::repeat_n(b'a', MAX_TRAILERS + 1));
        assert_eq!(decode_all(&long_trailer).unwrap_err(), ChunkedError::TrailersTooLarge);
    }

    #[test]
    fn encodes_what_it_decodes() {
        let mut out = Vec::new();
        write_chunk(&mut out, b"hello world, this is 31 bytes!!");
        write_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert!(out.starts_with(b"1f\r\n"));
        let (body, used, done) = decode_all(&out).unwrap();
        assert_eq!(body, b"hello world, this is 31 bytes!!");
        assert_eq!(used, out.len());
        assert!(done);
    }
}
