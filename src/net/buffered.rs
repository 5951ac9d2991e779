//! A TCP stream with an owned read buffer, in the shape io_uring wants: buffers are handed to the kernel and handed
//! back, so every operation here takes the buffer out, runs, and puts it back. Every operation has a timeout; after a
//! timeout the stream must be closed (the cancelled operation may have completed anyway), never reused.

use std::io;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent};
use monoio::net::TcpStream;

/// Initial read buffer of an upstream connection; it grows for large heads and for streaming bodies.
const INITIAL_CAPACITY: usize = 16 * 1024;
/// A buffer larger than this is given back when the connection goes idle.
const IDLE_MAX_CAPACITY: usize = 16 * 1024;
/// Read size used while streaming a body.
pub const BODY_CAPACITY: usize = 64 * 1024;

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "operation timed out")
}

/// Writes all of `buf` within `timeout`. Returns the buffer (empty after a timeout: the kernel may still own it).
pub async fn write_all_timeout(stream: &mut TcpStream, buf: Vec<u8>, timeout: Duration) -> (io::Result<()>, Vec<u8>) {
    match monoio::time::timeout(timeout, stream.write_all(buf)).await {
        Ok((Ok(_), buf)) => (Ok(()), buf),
        Ok((Err(error), buf)) => (Err(error), buf),
        Err(_) => (Err(timed_out()), Vec::new()),
    }
}

/// A stream plus the bytes read from it and not yet consumed (`buf[start..]`).
pub struct BufferedStream {
    pub stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl BufferedStream {
    pub fn new(stream: TcpStream) -> BufferedStream {
        BufferedStream::with_capacity(stream, INITIAL_CAPACITY)
    }

    /// A stream whose read buffer starts at `capacity` bytes: small for client connections, which mostly sit idle
    /// between small requests, so that ten thousand of them cost little memory.
    pub fn with_capacity(stream: TcpStream, capacity: usize) -> BufferedStream {
        BufferedStream {
            stream,
            buf: Vec::with_capacity(capacity),
            start: 0,
        }
    }

    /// Gives back a buffer grown for a large head or body once nothing is buffered.
    pub fn shrink_when_idle(&mut self, capacity: usize) {
        if self.buf.is_empty() && self.buf.capacity() > IDLE_MAX_CAPACITY {
            self.buf = Vec::with_capacity(capacity);
            self.start = 0;
        }
    }

    /// Bytes read and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks the first `count` buffered bytes as used.
    pub fn consume(&mut self, count: usize) {
        self.start = (self.start + count).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Makes room for at least `want` more bytes at the end of the buffer.
    fn make_room(&mut self, want: usize) {
        if self.buf.capacity() - self.buf.len() >= want {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(self.buf.len() - self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
        }
    }

    /// Grows the buffer so body streaming reads large blocks.
    pub fn reserve_for_body(&mut self) {
        if self.buf.capacity() < BODY_CAPACITY {
            self.make_room(BODY_CAPACITY - self.buf.len().min(BODY_CAPACITY));
        }
    }

    /// Reads more bytes, waiting at most `timeout`. Returns how many arrived; 0 means the peer closed.
    pub async fn fill(&mut self, timeout: Duration) -> io::Result<usize> {
        self.make_room(1024);
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let capacity = buf.capacity();
        match monoio::time::timeout(timeout, self.stream.read(buf.slice_mut(len..capacity))).await {
            Ok((result, slice)) => {
                self.buf = slice.into_inner();
                result
            }
            Err(_) => {
                // The kernel kept the buffer: start over with an empty one, consistently.
                self.start = 0;
                Err(timed_out())
            }
        }
    }

    /// Like [`fill`](Self::fill), but also ends early with `ErrorKind::Interrupted` when `cancel` fires: used for
    /// idle keep-alive waits that a graceful shutdown should end at once.
    pub async fn fill_cancelable(&mut self, timeout: Duration, cancel: CancelHandle) -> io::Result<usize> {
        self.make_room(1024);
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let capacity = buf.capacity();
        let read = self.stream.cancelable_read(buf.slice_mut(len..capacity), cancel);
        match monoio::time::timeout(timeout, read).await {
            Ok((result, slice)) => {
                self.buf = slice.into_inner();
                match result {
                    Err(error) if error.raw_os_error() == Some(libc::ECANCELED) => {
                        Err(io::Error::new(io::ErrorKind::Interrupted, "shutting down"))
                    }
                    other => other,
                }
            }
            Err(_) => {
                // The kernel kept the buffer: start over with an empty one, consistently.
                self.start = 0;
                Err(timed_out())
            }
        }
    }

    /// Writes the first `count` buffered bytes to `dst` (without copying them) and consumes them.
    pub async fn forward_buffered(&mut self, dst: &mut TcpStream, count: usize, timeout: Duration) -> io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let range = self.start..self.start + count;
        match monoio::time::timeout(timeout, dst.write_all(buf.slice(range))).await {
            Ok((result, slice)) => {
                self.buf = slice.into_inner();
                result?;
                self.consume(count);
                Ok(())
            }
            Err(_) => {
                // The kernel kept the buffer: start over with an empty one, consistently.
                self.start = 0;
                Err(timed_out())
            }
        }
    }

    /// Writes `buf` to this stream.
    pub async fn write_all(&mut self, buf: Vec<u8>, timeout: Duration) -> (io::Result<()>, Vec<u8>) {
        write_all_timeout(&mut self.stream, buf, timeout).await
    }
}
