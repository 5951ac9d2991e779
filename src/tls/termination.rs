//! A frontend's TLS termination, read and checked on the control thread ([`Termination::load`]) and turned into a
//! `rustls::ServerConfig` by each core ([`Termination::server_config`]).
//!
//! The control thread reads every file, so a broken pair or CA bundle is refused with the file and the reason
//! before any core sees it, and the running certificates stay. What it hands the cores is immutable and shared;
//! each core then builds its own `ServerConfig` from it: its own signing keys, its own session cache (rustls'
//! sits behind a mutex), its own ticketer and client verifier, so that no handshake takes a lock or touches a
//! reference count another core uses. A core rebuilds it only when the termination it came from is a new one:
//! [`Termination::digest`] lets the control thread keep the old `Arc` when files and settings are unchanged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::{NoClientAuth, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};

use super::certificate::{Certificate, CertificateError};
use super::sni::SniCertificates;
use super::tickets::{CoreTicketer, TicketKeys};
use crate::config::{ClientAuth, FrontendTls, TlsVersion};

/// Full sessions each core remembers for resumption by session id (TLS 1.2 clients without tickets).
const SESSION_CACHE: usize = 4096;

/// Why a frontend's TLS could not be loaded. Each names the frontend and the file.
#[derive(Debug, thiserror::Error)]
pub enum TerminationError {
    #[error("frontend {frontend:?}: {source}")]
    Certificate { frontend: String, source: CertificateError },
    #[error("frontend {frontend:?}: {path}: cannot read the client CA bundle: {source}")]
    ReadCa {
        frontend: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("frontend {frontend:?}: cannot build its TLS settings: {reason}")]
    Build { frontend: String, reason: String },
    #[error("frontend {frontend:?}: {path}: {reason}")]
    BadCa {
        frontend: String,
        path: PathBuf,
        reason: String,
    },
}

/// What a frontend terminates TLS with: its certificates, its client-certificate policy and its settings.
#[derive(Debug)]
pub struct Termination {
    pub certificates: Vec<Certificate>,
    pub strict_sni: bool,
    pub min_version: TlsVersion,
    pub client_auth: ClientAuth,
    /// The CA certificates client certificates are verified against (empty when `client_auth` is `none`).
    client_roots: Vec<CertificateDer<'static>>,
    pub handshake_timeout: Duration,
    /// SHA-256 over the settings and every byte read: equal digests, equal terminations.
    digest: [u8; 32],
}

impl Termination {
    /// Reads and checks everything `config` names; `now` decides expiry.
    pub fn load(
        frontend: &str,
        config: &FrontendTls,
        provider: &CryptoProvider,
        now: SystemTime,
    ) -> Result<Termination, TerminationError> {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(format!("{config:?}").as_bytes());
        let certificate_error = |source| TerminationError::Certificate {
            frontend: frontend.to_string(),
            source,
        };
        let mut certificates = Vec::with_capacity(config.certificates.len());
        for files in &config.certificates {
            let cert = read(&files.cert).map_err(certificate_error)?;
            let key = read(&files.key).map_err(certificate_error)?;
            super::digest_bytes(&mut digest, &cert);
            super::digest_bytes(&mut digest, &key);
            let certificate =
                Certificate::parse(&files.cert, &cert, &files.key, &key, provider, now).map_err(certificate_error)?;
            certificates.push(certificate);
        }
        let client_roots = match (&config.client_ca, config.client_auth) {
            (Some(path), ClientAuth::Optional | ClientAuth::Required) => {
                let bytes = std::fs::read(path).map_err(|source| TerminationError::ReadCa {
                    frontend: frontend.to_string(),
                    path: path.clone(),
                    source,
                })?;
                super::digest_bytes(&mut digest, &bytes);
                client_roots(frontend, path, &bytes)?
            }
            _ => Vec::new(),
        };
        let mut sum = [0u8; 32];
        sum.copy_from_slice(digest.finish().as_ref());
        Ok(Termination {
            certificates,
            strict_sni: config.strict_sni,
            min_version: config.min_version,
            client_auth: config.client_auth,
            client_roots,
            handshake_timeout: config.handshake_timeout,
            digest: sum,
        })
    }

    /// Where a certificate file of `running` is read again here, the new certificate must serve the names the old
    /// one did ([`Certificate::check_renews`]); certificates at new paths may serve anything.
    pub fn check_renews(&self, frontend: &str, running: &Termination) -> Result<(), TerminationError> {
        for certificate in &self.certificates {
            let previous = running
                .certificates
                .iter()
                .find(|previous| previous.cert_path == certificate.cert_path);
            if let Some(previous) = previous {
                certificate
                    .check_renews(previous)
                    .map_err(|source| TerminationError::Certificate {
                        frontend: frontend.to_string(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Whether `other` was loaded from the same settings and the same bytes.
    pub fn same_as(&self, other: &Termination) -> bool {
        self.digest == other.digest
    }

    /// One core's `ServerConfig`: TLS 1.3 and (unless `min_version` says 1.3) 1.2, ALPN `http/1.1`, this core's own
    /// keys, session cache, ticketer (when `tickets` are given) and client verifier.
    pub fn server_config(&self, tickets: Option<&TicketKeys>) -> Result<ServerConfig, rustls::Error> {
        let provider = Arc::new(super::provider_for_core());
        let versions: &[&rustls::SupportedProtocolVersion] = match self.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let verifier = match self.client_auth {
            ClientAuth::None => Arc::new(NoClientAuth) as Arc<dyn rustls::server::danger::ClientCertVerifier>,
            policy => {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(self.client_roots.iter().cloned());
                let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
                let builder = if policy == ClientAuth::Optional {
                    builder.allow_unauthenticated()
                } else {
                    builder
                };
                builder
                    .build()
                    .map_err(|error| rustls::Error::General(error.to_string()))?
            }
        };
        let resolver = SniCertificates::for_core(&self.certificates, self.strict_sni, &provider);
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        if let Some(keys) = tickets {
            config.ticketer = Arc::new(CoreTicketer::new(keys));
        }
        Ok(config)
    }

    /// Each certificate's file and the end of its validity, for the expiry gauge.
    pub fn expiries(&self) -> impl Iterator<Item = (&Path, SystemTime)> {
        self.certificates
            .iter()
            .map(|certificate| (certificate.cert_path.as_path(), certificate.not_after))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(path).map_err(|source| CertificateError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates of a CA bundle, each one checked to be a usable trust anchor.
fn client_roots(frontend: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TerminationError> {
    let bad = |reason: String| TerminationError::BadCa {
        frontend: frontend.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let roots = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad(format!("not a PEM certificate bundle: {error}")))?;
    if roots.is_empty() {
        return Err(bad("no PEM certificate in the client CA bundle".into()));
    }
    let mut store = RootCertStore::empty();
    for (index, root) in roots.iter().enumerate() {
        store
            .add(root.clone())
            .map_err(|error| bad(format!("certificate {} is not a usable CA: {error}", index + 1)))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CertificateFiles;
    use crate::tls::certificate::tests::self_signed;

    fn folder(name: &str) -> PathBuf {
        let folder = std::env::temp_dir().join(format!("corelb-termination-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        folder
    }

    fn write_pair(folder: &Path, stem: &str, names: &[&str]) -> CertificateFiles {
        let (cert, key) = self_signed(names);
        let files = CertificateFiles {
            cert: folder.join(format!("{stem}.crt")),
            key: folder.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    fn settings(certificates: Vec<CertificateFiles>) -> FrontendTls {
        FrontendTls {
            certificates,
            strict_sni: false,
            handshake_timeout: Duration::from_secs(10),
            min_version: TlsVersion::Tls12,
            client_auth: ClientAuth::None,
            client_ca: None,
            client_identity_header: None,
        }
    }

    fn load(config: &FrontendTls) -> Result<Termination, TerminationError> {
        Termination::load("secure", config, &crate::tls::provider(), SystemTime::now())
    }

    #[test]
    fn the_same_files_give_the_same_digest_and_a_rewritten_one_another() {
        let folder = folder("digest");
        let config = settings(vec![write_pair(&folder, "site", &["a.test"])]);
        let first = load(&config).unwrap();
        assert!(first.same_as(&load(&config).unwrap()));
        let mut strict = config.clone();
        strict.strict_sni = true;
        assert!(!first.same_as(&load(&strict).unwrap()));
        write_pair(&folder, "site", &["a.test"]);
        assert!(
            !first.same_as(&load(&config).unwrap()),
            "a new certificate in the same file"
        );
        let core = first.server_config(None).unwrap();
        assert_eq!(core.alpn_protocols, [b"http/1.1".to_vec()]);
        let _ = std::fs::remove_dir_all(folder);
    }

    #[test]
    fn a_renewal_must_serve_the_names_its_predecessor_served() {
        let folder = folder("renewal");
        let files = write_pair(&folder, "site", &["a.test", "*.b.test", "c.b.test"]);
        let running = load(&settings(vec![files.clone()])).unwrap();

        write_pair(&folder, "site", &["*.b.test", "a.test", "other.test"]);
        let renewed = load(&settings(vec![files.clone()])).unwrap();
        renewed
            .check_renews("secure", &running)
            .expect("the same names in another order, c.b.test by the wildcard, one more name");

        write_pair(&folder, "site", &["a.test", "c.b.test"]);
        let narrowed = load(&settings(vec![files.clone()])).unwrap();
        let error = narrowed.check_renews("secure", &running).unwrap_err().to_string();
        assert!(
            error.starts_with("frontend \"secure\": ")
                && error.contains("site.crt: the new certificate does not serve *.b.test"),
            "{error}"
        );

        // A certificate at a path of its own replaces nothing.
        let elsewhere = write_pair(&folder, "elsewhere", &["z.test"]);
        let moved = load(&settings(vec![elsewhere])).unwrap();
        moved.check_renews("secure", &running).expect("a new path");
        let _ = std::fs::remove_dir_all(folder);
    }

    #[test]
    fn a_broken_pair_or_ca_is_refused_naming_the_frontend_and_file() {
        let folder = folder("broken");
        let good = write_pair(&folder, "good", &["a.test"]);
        let other = write_pair(&folder, "other", &["b.test"]);
        let mismatched = CertificateFiles {
            cert: good.cert.clone(),
            key: other.key.clone(),
        };
        let error = load(&settings(vec![good.clone(), mismatched])).unwrap_err().to_string();
        assert!(
            error.starts_with("frontend \"secure\": ") && error.contains("other.key: this key does not belong"),
            "{error}"
        );
        let mut mutual = settings(vec![good.clone()]);
        mutual.client_auth = ClientAuth::Required;
        mutual.client_ca = Some(folder.join("missing-ca.pem"));
        let error = load(&mutual).unwrap_err().to_string();
        assert!(
            error.contains("missing-ca.pem: cannot read the client CA bundle"),
            "{error}"
        );
        std::fs::write(folder.join("empty-ca.pem"), "").unwrap();
        mutual.client_ca = Some(folder.join("empty-ca.pem"));
        let error = load(&mutual).unwrap_err().to_string();
        assert!(error.contains("no PEM certificate in the client CA bundle"), "{error}");
        mutual.client_ca = Some(good.cert.clone());
        let loaded = load(&mutual).unwrap();
        assert!(loaded.server_config(None).is_ok());
        let _ = std::fs::remove_dir_all(folder);
    }
}
