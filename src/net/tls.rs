//! TLS over a TCP stream, on corelb's own buffers: a thin adapter that moves ciphertext between the socket and a
//! `rustls::Connection` and plaintext between rustls and the caller. It exists instead of monoio-rustls because
//! that crate keeps two 16 KiB buffers per connection for its whole life and is unmaintained since 2024; here the
//! ciphertext buffers are taken when bytes move and given back when the connection goes idle
//! ([`TlsStream::shrink_when_idle`]), so an idle TLS connection costs rustls' own state and little more.
//!
//! Reads go socket → `incoming` → rustls → the caller's buffer; only as much of the caller's spare capacity is
//! initialised as rustls has plaintext for. Writes hand the caller's bytes to rustls and send the records it makes
//! in one write. A protocol error from the peer sends rustls' alert before the error is returned. Timeouts are the
//! caller's: the watchdog shuts the socket down, which ends whichever socket operation is pending here.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut as _};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;

use super::watchdog::{Operation, Watchdog};

/// Ciphertext read from the socket at a time once bytes flow: a whole TLS record and its overhead.
const INCOMING: usize = 16 * 1024 + 512;
/// The first read after the buffer was given back (a new or idle connection waits in it, possibly for minutes):
/// room for a ClientHello or a small request's record. A read that fills it grows the buffer to `INCOMING`.
const INCOMING_IDLE: usize = 2 * 1024;

/// A TLS connection (server or client side) over TCP.
pub struct TlsStream {
    tcp: TcpStream,
    session: rustls::Connection,
    /// Ciphertext read and not yet taken by rustls: `incoming[taken..]`.
    incoming: Vec<u8>,
    taken: usize,
    /// The last read filled all the room it had: more is coming, so the next gets a whole record's room.
    filled: bool,
    /// Plaintext rustls holds, ready to read.
    plaintext: usize,
    /// The peer sent close_notify, or closed the socket.
    peer_closed: bool,
    /// Records made and being sent.
    outgoing: Vec<u8>,
}

fn protocol_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// Why a client's handshake failed, as logs and metrics tell it.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    #[error("the TLS handshake did not finish within the handshake timeout")]
    TimedOut,
    #[error("the client closed the connection during the TLS handshake")]
    Closed,
    #[error("TLS handshake refused: {0}")]
    Refused(rustls::Error),
    #[error("TLS handshake failed: {0}")]
    Io(io::Error),
}

impl HandshakeFailure {
    fn from_io(error: io::Error) -> HandshakeFailure {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            return HandshakeFailure::Closed;
        }
        match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(refused) => HandshakeFailure::Refused(refused.clone()),
            None => HandshakeFailure::Io(error),
        }
    }

    /// A short label for metrics: `timeout`, `closed`, `protocol_version`, `unknown_server_name`,
    /// `no_client_certificate`, `bad_client_certificate`, `no_application_protocol`, `alert_received`,
    /// `bad_message` or `io`.
    pub fn reason(&self) -> &'static str {
        use rustls::Error;
        match self {
            HandshakeFailure::TimedOut => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Io(_) => "io",
            HandshakeFailure::Refused(error) => match error {
                Error::PeerIncompatible(_) => "protocol_version",
                Error::General(message) if message.contains("no server certificate") => "unknown_server_name",
                Error::NoCertificatesPresented => "no_client_certificate",
                Error::InvalidCertificate(_) => "bad_client_certificate",
                Error::NoApplicationProtocol => "no_application_protocol",
                Error::AlertReceived(_) => "alert_received",
                _ => "bad_message",
            },
        }
    }
}

/// Runs the server side of a TLS handshake on a connection a client opened, within `timeout` from now: the
/// watchdog ends a client that stalls (one that sends nothing, or half a ClientHello), as it ends any read.
pub async fn accept(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    watchdog: &Rc<Watchdog>,
    timeout: Duration,
) -> Result<TlsStream, HandshakeFailure> {
    let fd = tcp.as_raw_fd();
    let mut stream = TlsStream::server(tcp, config).map_err(HandshakeFailure::Io)?;
    let watch = watchdog.watch(fd);
    // A write deadline: when it passes, both directions are shut, whichever the handshake waits on.
    watch.arm(timeout, Operation::Write);
    let result = stream.handshake().await;
    let expired = watch.disarm();
    // The watch lets go of the descriptor before the stream (and its socket) may be dropped.
    drop(watch);
    if expired {
        return Err(HandshakeFailure::TimedOut);
    }
    result.map_err(HandshakeFailure::from_io)?;
    // The client's first request may be a while coming; it waits in a small buffer, not a record's worth.
    stream.shrink_when_idle();
    Ok(stream)
}

impl TlsStream {
    /// The server side of a connection a client opened; [`handshake`](Self::handshake) completes it.
    pub fn server(tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<TlsStream> {
        let session = rustls::ServerConnection::new(config).map_err(protocol_error)?;
        Ok(TlsStream::over(tcp, session.into()))
    }

    /// The client side of a connection to `name`; [`handshake`](Self::handshake) completes it.
    pub fn client(
        tcp: TcpStream,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<TlsStream> {
        let session = rustls::ClientConnection::new(config, name).map_err(protocol_error)?;
        Ok(TlsStream::over(tcp, session.into()))
    }

    fn over(tcp: TcpStream, session: rustls::Connection) -> TlsStream {
        TlsStream {
            tcp,
            session,
            incoming: Vec::new(),
            taken: 0,
            filled: false,
            plaintext: 0,
            peer_closed: false,
            outgoing: Vec::new(),
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The rustls session: negotiated version, cipher suite, ALPN, the peer's certificates.
    pub fn session(&self) -> &rustls::Connection {
        &self.session
    }

    /// Runs the handshake to its end (including what the server sends right after it, such as session tickets).
    pub async fn handshake(&mut self) -> io::Result<()> {
        while self.session.is_handshaking() {
            if self.session.wants_write() {
                self.flush().await?;
            } else if self.receive().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ));
            }
        }
        self.flush().await
    }

    /// Whether the peer has said it sends no more (close_notify, or its socket closed).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether input read from the socket is still held here: plaintext, or records rustls has not taken yet.
    pub fn has_buffered_input(&self) -> bool {
        self.plaintext > 0 || self.taken < self.incoming.len()
    }

    /// Reads plaintext into `buf`'s spare capacity (its length grows by what was read); 0 means the peer closed.
    pub async fn read_into(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        loop {
            if self.plaintext > 0 {
                let result = self.take_plaintext(&mut buf);
                return (result, buf);
            }
            if self.peer_closed {
                return (Ok(0), buf);
            }
            if self.session.wants_write() {
                if let Err(error) = self.flush().await {
                    return (Err(error), buf);
                }
            }
            if self.taken < self.incoming.len() {
                // Records read earlier that rustls had no room for while plaintext waited.
                if let Err(error) = self.take_buffered().await {
                    return (Err(error), buf);
                }
                if self.plaintext > 0 || self.peer_closed {
                    continue;
                }
            }
            match self.receive().await {
                Ok(0) => return (Ok(0), buf),
                Ok(_) => {}
                Err(error) => return (Err(error), buf),
            }
        }
    }

    fn take_plaintext(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let len = buf.len();
        let want = (buf.capacity() - len).min(self.plaintext);
        if want == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no room to read into"));
        }
        buf.resize(len + want, 0);
        match self.session.reader().read(&mut buf[len..]) {
            Ok(count) => {
                buf.truncate(len + count);
                self.plaintext -= count;
                Ok(count)
            }
            Err(error) => {
                buf.truncate(len);
                Err(error)
            }
        }
    }

    /// Reads ciphertext from the socket and hands rustls what it takes; returns the bytes read (0: the socket
    /// closed).
    async fn receive(&mut self) -> io::Result<usize> {
        if self.taken == self.incoming.len() {
            self.incoming.clear();
            self.taken = 0;
        } else if self.taken > 0 {
            self.incoming.drain(..self.taken);
            self.taken = 0;
        }
        let spare = self.incoming.capacity() - self.incoming.len();
        if self.incoming.capacity() == 0 {
            self.incoming.reserve_exact(INCOMING_IDLE);
        } else if spare < INCOMING / 4 && (self.incoming.capacity() >= INCOMING || self.filled) {
            self.incoming.reserve(INCOMING);
        }
        let buf = std::mem::take(&mut self.incoming);
        let (len, capacity) = (buf.len(), buf.capacity());
        let (result, slice) = self.tcp.read(buf.slice_mut(len..capacity)).await;
        self.incoming = slice.into_inner();
        let count = result?;
        self.filled = count == capacity - len;
        if count == 0 {
            self.peer_closed = true;
            return Ok(0);
        }
        self.take_buffered().await?;
        Ok(count)
    }

    /// Hands rustls the buffered ciphertext it will take; on a protocol error, sends the alert rustls queued to
    /// tell the peer why.
    async fn take_buffered(&mut self) -> io::Result<()> {
        if let Err(error) = self.hand_to_rustls() {
            let _ = self.flush().await;
            return Err(error);
        }
        Ok(())
    }

    fn hand_to_rustls(&mut self) -> io::Result<()> {
        while self.taken < self.incoming.len() && self.session.wants_read() {
            let count = self.session.read_tls(&mut &self.incoming[self.taken..])?;
            self.taken += count;
            let state = self.session.process_new_packets().map_err(protocol_error)?;
            self.plaintext = state.plaintext_bytes_to_read();
            self.peer_closed |= state.peer_has_closed();
            if count == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Sends every record rustls has made.
    async fn flush(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            self.session.write_tls(&mut self.outgoing)?;
        }
        if self.outgoing.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.outgoing);
        let (result, mut buf) = self.tcp.write_all(buf).await;
        buf.clear();
        self.outgoing = buf;
        result.map(|_| ())
    }

    /// Encrypts and sends all of `buf`.
    pub async fn write_all<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: an `IoBuf` promises `read_ptr` is valid for `bytes_init` bytes while it lives; `buf` is owned
        // here and neither moved nor changed until the slice's last use.
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let mut written = 0;
        while written < data.len() {
            let count = match self.session.writer().write(&data[written..]) {
                Ok(count) => count,
                Err(error) => return (Err(error), buf),
            };
            written += count;
            if let Err(error) = self.flush().await {
                return (Err(error), buf);
            }
            if count == 0 {
                return (
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "TLS session refused the bytes",
                    )),
                    buf,
                );
            }
        }
        (Ok(written), buf)
    }

    /// Sends close_notify, then FIN; reading stays possible.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.session.send_close_notify();
        self.flush().await?;
        self.tcp.shutdown().await
    }

    /// Waits until a read would return without waiting: buffered input, the peer's close, or bytes on the socket.
    pub async fn readable(&self) -> io::Result<()> {
        if self.has_buffered_input() || self.peer_closed {
            return Ok(());
        }
        self.tcp.readable(false).await
    }

    /// Gives back the ciphertext buffers when nothing is in them (after the handshake, and a keep-alive connection
    /// between requests): an idle connection then holds rustls' own state and nothing of the adapter's. Allocating
    /// them again for the next exchange costs less than measurement can tell (scripts/bench-tls-adapter.sh).
    pub fn shrink_when_idle(&mut self) {
        if self.taken == self.incoming.len() {
            self.incoming = Vec::new();
            self.taken = 0;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::rc::Rc;

    use super::*;
    use crate::tls::certificate::tests::certificate_for;
    use crate::tls::sni::SniCertificates;

    fn configs(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let certificate = certificate_for(&["corelb.test"]);
        let provider = crate::tls::provider();
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniCertificates::new(
                std::slice::from_ref(&certificate),
                false,
            )));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificate.key.cert[0].clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A client sends `request` over TLS to a server that echoes what it reads until the client closes; the client
    /// gets back every byte, in order, across many records. The request stays well under loopback's default
    /// receive buffer, so the echo never waits for the client to read.
    fn echo(version: &'static rustls::SupportedProtocolVersion, request: Vec<u8>) -> Vec<u8> {
        let (server_config, client_config) = configs(version);
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let address: SocketAddr = listener.local_addr().unwrap();
            let server = monoio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = TlsStream::server(tcp, server_config).unwrap();
                tls.handshake().await.unwrap();
                let mut buf = Vec::with_capacity(3000);
                loop {
                    let (result, returned) = tls.read_into(buf).await;
                    buf = returned;
                    if result.unwrap() == 0 {
                        break;
                    }
                    let (result, returned) = tls.write_all(buf).await;
                    result.unwrap();
                    buf = returned;
                    buf.clear();
                    tls.shrink_when_idle();
                }
                tls.shutdown().await.unwrap();
            });
            let tcp = TcpStream::connect(address).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("corelb.test").unwrap();
            let mut tls = TlsStream::client(tcp, client_config, name).unwrap();
            tls.handshake().await.unwrap();
            let length = request.len();
            let (result, _) = tls.write_all(request).await;
            result.unwrap();
            let mut received = Vec::with_capacity(length + 64 * 1024);
            while received.len() < length {
                let (result, returned) = tls.read_into(received).await;
                received = returned;
                assert!(result.unwrap() > 0, "closed early");
            }
            tls.shutdown().await.unwrap();
            let (result, returned) = tls.read_into(Vec::with_capacity(16)).await;
            assert_eq!(
                result.unwrap(),
                0,
                "the server's close_notify ends the stream: {returned:?}"
            );
            server.await;
            received
        })
    }

    #[test]
    fn a_buffered_stream_over_tls_reads_writes_and_times_out() {
        use crate::net::buffered::BufferedStream;
        use crate::net::watchdog::Watchdog;
        use std::time::Duration;

        let (server_config, client_config) = configs(&rustls::version::TLS13);
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let watchdog = Watchdog::new();
            monoio::spawn(Rc::clone(&watchdog).run());
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let client = monoio::spawn(async move {
                let tcp = TcpStream::connect(address).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("corelb.test").unwrap();
                let mut tls = TlsStream::client(tcp, client_config, name).unwrap();
                tls.handshake().await.unwrap();
                let (result, _) = tls.write_all(b"ping".to_vec()).await;
                result.unwrap();
                let mut answer = Vec::with_capacity(64);
                while answer.len() < 4 {
                    let (result, returned) = tls.read_into(answer).await;
                    answer = returned;
                    assert!(result.unwrap() > 0);
                }
                assert_eq!(answer, b"pong");
                // Sends nothing more and keeps the connection open until the server has timed out.
                let (result, _) = tls.read_into(Vec::with_capacity(16)).await;
                assert!(!matches!(result, Ok(count) if count > 0));
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = TlsStream::server(tcp, server_config).unwrap();
            tls.handshake().await.unwrap();
            let mut stream = BufferedStream::with_capacity(tls, &watchdog, 1024);
            while stream.buffered().len() < 4 {
                assert!(stream.fill(Duration::from_secs(30)).await.unwrap() > 0);
            }
            assert_eq!(stream.buffered(), b"ping");
            stream.consume(4);
            let (result, _) = stream.write_all(b"pong".to_vec(), Duration::from_secs(30)).await;
            result.unwrap();
            stream.shrink_when_idle(1024);
            let error = stream.fill(Duration::from_millis(50)).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::TimedOut);
            assert!(!stream.spliceable(), "a TLS stream is never spliced");
            drop(stream);
            client.await;
        });
    }

    #[test]
    fn bytes_cross_tls_13_and_12_intact() {
        let request: Vec<u8> = (0..100_000u32).map(|index| (index * 7 % 251) as u8).collect();
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            assert_eq!(echo(version, request.clone()), request);
        }
    }
}
