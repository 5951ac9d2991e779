//! A stream (a [`Transport`]: TCP, later TLS, a local pair in tests) with an owned read buffer, in the shape io_uring wants: buffers are handed to the kernel and handed
//! back, so every operation here takes the buffer out, runs, and puts it back. Every operation has a timeout, kept
//! by the worker's [`Watchdog`]; after a timeout the stream fails every operation and must be closed, never reused.

use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use monoio::buf::IoBuf;

use super::slots::Slot;
use super::transport::Transport;
use super::watchdog::{Operation, Watch, Watchdog};

/// Initial read buffer of an upstream connection; it grows for large heads and for streaming bodies.
const INITIAL_CAPACITY: usize = 16 * 1024;
/// A buffer larger than this is given back when the connection goes idle.
const IDLE_MAX_CAPACITY: usize = 16 * 1024;
/// Read size used while streaming a body.
pub const BODY_CAPACITY: usize = 64 * 1024;

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "operation timed out")
}

/// What [`BufferedStream::pending_input`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingInput {
    /// Nothing to read and the connection open.
    Nothing,
    /// Bytes are waiting to be read.
    Bytes,
    /// The peer closed (EOF) or the connection failed (reset).
    Closed,
}

/// Which of two sockets [`BufferedStream::wait_readable_unless`] found readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readable {
    This,
    Other,
}

/// A stream plus the bytes read from it and not yet consumed (`buf[start..]`).
pub struct BufferedStream {
    // Declared before `stream`: the watch must let go of the descriptor before the socket is closed.
    watch: Watch,
    stream: Transport,
    buf: Vec<u8>,
    start: usize,
    /// Whether the socket is known to be in non-blocking mode (see [`prepare_splice`](Self::prepare_splice)).
    nonblocking: bool,
    /// The worker's descriptor slot this connection holds, freed after the socket closes (fields drop in order).
    slot: Option<Slot>,
}

impl BufferedStream {
    pub fn new(stream: impl Into<Transport>, watchdog: &Rc<Watchdog>) -> BufferedStream {
        BufferedStream::with_capacity(stream, watchdog, INITIAL_CAPACITY)
    }

    /// A stream whose read buffer starts at `capacity` bytes: small for client connections, which mostly sit idle
    /// between small requests, so that ten thousand of them cost little memory.
    pub fn with_capacity(stream: impl Into<Transport>, watchdog: &Rc<Watchdog>, capacity: usize) -> BufferedStream {
        let stream = stream.into();
        BufferedStream {
            watch: watchdog.watch(stream.fd()),
            stream,
            buf: Vec::with_capacity(capacity),
            start: 0,
            nonblocking: false,
            slot: None,
        }
    }

    /// Makes this connection hold `slot` until it is dropped.
    pub fn hold(mut self, slot: Slot) -> BufferedStream {
        self.slot = Some(slot);
        self
    }

    /// Whether an operation timed out: the stream is unusable and must not go back to a pool.
    pub fn expired(&self) -> bool {
        self.watch.expired()
    }

    /// Whether a read timed out, leaving the read side shut (reads fail at once) and writing still possible.
    pub fn reads_ended(&self) -> bool {
        self.watch.reads_ended()
    }

    /// Drops whatever the peer has sent and the kernel holds, without waiting. Returns how many bytes; for a
    /// socket whose reads ended, where the event loop's reads fail at once.
    pub fn discard_received(&mut self) -> usize {
        let fd = self.stream.fd();
        let mut scratch = [0u8; 4096];
        let mut discarded = 0;
        loop {
            // SAFETY: `scratch` is writable for its whole length; MSG_DONTWAIT makes the call return at once.
            let count = unsafe { libc::recv(fd, scratch.as_mut_ptr().cast(), scratch.len(), libc::MSG_DONTWAIT) };
            if count <= 0 {
                return discarded;
            }
            discarded += count as usize;
        }
    }

    /// What the peer has sent that nobody asked for yet, checked without waiting: bytes already buffered, or in
    /// the kernel (one `recv` with `MSG_PEEK | MSG_DONTWAIT`, which consumes nothing). An idle upstream connection
    /// must show [`PendingInput::Nothing`] to be reused: anything else is a stray response or a close in flight.
    pub fn pending_input(&self) -> PendingInput {
        if !self.buffered().is_empty() || self.stream.has_buffered_input() {
            return PendingInput::Bytes;
        }
        let mut byte = [0u8; 1];
        // SAFETY: `byte` is writable for its length; MSG_DONTWAIT makes the call return at once, MSG_PEEK leaves
        // the data queued.
        let count = unsafe {
            libc::recv(
                self.stream.fd(),
                byte.as_mut_ptr().cast(),
                byte.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match count {
            0 => PendingInput::Closed,
            count if count > 0 => PendingInput::Bytes,
            _ => match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => PendingInput::Nothing,
                _ => PendingInput::Closed,
            },
        }
    }

    /// Whether the peer has closed its sending side (for TCP: its FIN arrived).
    pub fn peer_finished_sending(&self) -> bool {
        self.stream.peer_finished_sending()
    }

    /// Whether bodies may be spliced to or from this stream (plain TCP only; see [`Transport::spliceable`]).
    pub fn spliceable(&self) -> bool {
        self.stream.spliceable()
    }

    /// Gives back a buffer grown for a large head or body once nothing is buffered.
    pub fn shrink_when_idle(&mut self, capacity: usize) {
        self.stream.shrink_when_idle();
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
        self.read_more(timeout, Operation::Read).await
    }

    /// Like [`fill`](Self::fill) for a keep-alive connection waiting for its next request: a graceful shutdown
    /// ends the wait at once (with `TimedOut`).
    pub async fn fill_idle(&mut self, timeout: Duration) -> io::Result<usize> {
        self.read_more(timeout, Operation::IdleRead).await
    }

    async fn read_more(&mut self, timeout: Duration, operation: Operation) -> io::Result<usize> {
        self.make_room(1024);
        let buf = std::mem::take(&mut self.buf);
        self.watch.arm(timeout, operation);
        let (result, buf) = self.stream.read_into(buf).await;
        self.buf = buf;
        if self.watch.disarm() {
            return Err(timed_out());
        }
        result
    }

    /// Writes the first `count` buffered bytes to `dst` (without copying them) and consumes them.
    pub async fn forward_buffered(
        &mut self,
        dst: &mut BufferedStream,
        count: usize,
        timeout: Duration,
    ) -> io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let range = self.start..self.start + count;
        dst.watch.arm(timeout, Operation::Write);
        let (result, slice) = dst.stream.write_all(buf.slice(range)).await;
        self.buf = slice.into_inner();
        if dst.watch.disarm() {
            return Err(timed_out());
        }
        result?;
        self.consume(count);
        Ok(())
    }

    /// Writes all of `buf` within `timeout`, and returns it.
    pub async fn write_all(&mut self, buf: Vec<u8>, timeout: Duration) -> (io::Result<()>, Vec<u8>) {
        self.watch.arm(timeout, Operation::Write);
        let (result, buf) = self.stream.write_all(buf).await;
        if self.watch.disarm() {
            return (Err(timed_out()), buf);
        }
        (result.map(|_| ()), buf)
    }

    /// Sends FIN (no more writes); reading stays possible.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }

    /// Readies the socket for [`splice`](super::splice), which honours only the descriptor's own blocking mode:
    /// io_uring leaves sockets blocking, and a blocking splice would stall the worker. The flag stays set for the
    /// connection's life: monoio reads and writes sockets with IORING_OP_RECV/SEND, which go by their own message
    /// flags and ignore it (IORING_OP_READ/WRITE would not). Returns the descriptor.
    pub fn prepare_splice(&mut self) -> io::Result<RawFd> {
        let fd = self.stream.fd();
        if !self.nonblocking {
            // SAFETY: fcntl on the descriptor this stream owns.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            // SAFETY: as above.
            if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
                return Err(io::Error::last_os_error());
            }
            self.nonblocking = true;
        }
        Ok(fd)
    }

    /// Waits until the socket has bytes to read (or is closed), at most `timeout`. For reads done outside the
    /// event loop's own operations (splice).
    pub async fn wait_readable(&mut self, timeout: Duration) -> io::Result<()> {
        self.watch.arm(timeout, Operation::Read);
        let result = self.stream.readable().await;
        if self.watch.disarm() {
            return Err(timed_out());
        }
        result
    }

    /// Waits until this socket has bytes to read (or is closed), at most `timeout`, unless `other` becomes readable
    /// first. Both are readiness waits, so whichever loses is dropped without losing a byte. For a request body
    /// that is still arriving while the backend may already answer.
    pub async fn wait_readable_unless(&mut self, other: &BufferedStream, timeout: Duration) -> io::Result<Readable> {
        self.watch.arm(timeout, Operation::Read);
        let result = monoio::select! {
            result = self.stream.readable() => result.map(|()| Readable::This),
            result = other.stream.readable() => result.map(|()| Readable::Other),
        };
        if self.watch.disarm() {
            return Err(timed_out());
        }
        result
    }

    /// Waits until the socket's send buffer has room, at most `timeout`.
    pub async fn wait_writable(&mut self, timeout: Duration) -> io::Result<()> {
        self.watch.arm(timeout, Operation::Write);
        let result = self.stream.writable().await;
        if self.watch.disarm() {
            return Err(timed_out());
        }
        result
    }
}
