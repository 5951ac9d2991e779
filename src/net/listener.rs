//! Frontend listeners. Every worker binds its own socket on each frontend address with SO_REUSEPORT, so the kernel
//! spreads new connections over workers and no accept queue is shared.

use std::io;
use std::net::SocketAddr;

use monoio::net::{ListenerOpts, TcpListener};

/// Accept backlog per worker socket.
const BACKLOG: i32 = 4096;

/// Binds one worker's listener on `address`.
pub fn bind_reuseport(address: SocketAddr) -> io::Result<TcpListener> {
    let options = ListenerOpts::new().reuse_port(true).reuse_addr(true).backlog(BACKLOG);
    TcpListener::bind_with_config(address, &options)
}

/// Holds a port for frontends configured with port 0 until every worker has bound it.
///
/// The socket is bound with SO_REUSEPORT but never listens, so it takes no connections; it only makes the kernel
/// pick a port that the workers then share.
pub struct PortReservation {
    _socket: socket2::Socket,
    pub address: SocketAddr,
}

/// Resolves `address` to a concrete port, reserving a fresh one when it asks for port 0.
pub fn reserve_port(address: SocketAddr) -> io::Result<PortReservation> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))?;
    Ok(PortReservation {
        _socket: socket,
        address: bound,
    })
}
