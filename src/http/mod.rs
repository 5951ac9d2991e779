//! HTTP/1.1 message syntax without I/O: parsing request and response heads (RFC 9112), deciding body framing,
//! decoding chunked bodies, and writing the heads a proxy forwards. Everything here works on byte slices so it can be
//! unit-tested and fuzzed without sockets.

pub mod chunked;
pub mod cookie;
pub mod head;
pub mod rewrite;

pub use chunked::{ChunkedDecoder, ChunkedError};
pub use head::{
    parse_request, parse_response, BodyFraming, Field, HeadError, Method, RequestHead, ResponseHead, Version,
};
