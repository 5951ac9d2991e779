//! Which certificate a handshake gets, by the name the client sent (SNI): an exact name first, then a wildcard
//! for the first label (`*.example.com` serves `a.example.com`, not `example.com` nor `a.b.example.com`, as RFC
//! 6125 §6.4.3 has it), then the default certificate, which is the first one listed. With `strict_sni` there is no
//! default: a name no certificate serves, or no name at all, ends the handshake (rustls' built-in resolver has
//! neither wildcards nor a default, hence this one). Where two certificates claim a name, the first listed wins.
//!
//! Lookups are two hash probes on names the control thread lower-cased when it read the certificates; nothing is
//! allocated unless the client sent capitals.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certificate::Certificate;

/// A frontend's certificates, indexed by name.
#[derive(Debug)]
pub struct SniCertificates {
    keys: Vec<Arc<CertifiedKey>>,
    exact: FxHashMap<String, usize>,
    /// `*.example.com` stored under `example.com`.
    wildcard: FxHashMap<String, usize>,
    default: Option<usize>,
}

impl SniCertificates {
    /// Indexes `certificates` (in the order listed). `strict` leaves out the default.
    pub fn new(certificates: &[Certificate], strict: bool) -> SniCertificates {
        SniCertificates::with_keys(certificates, strict, |certificate| Arc::clone(&certificate.key))
    }

    /// As [`new`](Self::new), with signing keys of this core's own (see [`Certificate::own_key`]).
    pub fn for_core(certificates: &[Certificate], strict: bool, provider: &CryptoProvider) -> SniCertificates {
        SniCertificates::with_keys(certificates, strict, |certificate| certificate.own_key(provider))
    }

    fn with_keys(
        certificates: &[Certificate],
        strict: bool,
        key: impl Fn(&Certificate) -> Arc<CertifiedKey>,
    ) -> SniCertificates {
        let mut exact = FxHashMap::default();
        let mut wildcard = FxHashMap::default();
        for (index, certificate) in certificates.iter().enumerate() {
            for name in &certificate.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(index),
                    None => exact.entry(name.clone()).or_insert(index),
                };
            }
        }
        SniCertificates {
            keys: certificates.iter().map(key).collect(),
            exact,
            wildcard,
            default: (!strict && !certificates.is_empty()).then_some(0),
        }
    }

    /// The index of the certificate a client asking for `name` gets (`None`: none, refuse the handshake).
    pub fn choose(&self, name: Option<&str>) -> Option<usize> {
        let Some(name) = name else {
            return self.default;
        };
        let lowered;
        let name = if name.bytes().any(|byte| byte.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(&index) = self.exact.get(name) {
            return Some(index);
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(&index) = self.wildcard.get(parent) {
                return Some(index);
            }
        }
        self.default
    }
}

impl ResolvesServerCert for SniCertificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let index = self.choose(client_hello.server_name())?;
        self.keys.get(index).map(Arc::clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certificate::tests::certificate_for as certificate;

    fn certificates() -> Vec<Certificate> {
        vec![
            certificate(&["default.test"]),
            certificate(&["*.example.com"]),
            certificate(&["www.example.com", "example.com"]),
            certificate(&["*.example.com", "api.example.org"]),
        ]
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let sni = SniCertificates::new(&certificates(), false);
        assert_eq!(sni.choose(Some("www.example.com")), Some(2));
        assert_eq!(sni.choose(Some("example.com")), Some(2));
        assert_eq!(
            sni.choose(Some("shop.example.com")),
            Some(1),
            "the first wildcard listed wins"
        );
        assert_eq!(sni.choose(Some("api.example.org")), Some(3));
        assert_eq!(
            sni.choose(Some("a.b.example.com")),
            Some(0),
            "a wildcard covers one label only"
        );
        assert_eq!(sni.choose(Some("unknown.test")), Some(0));
        assert_eq!(sni.choose(None), Some(0), "no SNI gets the default");
    }

    #[test]
    fn names_match_whatever_their_case_and_a_trailing_dot() {
        let sni = SniCertificates::new(&certificates(), true);
        assert_eq!(sni.choose(Some("WWW.Example.COM")), Some(2));
        assert_eq!(sni.choose(Some("www.example.com.")), Some(2));
        assert_eq!(sni.choose(Some("Shop.EXAMPLE.com")), Some(1));
    }

    #[test]
    fn strict_sni_refuses_unknown_names_and_no_name() {
        let sni = SniCertificates::new(&certificates(), true);
        assert_eq!(sni.choose(Some("default.test")), Some(0));
        assert_eq!(sni.choose(Some("unknown.test")), None);
        assert_eq!(sni.choose(Some("a.b.example.com")), None);
        assert_eq!(sni.choose(None), None);
    }

    /// A TLS 1.3 handshake in memory between a server resolving with `sni` and a client that asks for `name` and
    /// trusts `trusted`; the certificate the server presented, or the error that ended the handshake.
    fn handshake(sni: SniCertificates, name: &str, trusted: &Certificate) -> Result<Vec<u8>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(sni));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted.key.cert[0].clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), server_name).unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            let served = server.process_new_packets();
            let mut wire = Vec::new();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            served?;
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        Ok(client.peer_certificates().unwrap()[0].to_vec())
    }

    #[test]
    fn a_handshake_gets_the_certificate_for_its_name_or_an_alert() {
        let all = certificates();
        let presented = handshake(SniCertificates::new(&all, false), "shop.example.com", &all[1]).unwrap();
        assert_eq!(presented, all[1].key.cert[0].to_vec());
        let refused = handshake(SniCertificates::new(&all, true), "unknown.test", &all[0]).unwrap_err();
        assert!(matches!(refused, rustls::Error::General(_)), "{refused:?}");
    }

    #[test]
    fn no_certificate_chooses_nothing() {
        let sni = SniCertificates::new(&[], false);
        assert_eq!(sni.choose(Some("example.com")), None);
        assert_eq!(sni.choose(None), None);
    }
}
