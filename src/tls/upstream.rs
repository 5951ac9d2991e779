//! TLS to `https://` backends: what `[upstream.tls]` names, read on the control thread (the CA bundle, or the
//! system's roots through rustls-native-certs; a client certificate), and the `ClientConfig` each core builds from
//! it, with its own session store so a reconnect to a backend resumes without a lock shared across cores.
//! [`UpstreamTls::same_as`] lets the control thread keep the running `Arc` when nothing read has changed, so a
//! config change elsewhere does not cost every core its sessions with the backends.
//!
//! `insecure_skip_verify` accepts whatever certificate a backend shows; it exists for test setups and is logged as
//! a warning every time it is loaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::digest_bytes;
use crate::config::UpstreamTlsConfig;

/// Session tickets kept per core, across backends.
const SESSIONS: usize = 256;

/// Why `[upstream.tls]` could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("upstream.tls.ca {path}: cannot read: {source}")]
    ReadCa { path: PathBuf, source: std::io::Error },
    #[error("upstream.tls.ca {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("the system's CA certificates could not be loaded ({reason}); set upstream.tls.ca")]
    NoSystemRoots { reason: String },
    #[error("upstream.tls {path}: cannot read: {source}")]
    ReadIdentity { path: PathBuf, source: std::io::Error },
    #[error("upstream.tls {path}: {reason}")]
    BadIdentity { path: PathBuf, reason: String },
    #[error("upstream.tls: {reason}")]
    Build { reason: String },
}

/// `[upstream.tls]` as loaded.
#[derive(Debug)]
pub struct UpstreamTls {
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, Identity)>,
    insecure: bool,
    /// SHA-256 over the settings and every byte read: equal digests, equal material.
    digest: [u8; 32],
}

/// A client private key, never printed.
struct Identity(PrivateKeyDer<'static>);

impl std::fmt::Debug for Identity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Identity(..)")
    }
}

impl UpstreamTls {
    /// Reads what `config` names (on the control thread or a job's, never a worker).
    pub fn load(config: &UpstreamTlsConfig) -> Result<UpstreamTls, UpstreamTlsError> {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(format!("{config:?}").as_bytes());
        let roots = match &config.ca {
            Some(path) => bundle_roots(path, &mut digest)?,
            None => system_roots(&mut digest)?,
        };
        let identity = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => Some(read_identity(cert, key, &mut digest)?),
            _ => None,
        };
        let mut sum = [0u8; 32];
        sum.copy_from_slice(digest.finish().as_ref());
        if config.insecure_skip_verify {
            tracing::warn!(
                "upstream.tls.insecure_skip_verify = true: backend certificates are NOT verified; anyone on the path \
                 to an https:// backend can read and change its traffic"
            );
        }
        Ok(UpstreamTls {
            roots: Arc::new(roots),
            identity,
            insecure: config.insecure_skip_verify,
            digest: sum,
        })
    }

    /// Loaded from the same settings and the same bytes as `other`.
    pub fn same_as(&self, other: &UpstreamTls) -> bool {
        self.digest == other.digest
    }

    /// One core's `ClientConfig`: TLS 1.3 and 1.2, ALPN `http/1.1`, its own session store.
    pub fn client_config(&self, provider: Arc<CryptoProvider>) -> Result<ClientConfig, rustls::Error> {
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            builder.with_root_certificates(Arc::clone(&self.roots))
        };
        let mut config = match &self.identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.0.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::in_memory_sessions(SESSIONS);
        Ok(config)
    }
}

/// The name a backend's certificate is checked against and sent as SNI (an IP address sends no SNI).
pub fn server_name(name: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.to_string()).ok()
}

fn bundle_roots(path: &Path, digest: &mut ring::digest::Context) -> Result<RootCertStore, UpstreamTlsError> {
    let pem = std::fs::read(path).map_err(|source| UpstreamTlsError::ReadCa {
        path: path.to_path_buf(),
        source,
    })?;
    digest_bytes(digest, &pem);
    let bad = |reason: String| UpstreamTlsError::BadCa {
        path: path.to_path_buf(),
        reason,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad(format!("not a PEM certificate bundle: {error}")))?;
    if certificates.is_empty() {
        return Err(bad("no PEM certificate in the bundle".to_string()));
    }
    let mut roots = RootCertStore::empty();
    for (index, certificate) in certificates.into_iter().enumerate() {
        roots
            .add(certificate)
            .map_err(|error| bad(format!("certificate {} is not a usable CA: {error}", index + 1)))?;
    }
    Ok(roots)
}

fn system_roots(digest: &mut ring::digest::Context) -> Result<RootCertStore, UpstreamTlsError> {
    let found = rustls_native_certs::load_native_certs();
    for certificate in &found.certs {
        digest_bytes(digest, certificate);
    }
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let reason = found
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), ToString::to_string);
        return Err(UpstreamTlsError::NoSystemRoots { reason });
    }
    Ok(roots)
}

fn read_identity(
    cert: &Path,
    key: &Path,
    digest: &mut ring::digest::Context,
) -> Result<(Vec<CertificateDer<'static>>, Identity), UpstreamTlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| UpstreamTlsError::ReadIdentity {
            path: path.to_path_buf(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    digest_bytes(digest, &cert_pem);
    digest_bytes(digest, &key_pem);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| UpstreamTlsError::BadIdentity {
            path: cert.to_path_buf(),
            reason: format!("not a PEM certificate chain: {error}"),
        })?;
    if chain.is_empty() {
        return Err(UpstreamTlsError::BadIdentity {
            path: cert.to_path_buf(),
            reason: "no PEM certificate in the file".to_string(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| UpstreamTlsError::BadIdentity {
        path: key.to_path_buf(),
        reason: format!("no usable PEM private key: {error}"),
    })?;
    Ok((chain, Identity(private)))
}

/// `insecure_skip_verify`: signatures are still checked (the handshake stays a handshake), the certificate is not.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certificate::tests::self_signed;

    fn folder(name: &str) -> PathBuf {
        let folder = std::env::temp_dir().join(format!("corelb-upstream-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        folder
    }

    fn settings(ca: Option<PathBuf>, cert: Option<PathBuf>, key: Option<PathBuf>) -> UpstreamTlsConfig {
        UpstreamTlsConfig {
            ca,
            cert,
            key,
            insecure_skip_verify: false,
        }
    }

    #[test]
    fn a_ca_bundle_and_a_client_identity_load_into_a_client_config_per_core() {
        let folder = folder("good");
        let (cert, key) = self_signed(&["client.test"]);
        let (cert_path, key_path) = (folder.join("client.pem"), folder.join("client.key"));
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let loaded = UpstreamTls::load(&settings(Some(cert_path.clone()), Some(cert_path), Some(key_path))).unwrap();
        assert_eq!(loaded.roots.len(), 1);
        let config = loaded.client_config(crate::tls::provider()).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
        let _ = std::fs::remove_dir_all(folder);
    }

    #[test]
    fn the_same_files_and_settings_are_the_same_material_and_a_changed_byte_is_not() {
        let folder = folder("same");
        let ca_path = folder.join("ca.pem");
        std::fs::write(&ca_path, self_signed(&["one.test"]).0).unwrap();
        let load = |insecure| {
            let mut config = settings(Some(ca_path.clone()), None, None);
            config.insecure_skip_verify = insecure;
            UpstreamTls::load(&config).unwrap()
        };
        let first = load(false);
        assert!(first.same_as(&load(false)), "read twice, unchanged");
        assert!(!first.same_as(&load(true)), "a setting changed");
        std::fs::write(&ca_path, self_signed(&["two.test"]).0).unwrap();
        assert!(!first.same_as(&load(false)), "the bundle's bytes changed");
        let _ = std::fs::remove_dir_all(folder);
    }

    #[test]
    fn an_unreadable_or_broken_file_is_refused_naming_it() {
        let folder = folder("broken");
        let missing = folder.join("missing.pem");
        let error = UpstreamTls::load(&settings(Some(missing.clone()), None, None)).unwrap_err();
        assert!(
            matches!(&error, UpstreamTlsError::ReadCa { path, .. } if path == &missing),
            "{error}"
        );

        let garbage = folder.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let error = UpstreamTls::load(&settings(Some(garbage.clone()), None, None)).unwrap_err();
        assert!(error.to_string().contains("garbage.pem"), "{error}");
        assert!(matches!(error, UpstreamTlsError::BadCa { .. }), "{error}");

        let (cert, _) = self_signed(&["client.test"]);
        let cert_path = folder.join("only-cert.pem");
        std::fs::write(&cert_path, &cert).unwrap();
        let error = UpstreamTls::load(&settings(Some(cert_path.clone()), Some(cert_path), Some(garbage))).unwrap_err();
        assert!(
            matches!(&error, UpstreamTlsError::BadIdentity { path, .. } if path.ends_with("garbage.pem")),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(folder);
    }
}
