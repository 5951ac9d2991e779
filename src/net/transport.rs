//! What a [`BufferedStream`](super::buffered::BufferedStream) reads and writes: plain TCP; TLS, a variant that
//! wraps a TCP stream ([`TlsStream`]); a Unix socket pair standing in for a
//! connection in tests ([`Transport::pair`]: no port, no listener, the same io_uring operations and the same
//! watchdog, since both ends are real descriptors).
//!
//! The transport also says what may bypass it: only plain TCP may be spliced, since splicing moves the socket's
//! bytes as they are (a TLS stream's bytes are records, not the body).

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpStream, UnixStream};
use monoio::BufResult;

use super::tls::TlsStream;

/// TCP states of a connection the peer has finished sending on, or that is gone (Linux `include/net/tcp_states.h`;
/// libc does not name them).
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;

/// A connected byte stream.
pub enum Transport {
    Tcp(TcpStream),
    /// TLS over TCP, its handshake done.
    Tls(Box<TlsStream>),
    /// One end of a Unix socket pair (tests).
    Local(UnixStream),
}

impl From<TcpStream> for Transport {
    fn from(stream: TcpStream) -> Transport {
        Transport::Tcp(stream)
    }
}

impl From<TlsStream> for Transport {
    fn from(stream: TlsStream) -> Transport {
        Transport::Tls(Box::new(stream))
    }
}

impl Transport {
    /// Two connected local transports, for tests of the request path without a listener.
    pub fn pair() -> io::Result<(Transport, Transport)> {
        let (one, other) = UnixStream::pair()?;
        Ok((Transport::Local(one), Transport::Local(other)))
    }

    /// The descriptor, for the watchdog and the non-blocking checks that need no operation of their own.
    pub fn fd(&self) -> RawFd {
        match self {
            Transport::Tcp(stream) => stream.as_raw_fd(),
            Transport::Tls(stream) => stream.tcp().as_raw_fd(),
            Transport::Local(stream) => stream.as_raw_fd(),
        }
    }

    /// Whether this is a TLS stream.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Whether bodies may be spliced through this transport (plain TCP only).
    pub fn spliceable(&self) -> bool {
        matches!(self, Transport::Tcp(_))
    }

    /// Reads into `buf`'s spare capacity (its length grows by what was read); 0 means the peer closed.
    pub async fn read_into(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Transport::Tcp(stream) => read_spare(stream, buf).await,
            Transport::Tls(stream) => stream.read_into(buf).await,
            Transport::Local(stream) => read_spare(stream, buf).await,
        }
    }

    /// Whether the transport holds input of its own (TLS plaintext or records) that the socket no longer shows.
    pub fn has_buffered_input(&self) -> bool {
        match self {
            Transport::Tls(stream) => stream.has_buffered_input(),
            Transport::Tcp(_) | Transport::Local(_) => false,
        }
    }

    /// Gives back what a transport buffers of its own while the connection is idle (TLS ciphertext).
    pub fn shrink_when_idle(&mut self) {
        if let Transport::Tls(stream) = self {
            stream.shrink_when_idle();
        }
    }

    pub async fn write_all<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Transport::Tcp(stream) => stream.write_all(buf).await,
            Transport::Tls(stream) => stream.write_all(buf).await,
            Transport::Local(stream) => stream.write_all(buf).await,
        }
    }

    /// Sends end-of-stream (TCP: FIN); reading stays possible.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(stream) => stream.shutdown().await,
            Transport::Tls(stream) => stream.shutdown().await,
            Transport::Local(stream) => stream.shutdown().await,
        }
    }

    /// Waits until there are bytes to read (or the peer is gone).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(stream) => stream.readable(false).await,
            Transport::Tls(stream) => stream.readable().await,
            Transport::Local(stream) => stream.readable(false).await,
        }
    }

    /// Waits until the send buffer has room.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(stream) => stream.writable(false).await,
            Transport::Tls(stream) => stream.tcp().writable(false).await,
            Transport::Local(stream) => stream.writable(false).await,
        }
    }

    /// Whether the peer has closed its sending side: for TCP from the kernel's connection state (its FIN
    /// arrived), for a local pair from a poll for `POLLRDHUP`.
    pub fn peer_finished_sending(&self) -> bool {
        match self {
            Transport::Tcp(stream) => tcp_peer_finished(stream.as_raw_fd()),
            Transport::Tls(stream) => stream.peer_closed() || tcp_peer_finished(stream.tcp().as_raw_fd()),
            Transport::Local(stream) => peer_hung_up(stream.as_raw_fd()),
        }
    }
}

async fn read_spare<S: AsyncReadRent>(stream: &mut S, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    let (len, capacity) = (buf.len(), buf.capacity());
    let (result, slice) = stream.read(buf.slice_mut(len..capacity)).await;
    (result, slice.into_inner())
}

fn tcp_peer_finished(fd: RawFd) -> bool {
    // SAFETY: a zeroed tcp_info is a valid value of a plain C struct.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `length` describe a writable buffer of the right size.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut length,
        )
    };
    if result != 0 {
        return true;
    }
    matches!(
        info.tcpi_state,
        TCP_TIME_WAIT | TCP_CLOSE | TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING
    )
}

fn peer_hung_up(fd: RawFd) -> bool {
    let mut entry = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout returns at once.
    let ready = unsafe { libc::poll(&mut entry, 1, 0) };
    ready < 0 || entry.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}
