//! What the control listeners accept on: the three services, their listening sockets, and the accepted streams
//! with who is on the other end (a uid on the Unix socket, an address over TCP).

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use super::super::socket;

/// What a listener serves.
pub(super) enum Service {
    Control,
    Metrics,
    Admin { token: Option<String> },
}

pub(super) enum Acceptor {
    Unix(UnixListener),
    Tcp(TcpListener),
}

pub(super) struct Entry {
    pub(super) service: Service,
    pub(super) acceptor: Acceptor,
    /// Accepting rests until then after an accept error.
    pub(super) resting_until: Option<Instant>,
}

impl Entry {
    pub(super) fn new(service: Service, acceptor: Acceptor) -> io::Result<Entry> {
        match &acceptor {
            Acceptor::Unix(listener) => listener.set_nonblocking(true)?,
            Acceptor::Tcp(listener) => listener.set_nonblocking(true)?,
        }
        Ok(Entry {
            service,
            acceptor,
            resting_until: None,
        })
    }

    pub(super) fn fd(&self) -> RawFd {
        match &self.acceptor {
            Acceptor::Unix(listener) => listener.as_raw_fd(),
            Acceptor::Tcp(listener) => listener.as_raw_fd(),
        }
    }

    pub(super) fn accept(&self) -> io::Result<(Stream, Peer)> {
        match &self.acceptor {
            Acceptor::Unix(listener) => {
                let (stream, _) = listener.accept()?;
                let uid = socket::peer_uid(&stream);
                Ok((Stream::Unix(stream), Peer::Uid(uid)))
            }
            Acceptor::Tcp(listener) => {
                let (stream, address) = listener.accept()?;
                Ok((Stream::Tcp(stream), Peer::Address(address.to_string())))
            }
        }
    }
}

pub(super) enum Stream {
    Unix(UnixStream),
    Tcp(std::net::TcpStream),
}

impl Stream {
    pub(super) fn fd(&self) -> RawFd {
        match self {
            Stream::Unix(stream) => stream.as_raw_fd(),
            Stream::Tcp(stream) => stream.as_raw_fd(),
        }
    }

    pub(super) fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(stream) => stream.set_nonblocking(true),
            Stream::Tcp(stream) => stream.set_nonblocking(true),
        }
    }

    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(stream) => stream.read(buf),
            Stream::Tcp(stream) => stream.read(buf),
        }
    }

    pub(super) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(stream) => stream.write(buf),
            Stream::Tcp(stream) => stream.write(buf),
        }
    }
}

pub(super) enum Peer {
    Uid(Option<u32>),
    Address(String),
}
