//! One TLS HTTP/1.1 responder, on one pinned io_uring thread, over either TLS integration:
//!
//! - `corelb`: corelb's own adapter (`corelb::net::tls::TlsStream`), with its ciphertext buffers given back
//!   whenever the connection waits for a request, as corelb's proxy does between requests;
//! - `monoio-rustls`: monoio-rustls 0.4's `TlsAcceptor` and stream.
//!
//! Everything else is the same: one `rustls::ServerConfig` (ring, TLS 1.3 and 1.2, ALPN `http/1.1`, the given
//! ECDSA certificate), a 2 KiB request buffer per connection, and a fixed 20-byte answer to each request head;
//! `Connection: close` in a request closes the connection after its answer. So the figures differ only by the
//! integration: CPU per request and memory per idle connection. Loopback only.
//!
//! Usage: corelb-tls-adapter-bench corelb|monoio-rustls PORT CERT KEY

use std::net::SocketAddr;
use std::sync::Arc;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\ncorelb bench origin\n";
const REQUEST_BUFFER: usize = 2048;

#[derive(Clone, Copy)]
enum Adapter {
    Corelb,
    MonoioRustls,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: corelb-tls-adapter-bench corelb|monoio-rustls PORT CERT KEY";
    let [_, adapter, port, cert, key] = args.as_slice() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let adapter = match adapter.as_str() {
        "corelb" => Adapter::Corelb,
        "monoio-rustls" => Adapter::MonoioRustls,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let port: u16 = port.parse().expect("PORT is a number");
    let config = Arc::new(server_config(cert, key));
    let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(4096)
        .build()
        .expect("an io_uring runtime");
    runtime.block_on(async move {
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let options = monoio::net::ListenerOpts::new().backlog(16384);
        let listener = TcpListener::bind_with_config(address, &options).expect("bind");
        eprintln!("tls-adapter-bench ready on {address}");
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let config = Arc::clone(&config);
            monoio::spawn(async move {
                match adapter {
                    Adapter::Corelb => serve_corelb(tcp, config).await,
                    Adapter::MonoioRustls => serve_monoio_rustls(tcp, config).await,
                }
            });
        }
    });
}

fn server_config(cert: &str, key: &str) -> rustls::ServerConfig {
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("CERT readable")
        .collect::<Result<Vec<_>, _>>()
        .expect("CERT is PEM");
    let key = PrivateKeyDer::from_pem_file(key).expect("KEY is a PEM private key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS 1.3 and 1.2")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a certificate and its key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// The end of the request head in `buf`, and whether it asks to close.
fn request_head(buf: &[u8]) -> Option<(usize, bool)> {
    let end = buf.windows(4).position(|window| window == b"\r\n\r\n")? + 4;
    let close = buf[..end]
        .windows(17)
        .any(|window| window.eq_ignore_ascii_case(b"connection: close"));
    Some((end, close))
}

async fn serve_corelb(tcp: TcpStream, config: Arc<rustls::ServerConfig>) {
    let Ok(mut tls) = corelb::net::tls::TlsStream::server(tcp, config) else {
        return;
    };
    if tls.handshake().await.is_err() {
        return;
    }
    let mut buf = Vec::with_capacity(REQUEST_BUFFER);
    loop {
        while let Some((end, close)) = request_head(&buf) {
            buf.drain(..end);
            let (written, _) = tls.write_all(ANSWER).await;
            if written.is_err() || close {
                let _ = tls.shutdown().await;
                return;
            }
        }
        if buf.len() == buf.capacity() {
            return;
        }
        // Waiting for the next request: the adapter's ciphertext buffers go back, as in corelb's proxy.
        tls.shrink_when_idle();
        let (read, returned) = tls.read_into(buf).await;
        buf = returned;
        if !matches!(read, Ok(count) if count > 0) {
            return;
        }
    }
}

async fn serve_monoio_rustls(tcp: TcpStream, config: Arc<rustls::ServerConfig>) {
    let acceptor = monoio_rustls::TlsAcceptor::from(config);
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    let mut buf = Vec::with_capacity(REQUEST_BUFFER);
    loop {
        while let Some((end, close)) = request_head(&buf) {
            buf.drain(..end);
            let (written, _) = tls.write_all(ANSWER).await;
            if written.is_err() || close {
                let _ = monoio::io::AsyncWriteRent::shutdown(&mut tls).await;
                return;
            }
        }
        let len = buf.len();
        if len == buf.capacity() {
            return;
        }
        let capacity = buf.capacity();
        let (read, returned) = tls.read(buf.slice_mut(len..capacity)).await;
        buf = returned.into_inner();
        if !matches!(read, Ok(count) if count > 0) {
            return;
        }
    }
}
