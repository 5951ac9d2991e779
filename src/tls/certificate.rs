//! One certificate chain and its private key, read from two PEM files and checked the way an operator needs to
//! hear about it: the file that could not be read, that holds no certificate or no key, a key that does not belong
//! to the certificate, a certificate that has expired. The names the certificate is valid for come from its
//! subject alternative names (its common name only when it has none), as browsers do, so that a frontend with many
//! certificates needs no list of names beside them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

/// Why a certificate pair was refused. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: no PEM certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM certificate chain: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path}: no PEM private key in the file (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("{path}: unusable private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{key}: this key does not belong to the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: the certificate expired {ago} s ago")]
    Expired { path: PathBuf, ago: u64 },
    #[error("{path}: the certificate names no DNS name (no subject alternative name, no common name)")]
    NoName { path: PathBuf },
    #[error(
        "{path}: the new certificate does not serve {name}, which the one it replaces served (list the name in it, \
         or give the new certificate a path of its own in the config)"
    )]
    DropsName { path: PathBuf, name: String },
}

/// A checked certificate pair, ready for handshakes.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// The chain and the signing key, as rustls takes them.
    pub key: Arc<CertifiedKey>,
    /// The DNS names it is valid for, lower case; a wildcard as `*.example.com`.
    pub names: Vec<String>,
    /// The end of its validity.
    pub not_after: SystemTime,
    /// Where it was read from, for messages.
    pub cert_path: PathBuf,
    /// The private key as read, so that each core can load a signing key of its own ([`Certificate::own_key`]).
    secret: Secret,
}

impl Certificate {
    /// Whether this certificate serves `name` (lower case), exactly or by a wildcard for its first label; a
    /// wildcard is served only by the same wildcard.
    pub fn serves(&self, name: &str) -> bool {
        self.names.iter().any(|own| {
            own == name
                || (!name.starts_with("*.")
                    && own
                        .strip_prefix("*.")
                        .is_some_and(|parent| name.split_once('.').is_some_and(|(_, rest)| rest == parent)))
        })
    }

    /// A certificate read again from the same file must serve every name `previous` served: a renewal that
    /// drops a name would turn that name's clients away with another certificate.
    pub fn check_renews(&self, previous: &Certificate) -> Result<(), CertificateError> {
        match previous.names.iter().find(|name| !self.serves(name)) {
            Some(name) => Err(CertificateError::DropsName {
                path: self.cert_path.clone(),
                name: name.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// A private key's DER, never printed.
struct Secret(PrivateKeyDer<'static>);

impl Clone for Secret {
    fn clone(&self) -> Secret {
        Secret(self.0.clone_key())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(..)")
    }
}

impl Certificate {
    /// Reads and checks the pair `cert_path` (the chain, leaf first) and `key_path`.
    pub fn read(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> Result<Certificate, CertificateError> {
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        Certificate::parse(cert_path, &cert_pem, key_path, &key_pem, provider, SystemTime::now())
    }

    /// Checks a pair already read; `now` decides expiry.
    pub fn parse(
        cert_path: &Path,
        cert_pem: &[u8],
        key_path: &Path,
        key_pem: &[u8],
        provider: &CryptoProvider,
        now: SystemTime,
    ) -> Result<Certificate, CertificateError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| CertificateError::BadCertificate {
                path: cert_path.to_path_buf(),
                reason: error.to_string(),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(CertificateError::NoCertificate {
                path: cert_path.to_path_buf(),
            });
        };
        let (names, not_after) = leaf_facts(leaf).map_err(|reason| CertificateError::BadCertificate {
            path: cert_path.to_path_buf(),
            reason,
        })?;
        if names.is_empty() {
            return Err(CertificateError::NoName {
                path: cert_path.to_path_buf(),
            });
        }
        if let Ok(ago) = now.duration_since(not_after) {
            return Err(CertificateError::Expired {
                path: cert_path.to_path_buf(),
                ago: ago.as_secs(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| match error {
            rustls::pki_types::pem::Error::NoItemsFound => CertificateError::NoKey {
                path: key_path.to_path_buf(),
            },
            other => CertificateError::BadKey {
                path: key_path.to_path_buf(),
                reason: other.to_string(),
            },
        })?;
        let secret = Secret(key.clone_key());
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|error| CertificateError::BadKey {
                path: key_path.to_path_buf(),
                reason: error.to_string(),
            })?;
        let certified = CertifiedKey::new(chain, signing_key);
        if certified.keys_match().is_err() {
            return Err(CertificateError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            });
        }
        Ok(Certificate {
            key: Arc::new(certified),
            names,
            not_after,
            cert_path: cert_path.to_path_buf(),
            secret,
        })
    }

    /// The chain and a signing key of its own, loaded anew: one core's copy, whose reference counts no other
    /// core touches on a handshake. Falls back to the shared one should loading fail (it did not on the control
    /// thread, with the same bytes).
    pub fn own_key(&self, provider: &CryptoProvider) -> Arc<CertifiedKey> {
        match provider.key_provider.load_private_key(self.secret.0.clone_key()) {
            Ok(signing_key) => Arc::new(CertifiedKey::new(self.key.cert.clone(), signing_key)),
            Err(_) => Arc::clone(&self.key),
        }
    }

    /// The DER of the leaf certificate.
    pub fn leaf(&self) -> &[u8] {
        self.key.cert.first().map_or(&[], |leaf| leaf.as_ref())
    }

    /// How long until it expires (zero once it has).
    pub fn expires_in(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }
}

/// A certificate's subject as text (`CN=alice, O=Example`), for a backend to be told who a client is. Anything
/// but printable ASCII becomes `?`, so the text is always a valid header value.
pub fn subject_of(der: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = parsed.subject().to_string();
    Some(
        subject
            .chars()
            .map(|character| match character {
                ' '..='~' => character,
                _ => '?',
            })
            .collect(),
    )
}

fn read(path: &Path) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(path).map_err(|source| CertificateError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The leaf's DNS names (subject alternative names, else common names) and the end of its validity.
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|error| error.to_string())?;
    let mut names = Vec::new();
    if let Some(alternatives) = parsed.subject_alternative_name().map_err(|error| error.to_string())? {
        for name in &alternatives.value.general_names {
            if let GeneralName::DNSName(name) = name {
                names.push(name.to_ascii_lowercase());
            }
        }
    } else {
        for common in parsed.subject().iter_common_name() {
            if let Ok(name) = common.as_str() {
                names.push(name.to_ascii_lowercase());
            }
        }
    }
    let seconds = parsed.validity().not_after.timestamp();
    let not_after = if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds as u64)
    } else {
        UNIX_EPOCH
    };
    Ok((names, not_after))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names` and its key, as PEM.
    pub(crate) fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).unwrap();
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    /// A checked self-signed certificate for `names`, for tests of what uses certificates.
    pub(crate) fn certificate_for(names: &[&str]) -> Certificate {
        let (cert, key) = self_signed(names);
        parse(&cert, &key).unwrap()
    }

    fn parse(cert: &str, key: &str) -> Result<Certificate, CertificateError> {
        Certificate::parse(
            Path::new("site.crt"),
            cert.as_bytes(),
            Path::new("site.key"),
            key.as_bytes(),
            &rustls::crypto::ring::default_provider(),
            SystemTime::now(),
        )
    }

    #[test]
    fn a_good_pair_gives_its_names_and_expiry() {
        let (cert, key) = self_signed(&["Example.COM", "*.example.com"]);
        let certificate = parse(&cert, &key).unwrap();
        assert_eq!(certificate.names, ["example.com", "*.example.com"]);
        assert!(certificate.expires_in(SystemTime::now()) > Duration::from_secs(86_400));
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let (cert, _) = self_signed(&["a.example"]);
        let (_, other_key) = self_signed(&["b.example"]);
        let error = parse(&cert, &other_key).unwrap_err();
        assert!(matches!(error, CertificateError::KeyMismatch { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("site.key") && message.contains("site.crt"),
            "{message}"
        );
    }

    #[test]
    fn missing_or_garbled_parts_are_named() {
        let (cert, key) = self_signed(&["a.example"]);
        assert!(matches!(parse("", &key), Err(CertificateError::NoCertificate { .. })));
        assert!(matches!(parse(&cert, ""), Err(CertificateError::NoKey { .. })));
        assert!(matches!(parse(&cert, &cert), Err(CertificateError::NoKey { .. })));
        let garbled = cert.replace("MI", "??");
        assert!(parse(&garbled, &key).is_err());
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let (cert, key) = self_signed(&["a.example"]);
        let later = SystemTime::now() + Duration::from_secs(5000 * 365 * 86_400);
        let error = Certificate::parse(
            Path::new("old.crt"),
            cert.as_bytes(),
            Path::new("old.key"),
            key.as_bytes(),
            &rustls::crypto::ring::default_provider(),
            later,
        )
        .unwrap_err();
        assert!(matches!(error, CertificateError::Expired { .. }), "{error}");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let error = Certificate::read(
            Path::new("/nonexistent/corelb.crt"),
            Path::new("/nonexistent/corelb.key"),
            &rustls::crypto::ring::default_provider(),
        )
        .unwrap_err();
        assert!(
            error.to_string().starts_with("/nonexistent/corelb.crt: cannot read"),
            "{error}"
        );
    }
}
