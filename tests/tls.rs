//! TLS termination against the real binary: handshakes over TLS 1.3 and 1.2, old versions refused, the
//! certificate picked by SNI, mutual TLS, the handshake timeout, resumption on whichever core accepts, and
//! certificates replaced under load. Certificates are made here with rcgen (never committed); the client is
//! rustls with a response reader of its own (not corelb's parser).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{metric_sum, Backend, Corelb, TempDir};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, ProtocolVersion, SignatureScheme};

// ---- certificates ----------------------------------------------------------------------------------------------

/// A test certificate authority.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM and DER.
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Authority { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for `names`, with `names[0]` as its common name.
    fn server(&self, names: &[&str]) -> Issued {
        self.issue(names, names[0], ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate whose subject is `CN=common_name`.
    fn client(&self, common_name: &str) -> Issued {
        self.issue(&[], common_name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A server certificate for `names` that expires `days` from now.
    fn server_expiring_in(&self, names: &[&str], days: i64) -> Issued {
        self.issue_until(names, names[0], ExtendedKeyUsagePurpose::ServerAuth, Some(days))
    }

    fn issue(&self, names: &[&str], common_name: &str, usage: ExtendedKeyUsagePurpose) -> Issued {
        self.issue_until(names, common_name, usage, None)
    }

    fn issue_until(
        &self,
        names: &[&str],
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
        days: Option<i64>,
    ) -> Issued {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        if let Some(days) = days {
            params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        }
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

/// Where a test keeps its certificate files.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Files {
        Files { dir: TempDir::new() }
    }

    /// Writes `issued` as `name.pem` and `name.key`; returns the two paths.
    fn write(&self, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        let cert = self.dir.write(&format!("{name}.pem"), &issued.cert_pem);
        let key = self.dir.write(&format!("{name}.key"), &issued.key_pem);
        (cert, key)
    }

    /// Replaces `name.pem`/`name.key` by writing each to a side file and renaming it over the old (as a
    /// certificate manager does), so corelb never reads half a file.
    fn replace(&self, name: &str, issued: &Issued) {
        for (suffix, contents) in [("pem", &issued.cert_pem), ("key", &issued.key_pem)] {
            let side = self.dir.write(&format!("{name}.{suffix}.new"), contents);
            std::fs::rename(side, self.dir.0.join(format!("{name}.{suffix}"))).unwrap();
        }
    }

    fn write_text(&self, name: &str, text: &str) -> PathBuf {
        self.dir.write(name, text)
    }
}

// ---- corelb ----------------------------------------------------------------------------------------------------

/// A config with one TLS frontend `web` (its `[frontends.tls]` body given) in front of `backend`.
fn tls_config(backend: &Backend, workers: usize, tls: &str, extra: &str) -> String {
    format!(
        "[server]\nworkers = {workers}\npin_workers = false\nshutdown_grace = \"5s\"\nexpose_worker_header = true\n\n\
         [metrics]\nport = 0\n\n[[frontends]]\nname = \"web\"\naddress = \"127.0.0.1\"\nport = 0\n\n\
         [frontends.tls]\n{tls}\n\n[[backends]]\nurl = \"{}\"\n\n{extra}",
        backend.url()
    )
}

fn one_certificate(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!("cert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display())
}

/// corelb with one TLS frontend `web` serving `first`, a certificate for `secure.test` from `ca`, kept in
/// `files` as `secure.pem` and `secure.key`; `tls_extra` goes into its `[frontends.tls]`, `extra` after the rest.
struct Site {
    ca: Authority,
    files: Files,
    first: Issued,
    cert: PathBuf,
    key: PathBuf,
    backend: Backend,
    corelb: Corelb,
}

impl Site {
    fn start(workers: usize, tls_extra: &str, extra: &str) -> Site {
        let ca = Authority::new("corelb test CA");
        let files = Files::new();
        let first = ca.server(&["secure.test"]);
        let (cert, key) = files.write("secure", &first);
        let backend = Backend::start("a");
        let tls = format!("{tls_extra}{}", one_certificate(&cert, &key));
        let corelb = Corelb::start(&tls_config(&backend, workers, &tls, extra));
        Site {
            ca,
            files,
            first,
            cert,
            key,
            backend,
            corelb,
        }
    }
}

// ---- the client ------------------------------------------------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts whatever certificate the server shows (the tests read it afterwards): for checking which certificate
/// SNI picked, whatever name it is for.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How a test client speaks TLS.
struct ClientSetup {
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    trust: Option<CertificateDer<'static>>,
    identity: Option<(CertificateDer<'static>, Vec<u8>)>,
}

impl ClientSetup {
    /// TLS 1.3 and 1.2, trusting `ca`.
    fn trusting(ca: &Authority) -> ClientSetup {
        ClientSetup {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            trust: Some(ca.der()),
            identity: None,
        }
    }

    /// Trusting any certificate (to see which one the server picked).
    fn trusting_anything() -> ClientSetup {
        ClientSetup {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            trust: None,
            identity: None,
        }
    }

    fn only(mut self, version: &'static rustls::SupportedProtocolVersion) -> ClientSetup {
        self.versions = vec![version];
        self
    }

    fn with_identity(mut self, issued: &Issued) -> ClientSetup {
        self.identity = Some((issued.der.clone(), issued.key_der.clone()));
        self
    }

    fn build(&self) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&self.versions)
            .unwrap();
        let builder = match &self.trust {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.clone()).unwrap();
                builder.with_root_certificates(roots)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider()))),
        };
        let mut config = match &self.identity {
            Some((cert, key)) => {
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone()));
                builder.with_client_auth_cert(vec![cert.clone()], key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A response as this test's own reader saw it.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The value of request header `name` as the example backend's `/echo` reports it.
    fn echoed(&self, name: &str) -> Option<String> {
        let echo: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|pair| pair[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|pair| pair[1].as_str().unwrap().to_string())
    }

    fn echoed_all(&self, name: &str) -> Vec<String> {
        let echo: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pair| pair[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|pair| pair[1].as_str().unwrap().to_string())
            .collect()
    }
}

/// One TLS connection to corelb.
struct TlsClient {
    stream: rustls::StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    /// Connects and completes the handshake; the error is what the handshake ended with.
    fn connect(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> std::io::Result<TlsClient> {
        let mut tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
        tcp.set_nodelay(true)?;
        let server_name = ServerName::try_from(name.to_string()).unwrap();
        let mut connection = ClientConnection::new(Arc::clone(config), server_name).unwrap();
        while connection.is_handshaking() {
            connection.complete_io(&mut tcp)?;
        }
        Ok(TlsClient {
            stream: rustls::StreamOwned::new(connection, tcp),
            buf: Vec::new(),
        })
    }

    fn version(&self) -> Option<ProtocolVersion> {
        self.stream.conn.protocol_version()
    }

    fn resumed(&self) -> bool {
        self.stream.conn.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// The server's leaf certificate.
    fn server_certificate(&self) -> CertificateDer<'static> {
        self.stream.conn.peer_certificates().unwrap()[0].clone().into_owned()
    }

    /// `GET path` with `extra` header lines (each ending in CRLF); the error is whatever ended the exchange.
    fn get(&mut self, path: &str, extra: &str) -> std::io::Result<Reply> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: secure.test\r\n{extra}\r\n");
        self.stream.write_all(request.as_bytes())?;
        self.stream.flush()?;
        self.read_reply()
    }

    /// `POST path` with `body` framed by Content-Length.
    fn post(&mut self, path: &str, body: &[u8]) -> std::io::Result<Reply> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: secure.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.stream.write_all(head.as_bytes())?;
        self.stream.write_all(body)?;
        self.stream.flush()?;
        self.read_reply()
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let read = self.stream.read(&mut chunk)?;
        if read == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "closed before a whole response",
            ));
        }
        self.buf.extend_from_slice(&chunk[..read]);
        Ok(())
    }

    /// Reads one response framed by Content-Length (all the example backend and corelb send here).
    fn read_reply(&mut self) -> std::io::Result<Reply> {
        let head_end = loop {
            if let Some(position) = self.buf.windows(4).position(|window| window == b"\r\n\r\n") {
                break position + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8(self.buf.drain(..head_end).collect()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.to_string(), value.trim().to_string())
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, value)| value.parse().unwrap());
        while self.buf.len() < length {
            self.fill()?;
        }
        let body = String::from_utf8(self.buf.drain(..length).collect()).unwrap();
        Ok(Reply { status, headers, body })
    }
}

/// The alert a handshake or the first read after it ended with, if it was one.
fn alert_of(error: &std::io::Error) -> Option<rustls::AlertDescription> {
    let inner = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Connects with `config` and sends one request; returns the error that ended it (a handshake in TLS 1.3 can
/// look done to the client before the server has judged its certificate: the alert comes on the first read).
fn refused(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> std::io::Error {
    match TlsClient::connect(addr, config, name) {
        Err(error) => error,
        Ok(mut client) => match client.get("/echo", "") {
            Ok(reply) => panic!("expected the connection to be refused, got {}", reply.status),
            Err(error) => error,
        },
    }
}

/// Polls the merged metrics until `family{filter}` sums to at least `value`.
fn wait_for_metric(corelb: &Corelb, family: &str, filter: &str, value: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = metric_sum(&corelb.scrape(), family, filter);
        if seen >= value {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{family}{{{filter}}} stayed at {seen}, below {value}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- the tests -------------------------------------------------------------------------------------------------

#[test]
fn requests_go_through_over_tls_13_and_12_marked_as_https() {
    let Site {
        ca, backend, corelb, ..
    } = Site::start(1, "", "");

    for (version, label) in [(&rustls::version::TLS13, "1.3"), (&rustls::version::TLS12, "1.2")] {
        let config = ClientSetup::trusting(&ca).only(version).build();
        let mut client = TlsClient::connect(corelb.addr, &config, "secure.test").unwrap();
        assert_eq!(client.version(), Some(version.version));
        assert_eq!(client.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        for _ in 0..3 {
            let reply = client.get("/echo", "X-Forwarded-Proto: http\r\n").unwrap();
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(
                reply.echoed_all("X-Forwarded-Proto"),
                vec!["https".to_string()],
                "{label}"
            );
        }
        wait_for_metric(
            &corelb,
            "corelb_tls_handshakes_total",
            &format!("version=\"{label}\""),
            1.0,
        );
    }
    // Plain HTTP on the TLS port is not served.
    let mut plain = TcpStream::connect(corelb.addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        answer.first() == Some(&0x15),
        "a TLS alert and the end, not HTTP: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(backend.stats().1, 6, "only the six TLS requests reached the backend");
}

#[test]
fn large_bodies_cross_tls_both_ways_on_one_kept_connection() {
    // The adapter reads into 2 KiB while a connection is quiet and grows to a whole record only once a read fills
    // it, and gives its buffers back between exchanges: bodies many records long, in both directions, with small
    // exchanges between them, must cross byte for byte and leave the connection usable.
    let Site {
        ca, backend, corelb, ..
    } = Site::start(1, "", "");
    let upload: Vec<u8> = (0..300_000u32).map(|index| b'A' + (index * 7 % 26) as u8).collect();
    let download = 262_144usize;
    let expected: String = (0..download)
        .map(|index| char::from(b'a' + (index % (64 * 1024) % 26) as u8))
        .collect();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = ClientSetup::trusting(&ca).only(version).build();
        let mut client = TlsClient::connect(corelb.addr, &config, "secure.test").unwrap();
        for round in 0..2 {
            let reply = client.post("/echo", &upload).unwrap();
            assert_eq!(reply.status, 200, "{}", reply.body);
            let echo: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(
                echo["body_length"],
                upload.len(),
                "round {round}: the whole upload reached the backend"
            );

            let reply = client.get(&format!("/bytes?n={download}"), "").unwrap();
            assert_eq!(reply.status, 200);
            assert!(
                reply.body == expected,
                "round {round}: the download arrived altered or cut"
            );

            let reply = client.get("/echo", "").unwrap();
            assert_eq!(reply.status, 200, "a small exchange after the large ones");
        }
    }
    assert_eq!(backend.stats().1, 12, "every request reached the backend once");
}

/// A ClientHello that offers TLS 1.0 or 1.1 only (no supported_versions extension), as old clients send.
fn legacy_client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0, 4, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, RSA-AES128-SHA
    body.extend_from_slice(&[1, 0]); // null compression
    let mut handshake = vec![1u8];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn tls_10_and_11_are_refused_with_an_alert() {
    let Site { backend, corelb, .. } = Site::start(1, "", "");
    for version in [[3u8, 1u8], [3, 2]] {
        let mut tcp = TcpStream::connect(corelb.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(&legacy_client_hello(version)).unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        assert!(answer.len() >= 7, "expected an alert, got {answer:?}");
        assert_eq!(answer[0], 0x15, "an alert record, not a ServerHello: {answer:?}");
        assert_eq!(answer[5], 2, "a fatal alert: {answer:?}");
        // rustls answers a ClientHello without TLS 1.2 or 1.3 with handshake_failure (some servers send
        // protocol_version): either way the handshake ends there.
        assert!(
            matches!(answer[6], 40 | 70),
            "handshake_failure or protocol_version: {answer:?}"
        );
    }
    wait_for_metric(
        &corelb,
        "corelb_tls_handshake_failures_total",
        "reason=\"protocol_version\"",
        2.0,
    );
    assert_eq!(backend.stats().1, 0);
}

#[test]
fn sni_picks_the_exact_name_then_the_wildcard_then_the_default() {
    let ca = Authority::new("corelb test CA");
    let files = Files::new();
    let default = ca.server(&["default.test"]);
    let exact = ca.server(&["api.example.test"]);
    let wildcard = ca.server(&["*.example.test"]);
    let (default_cert, default_key) = files.write("default", &default);
    let (wildcard_cert, wildcard_key) = files.write("wildcard", &wildcard);
    let (exact_cert, exact_key) = files.write("exact", &exact);
    let listed = |cert: &PathBuf, key: &PathBuf| {
        format!(
            "[[frontends.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    // The exact name is listed after the wildcard that also covers it: exact wins whatever the order.
    let tls = format!(
        "strict_sni = false\n{}{}{}",
        listed(&default_cert, &default_key),
        listed(&wildcard_cert, &wildcard_key),
        listed(&exact_cert, &exact_key)
    );
    let backend = Backend::start("a");
    let corelb = Corelb::start(&tls_config(&backend, 1, &tls, ""));
    let anything = ClientSetup::trusting_anything().build();
    for (name, expected, what) in [
        ("api.example.test", &exact, "exact"),
        ("API.Example.Test", &exact, "exact, any case"),
        ("www.example.test", &wildcard, "wildcard"),
        ("a.b.example.test", &default, "default (a wildcard covers one label)"),
        (
            "example.test",
            &default,
            "default (a wildcard does not cover its parent)",
        ),
        ("other.test", &default, "default"),
    ] {
        let mut client = TlsClient::connect(corelb.addr, &anything, name).unwrap();
        assert!(
            client.server_certificate() == expected.der,
            "{name}: expected the {what} certificate"
        );
        assert_eq!(client.get("/", "").unwrap().status, 200);
    }
    // And the picked certificate verifies for the name asked.
    let verifying = ClientSetup::trusting(&ca).build();
    for name in ["api.example.test", "www.example.test", "default.test"] {
        let mut client = TlsClient::connect(corelb.addr, &verifying, name).unwrap();
        assert_eq!(client.get("/", "").unwrap().status, 200);
    }
}

#[test]
fn strict_sni_refuses_a_name_no_certificate_serves() {
    let Site { backend, corelb, .. } = Site::start(1, "strict_sni = true\n", "");
    let anything = ClientSetup::trusting_anything().build();
    let error = TlsClient::connect(corelb.addr, &anything, "unknown.test")
        .err()
        .expect("refused");
    assert!(alert_of(&error).is_some(), "an alert, got {error}");
    let mut known = TlsClient::connect(corelb.addr, &anything, "secure.test").unwrap();
    assert_eq!(known.get("/", "").unwrap().status, 200);
    wait_for_metric(
        &corelb,
        "corelb_tls_handshake_failures_total",
        "reason=\"unknown_server_name\"",
        1.0,
    );
    assert_eq!(backend.stats().1, 1);
}

#[test]
fn idle_and_half_sent_handshakes_are_closed_at_the_handshake_timeout() {
    // Every other timeout far longer than the handshake's, so only it can close these connections.
    let Site { backend, corelb, .. } = Site::start(
        1,
        "handshake_timeout = \"300ms\"\n",
        "[timeouts]\nclient_header = \"60s\"\nclient_idle = \"60s\"\n",
    );
    let idle = TcpStream::connect(corelb.addr).unwrap();
    let mut half = TcpStream::connect(corelb.addr).unwrap();
    half.write_all(&legacy_client_hello([3, 3])[..20]).unwrap();
    for (mut stream, what) in [(idle, "idle"), (half, "half a ClientHello")] {
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(error) => assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{what}: {error}"),
        }
        assert!(answer.is_empty(), "{what}: no TLS answer to no ClientHello: {answer:?}");
    }
    wait_for_metric(
        &corelb,
        "corelb_tls_handshake_failures_total",
        "reason=\"timeout\"",
        2.0,
    );
    assert_eq!(backend.stats().1, 0);
}

/// A corelb whose frontend asks for client certificates (`mode`) signed by `clients`, passing the subject in
/// `X-Client-Subject`.
fn mutual_tls(mode: &str, server_ca: &Authority, clients: &Authority) -> (Corelb, Backend, Files) {
    let files = Files::new();
    let (cert, key) = files.write("secure", &server_ca.server(&["secure.test"]));
    let client_ca = files.write_text("clients.pem", &clients.pem());
    let tls = format!(
        "client_auth = \"{mode}\"\nclient_ca = \"{}\"\nclient_identity_header = \"X-Client-Subject\"\n{}",
        client_ca.display(),
        one_certificate(&cert, &key)
    );
    let backend = Backend::start("a");
    let corelb = Corelb::start(&tls_config(&backend, 1, &tls, ""));
    (corelb, backend, files)
}

#[test]
fn required_client_certificates_are_checked_at_the_handshake() {
    let server_ca = Authority::new("corelb test CA");
    let clients = Authority::new("corelb client CA");
    let strangers = Authority::new("someone else's CA");
    let (corelb, backend, _files) = mutual_tls("required", &server_ca, &clients);

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let anonymous = ClientSetup::trusting(&server_ca).only(version).build();
        let error = refused(corelb.addr, &anonymous, "secure.test");
        assert!(alert_of(&error).is_some(), "no certificate: an alert, got {error}");

        let untrusted = ClientSetup::trusting(&server_ca)
            .only(version)
            .with_identity(&strangers.client("mallory"))
            .build();
        let error = refused(corelb.addr, &untrusted, "secure.test");
        assert!(
            alert_of(&error).is_some(),
            "an untrusted certificate: an alert, got {error}"
        );

        let good = ClientSetup::trusting(&server_ca)
            .only(version)
            .with_identity(&clients.client("alice"))
            .build();
        let mut client = TlsClient::connect(corelb.addr, &good, "secure.test").unwrap();
        let reply = client.get("/echo", "X-Client-Subject: CN=admin\r\n").unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.echoed_all("X-Client-Subject"), vec!["CN=alice".to_string()]);
    }
    wait_for_metric(
        &corelb,
        "corelb_tls_handshake_failures_total",
        "reason=\"no_client_certificate\"",
        2.0,
    );
    wait_for_metric(
        &corelb,
        "corelb_tls_handshake_failures_total",
        "reason=\"bad_client_certificate\"",
        2.0,
    );
    assert_eq!(
        backend.stats().1,
        2,
        "only the two good clients' requests reached the backend"
    );
}

#[test]
fn optional_client_certificates_admit_anonymous_clients_without_an_identity() {
    let server_ca = Authority::new("corelb test CA");
    let clients = Authority::new("corelb client CA");
    let (corelb, _backend, _files) = mutual_tls("optional", &server_ca, &clients);

    let anonymous = ClientSetup::trusting(&server_ca).build();
    let mut client = TlsClient::connect(corelb.addr, &anonymous, "secure.test").unwrap();
    let reply = client.get("/echo", "X-Client-Subject: CN=admin\r\n").unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echoed("X-Client-Subject"), None, "a forged identity is stripped");

    let known = ClientSetup::trusting(&server_ca)
        .with_identity(&clients.client("bob"))
        .build();
    let mut client = TlsClient::connect(corelb.addr, &known, "secure.test").unwrap();
    let reply = client.get("/echo", "").unwrap();
    assert_eq!(reply.echoed_all("X-Client-Subject"), vec!["CN=bob".to_string()]);

    let strangers = Authority::new("someone else's CA");
    let untrusted = ClientSetup::trusting(&server_ca)
        .with_identity(&strangers.client("mallory"))
        .build();
    let error = refused(corelb.addr, &untrusted, "secure.test");
    assert!(
        alert_of(&error).is_some(),
        "a certificate offered is still verified: {error}"
    );
}

#[test]
fn a_session_resumes_on_whichever_core_accepts_the_connection() {
    let Site {
        ca,
        backend: _backend,
        corelb,
        ..
    } = Site::start(2, "", "");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // One client config: its session store carries the tickets from one connection to the next.
        let config = ClientSetup::trusting(&ca).only(version).build();
        let mut first = TlsClient::connect(corelb.addr, &config, "secure.test").unwrap();
        assert!(!first.resumed());
        assert_eq!(first.get("/", "").unwrap().status, 200);
        drop(first);
        let mut workers = std::collections::BTreeSet::new();
        let mut attempts = 0;
        // Until both cores have taken resumed connections (and at least 40 attempts).
        while attempts < 40 || workers.len() < 2 {
            assert!(attempts < 400, "every connection landed on one core: {workers:?}");
            let mut client = TlsClient::connect(corelb.addr, &config, "secure.test").unwrap();
            let reply = client.get("/", "").unwrap();
            assert_eq!(reply.status, 200);
            assert!(
                client.resumed(),
                "attempt {attempts} over {:?} was a full handshake (worker {:?})",
                version.version,
                reply.header("X-Corelb-Worker")
            );
            workers.insert(reply.header("X-Corelb-Worker").unwrap().to_string());
            attempts += 1;
        }
    }
    wait_for_metric(&corelb, "corelb_tls_handshakes_total", "resumed=\"true\"", 80.0);
}

/// Makes the certificate for `secure.test` `generations` times over while 8 keep-alive clients and one client
/// that opens a connection per request keep sending, reloading after each: no request fails, and every new
/// handshake after a reload sees the new certificate.
#[test]
fn certificates_replaced_under_load_lose_no_request() {
    let Site {
        ca,
        files,
        first,
        backend: _backend,
        corelb,
        ..
    } = Site::start(2, "", "");
    let addr = corelb.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let config = ClientSetup::trusting(&ca).build();
    let mut load = Vec::new();
    for _ in 0..8 {
        let (stop, served, config) = (Arc::clone(&stop), Arc::clone(&served), Arc::clone(&config));
        load.push(std::thread::spawn(move || {
            let mut client = TlsClient::connect(addr, &config, "secure.test").unwrap();
            while !stop.load(Ordering::Relaxed) {
                let reply = client
                    .get("/", "")
                    .expect("a keep-alive request over the old handshake");
                assert_eq!(reply.status, 200);
                served.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let current = Arc::new(std::sync::Mutex::new(first.der.clone()));
    {
        let (stop, served, config) = (Arc::clone(&stop), Arc::clone(&served), Arc::clone(&config));
        load.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut client = TlsClient::connect(addr, &config, "secure.test").expect("a new handshake");
                let reply = client
                    .get("/", "Connection: close\r\n")
                    .expect("a request on a new connection");
                assert_eq!(reply.status, 200);
                served.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let fresh = ClientSetup::trusting_anything().build();
    for generation in 0..10 {
        let next = ca.server(&["secure.test"]);
        files.replace("secure", &next);
        let (code, out, err) = corelb.ctl(&["cert", "reload"]);
        assert_eq!(code, 0, "reload {generation}: {out} {err}");
        assert!(out.contains("TLS reloaded"), "reload {generation}: {out}");
        *current.lock().unwrap() = next.der.clone();
        // Every handshake begun after the reply sees the new certificate.
        for _ in 0..3 {
            let client = TlsClient::connect(addr, &fresh, "secure.test").unwrap();
            assert!(
                client.server_certificate() == next.der,
                "reload {generation}: an old certificate"
            );
        }
        let before = served.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while served.load(Ordering::Relaxed) < before + 20 {
            assert!(Instant::now() < deadline, "the load stopped after reload {generation}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().expect("no client saw a failure");
    }
    assert!(served.load(Ordering::Relaxed) >= 200);
}

#[test]
fn a_broken_certificate_is_refused_with_its_file_and_the_old_one_stays() {
    let Site {
        ca,
        files,
        first: good,
        cert,
        key,
        backend: _backend,
        corelb,
    } = Site::start(1, "", "");
    let config = ClientSetup::trusting(&ca).build();
    let mut kept = TlsClient::connect(corelb.addr, &config, "secure.test").unwrap();
    assert_eq!(kept.get("/", "").unwrap().status, 200);

    // A whole pair, but expired.
    files.replace("secure", &ca.server_expiring_in(&["secure.test"], -1));
    let (code, out, err) = corelb.ctl(&["cert", "reload"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("secure.pem: the certificate expired"), "{err}");
    // A whole pair, but for another name than the one the running certificate serves.
    files.replace("secure", &ca.server(&["other.test"]));
    let (code, out, err) = corelb.ctl(&["cert", "reload"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("secure.pem: the new certificate does not serve secure.test"),
        "{err}"
    );

    // The key of another certificate.
    let other = ca.server(&["secure.test"]);
    std::fs::write(&key, &other.key_pem).unwrap();
    let (code, out, err) = corelb.ctl(&["cert", "reload"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("secure.key") || err.contains("secure.pem"),
        "names the file: {err}"
    );
    // Not PEM at all.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let (code, _, err) = corelb.ctl(&["cert", "reload"]);
    assert_ne!(code, 0);
    assert!(err.contains("secure.pem"), "names the file: {err}");

    // The old certificate still serves, old connections and new.
    assert_eq!(kept.get("/", "").unwrap().status, 200);
    let mut fresh = TlsClient::connect(corelb.addr, &ClientSetup::trusting_anything().build(), "secure.test").unwrap();
    assert!(fresh.server_certificate() == good.der);
    assert_eq!(fresh.get("/", "").unwrap().status, 200);
}

#[test]
fn certificate_expiry_is_a_gauge_per_certificate() {
    let Site {
        backend: _backend,
        corelb,
        ..
    } = Site::start(1, "", "");
    let seconds = metric_sum(
        &corelb.scrape(),
        "corelb_tls_certificate_expiry_seconds",
        "frontend=\"web\"",
    );
    // rcgen's default validity runs to 4096; anything over a year shows the gauge reads the certificate.
    assert!(seconds > 365.0 * 86_400.0, "{seconds}");
}

/// Handshakes until one shows `expected` (10 s at most): for changes that land a moment after the files do.
fn wait_for_certificate(addr: SocketAddr, expected: &CertificateDer<'static>, what: &str) {
    let anything = ClientSetup::trusting_anything().build();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let client = TlsClient::connect(addr, &anything, "secure.test").unwrap();
        if client.server_certificate() == *expected {
            return;
        }
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_watched_certificate_replaced_on_disk_is_served_without_a_command() {
    let Site {
        ca,
        files,
        key,
        backend: _backend,
        corelb,
        ..
    } = Site::start(2, "", "[tls]\nwatch = \"100ms\"\n");
    let config = ClientSetup::trusting(&ca).build();
    let mut kept = TlsClient::connect(corelb.addr, &config, "secure.test").unwrap();
    assert_eq!(kept.get("/", "").unwrap().status, 200);

    let second = ca.server(&["secure.test"]);
    files.replace("secure", &second);
    wait_for_certificate(corelb.addr, &second.der, "the renewed certificate");
    assert_eq!(
        kept.get("/", "").unwrap().status,
        200,
        "a connection from before keeps working"
    );

    // A broken pair is refused (and logged); the renewed one stays.
    std::fs::write(&key, ca.server(&["secure.test"]).key_pem).unwrap();
    corelb.process.clone_output_wait("reload refused");
    let client = TlsClient::connect(corelb.addr, &ClientSetup::trusting_anything().build(), "secure.test").unwrap();
    assert!(client.server_certificate() == second.der);
    let (code, out, _) = corelb.ctl(&["versions"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("certificate watch"),
        "the change is recorded as the watch's: {out}"
    );
}

#[test]
fn cert_list_names_each_certificate_and_its_days_left() {
    let ca = Authority::new("corelb test CA");
    let files = Files::new();
    let (cert, key) = files.write(
        "secure",
        &ca.server_expiring_in(&["secure.test", "www.secure.test"], 20),
    );
    let backend = Backend::start("a");
    let corelb = Corelb::start(&tls_config(&backend, 1, &one_certificate(&cert, &key), ""));
    let (code, out, err) = corelb.ctl(&["cert", "list"]);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|line| line.starts_with("web"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("secure.test,www.secure.test"), "{row}");
    assert!(
        row.contains(" 19.") || row.contains(" 20.0"),
        "about 20 days left: {row}"
    );
    assert!(row.contains("secure.pem"), "{row}");
    let reply = corelb.control(serde_json::json!({"cmd": "certificates"}));
    let listed = &reply["result"]["frontends"][0];
    assert_eq!(listed["frontend"], "web");
    assert_eq!(listed["certificates"][0]["names"][1], "www.secure.test");
}

/// Runs `corelb check` on `config`; returns (exit code, stdout, stderr).
fn check(files: &Files, config: &str) -> (i32, String, String) {
    let path = files.write_text("check.toml", config);
    let output = std::process::Command::new(common::CORELB)
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_validates_certificates_and_warns_before_they_expire() {
    let ca = Authority::new("corelb test CA");
    let files = Files::new();
    let backend = Backend::start("a");

    let (cert, key) = files.write("fine", &ca.server(&["secure.test"]));
    let (code, out, err) = check(&files, &tls_config(&backend, 1, &one_certificate(&cert, &key), ""));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("fine.pem for secure.test expires in"), "{out}");
    assert!(!err.contains("warning"), "{err}");

    let (cert, key) = files.write("soon", &ca.server_expiring_in(&["secure.test"], 5));
    let (code, _, err) = check(&files, &tls_config(&backend, 1, &one_certificate(&cert, &key), ""));
    assert_eq!(code, 0, "a warning does not fail the check: {err}");
    assert!(
        err.contains("warning: frontend web:") && err.contains("soon.pem: expires in"),
        "{err}"
    );

    let (cert, _) = files.write("mismatched", &ca.server(&["secure.test"]));
    let (_, other_key) = files.write("other", &ca.server(&["secure.test"]));
    let (code, _, err) = check(
        &files,
        &tls_config(&backend, 1, &one_certificate(&cert, &other_key), ""),
    );
    assert_ne!(code, 0);
    assert!(err.contains("other.key") && err.contains("mismatched.pem"), "{err}");
}

/// corelb in front of `upstream` (a TLS-terminating corelb) as its one `https://` backend, verified with
/// `site`'s CA for `name`.
fn https_front(site: &Site, name: &str) -> Corelb {
    https_front_with(site, name, "")
}

/// [`https_front`] with `extra` appended to its config.
fn https_front_with(site: &Site, name: &str, extra: &str) -> Corelb {
    let ca = site.files.write_text("upstream-ca.pem", &site.ca.pem());
    let url = format!("https://127.0.0.1:{}", site.corelb.addr.port());
    Corelb::start(&common::config_from_urls(
        &[(url, 1)],
        1,
        "",
        &format!(
            "server_name = \"{name}\"\n\n[upstream.tls]\nca = \"{}\"\n\n{extra}",
            ca.display()
        ),
    ))
}

#[test]
fn an_https_backend_is_verified_for_its_name_and_its_connections_are_pooled() {
    let site = Site::start(1, "", "");
    let front = https_front(&site, "secure.test");
    let mut client = front.client();
    for _ in 0..5 {
        let response = client.get("/echo");
        assert_eq!(response.status, 200, "{}", response.text());
        // The TLS corelb in between says the request reached it over TLS.
        assert!(
            response.text().contains("[\"X-Forwarded-Proto\",\"https\"]"),
            "{}",
            response.text()
        );
    }
    let reused = metric_sum(&front.scrape(), "corelb_upstream_connections_total", "kind=\"reused\"");
    assert!(
        reused >= 4.0,
        "the TLS connection to the backend is kept and reused: {reused}"
    );
    wait_for_metric(&site.corelb, "corelb_tls_handshakes_total", "frontend=\"web\"", 1.0);
    let handshakes = metric_sum(&site.corelb.scrape(), "corelb_tls_handshakes_total", "frontend=\"web\"");
    assert_eq!(handshakes, 1.0, "one handshake for five requests");
}

#[test]
fn an_https_backend_showing_the_wrong_name_is_a_502_upstream_tls() {
    let site = Site::start(1, "", "");
    let front = https_front(&site, "other.test");
    let response = front.get("/");
    assert_eq!(response.status, 502);
    assert!(response.text().contains("upstream_tls"), "{}", response.text());
    assert_eq!(site.backend.stats().1, 0, "nothing reached the backend behind it");
}

/// Health checks every 300 ms that flip after two probes.
const QUICK_CHECKS: &str = "[healthcheck]\nenabled = true\ninterval = \"300ms\"\ntimeout = \"300ms\"\n\
                            healthy_threshold = 2\nunhealthy_threshold = 2\n";

#[test]
fn health_checks_to_an_https_backend_speak_tls_and_verify_its_name() {
    let site = Site::start(1, "", "");
    let front = https_front_with(&site, "secure.test", QUICK_CHECKS);
    wait_for_metric(&front, "corelb_health_checks_total", "result=\"ok\"", 3.0);
    // Every probe was a TLS handshake at the backend, none a plain-text request refused there.
    wait_for_metric(&site.corelb, "corelb_tls_handshakes_total", "frontend=\"web\"", 3.0);
    assert_eq!(front.get("/").status, 200);

    let wrong = https_front_with(&site, "other.test", QUICK_CHECKS);
    wait_for_metric(&wrong, "corelb_health_checks_total", "result=\"tls_failed\"", 2.0);
    wait_for_metric(&wrong, "corelb_health_transitions_total", "to=\"unhealthy\"", 1.0);
    let metrics = wrong.scrape();
    assert_eq!(
        metric_sum(&metrics, "corelb_health_checks_total", "result=\"ok\""),
        0.0,
        "no probe passes against a certificate for another name: {metrics}"
    );
}

#[test]
fn a_change_elsewhere_keeps_backend_sessions_and_a_rewritten_ca_is_read_on_reload() {
    let site = Site::start(1, "", "");
    // No idle pool: every request opens its own TLS connection to the backend, and all but the first resume.
    let front = https_front_with(&site, "secure.test", "[upstream]\nmax_idle_per_backend = 0\n");
    let handshakes = |filter: &str| metric_sum(&site.corelb.scrape(), "corelb_tls_handshakes_total", filter);
    for _ in 0..3 {
        assert_eq!(front.get("/").status, 200);
    }
    wait_for_metric(&site.corelb, "corelb_tls_handshakes_total", "frontend=\"web\"", 3.0);
    let resumed = handshakes("resumed=\"true\"");
    assert!(resumed >= 2.0, "reconnects to the backend resume: {resumed}");

    // A change to something else keeps each core's client config, and with it the sessions.
    let config_path = front.dir.0.join("corelb.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, config.replace("weight = 1", "weight = 2")).unwrap();
    let (code, out, err) = front.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("weight") && !out.contains("upstream TLS reloaded"),
        "{out}"
    );
    let total = handshakes("frontend=\"web\"");
    assert_eq!(front.get("/").status, 200);
    wait_for_metric(
        &site.corelb,
        "corelb_tls_handshakes_total",
        "frontend=\"web\"",
        total + 1.0,
    );
    assert_eq!(
        handshakes("resumed=\"true\""),
        resumed + 1.0,
        "the connection after an unrelated change resumed"
    );

    // The CA bundle rewritten in place with an unchanged config: a reload reads it, and the backend's
    // certificate no longer verifies.
    let ca_path = site
        .files
        .write_text("upstream-ca.pem", &Authority::new("another CA").pem());
    let (code, out, err) = front.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("upstream TLS reloaded"), "{out}");
    let response = front.get("/");
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(response.text().contains("upstream_tls"), "{}", response.text());

    // And back.
    site.files.write_text("upstream-ca.pem", &site.ca.pem());
    let (code, out, err) = front.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("upstream TLS reloaded"), "{out}");
    assert_eq!(front.get("/").status, 200, "{}", ca_path.display());
}

#[test]
fn a_watched_upstream_ca_rewritten_on_disk_is_read_without_a_command() {
    let site = Site::start(1, "", "");
    let front = https_front_with(
        &site,
        "secure.test",
        "[upstream]\nmax_idle_per_backend = 0\n\n[tls]\nwatch = \"100ms\"\n",
    );
    assert_eq!(front.get("/").status, 200);
    site.files
        .write_text("upstream-ca.pem", &Authority::new("another CA").pem());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = front.get("/");
        if response.status == 502 {
            assert!(response.text().contains("upstream_tls"), "{}", response.text());
            break;
        }
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(Instant::now() < deadline, "the rewritten CA bundle was never read");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, out, _) = front.ctl(&["versions"]);
    assert!(out.contains("upstream TLS reloaded"), "{out}");
}

/// corelb in front of the TLS corelb at `upstream` as its one `https://` backend, `backend` in that backend's
/// table, `upstream_tls` the body of `[upstream.tls]`.
fn front_of(upstream: std::net::SocketAddr, backend: &str, upstream_tls: &str) -> Corelb {
    let url = format!("https://127.0.0.1:{}", upstream.port());
    Corelb::start(&common::config_from_urls(
        &[(url, 1)],
        1,
        "",
        &format!("{backend}\n[upstream.tls]\n{upstream_tls}\n"),
    ))
}

#[test]
fn corelb_shows_its_client_certificate_to_an_https_backend_that_requires_one() {
    let server_ca = Authority::new("corelb test CA");
    let clients = Authority::new("corelb client CA");
    let (upstream, backend, files) = mutual_tls("required", &server_ca, &clients);
    let ca = files.write_text("upstream-ca.pem", &server_ca.pem());
    let (cert, key) = files.write("front", &clients.client("front"));
    let upstream_tls = format!(
        "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
        ca.display(),
        cert.display(),
        key.display()
    );
    let front = front_of(upstream.addr, "server_name = \"secure.test\"", &upstream_tls);
    let response = front.get("/echo");
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response.text().contains("[\"X-Client-Subject\",\"CN=front\"]"),
        "the backend saw corelb's client certificate: {}",
        response.text()
    );

    // Without a client certificate the backend refuses the handshake: a 502, and nothing reaches behind it.
    let anonymous = front_of(
        upstream.addr,
        "server_name = \"secure.test\"",
        &format!("ca = \"{}\"", ca.display()),
    );
    let response = anonymous.get("/");
    assert_eq!(response.status, 502);
    assert!(response.text().contains("upstream_tls"), "{}", response.text());
    assert_eq!(
        backend.stats().1,
        1,
        "only the request with a client certificate got through"
    );
}

#[test]
fn insecure_skip_verify_accepts_any_certificate_and_says_so_loudly() {
    let site = Site::start(1, "", "");
    let front = front_of(
        site.corelb.addr,
        "server_name = \"other.test\"",
        "insecure_skip_verify = true",
    );
    let response = front.get("/echo");
    assert_eq!(
        response.status,
        200,
        "a certificate for another name, from an unknown CA: {}",
        response.text()
    );
    assert!(
        response.text().contains("[\"X-Forwarded-Proto\",\"https\"]"),
        "{}",
        response.text()
    );
    let log = front.process.output().join("\n");
    assert!(log.contains("NOT verified"), "the warning is in the log: {log}");
}
