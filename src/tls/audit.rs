//! What `corelb check` says about a certificate that loads but may still hurt: one that expires soon, and a chain
//! whose certificates are out of order (each must be issued by the one after it, as TLS clients expect). A pair
//! that cannot serve at all is refused earlier, by [`Certificate::parse`](super::certificate::Certificate::parse).

use std::time::{Duration, SystemTime};

use super::certificate::Certificate;

/// A certificate expiring within this long is warned about (Let's Encrypt renews at 30 days left).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// A finding about one certificate, for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// It expires within [`EXPIRY_WARNING`].
    ExpiresSoon { days: u64 },
    /// Certificate `index` of the file (0 is the leaf) is not issued by the next one.
    OutOfOrder { index: usize },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::ExpiresSoon { days } => write!(formatter, "expires in {days} day(s): renew it"),
            Finding::OutOfOrder { index } => write!(
                formatter,
                "certificate {index} in the file is not issued by the one after it: list the chain leaf first, \
                 each certificate followed by its issuer"
            ),
        }
    }
}

/// What is worth telling about `certificate` at `now`.
pub fn findings(certificate: &Certificate, now: SystemTime) -> Vec<Finding> {
    let mut found = Vec::new();
    let left = certificate.expires_in(now);
    if left < EXPIRY_WARNING {
        found.push(Finding::ExpiresSoon {
            days: left.as_secs() / 86_400,
        });
    }
    let chain = &certificate.key.cert;
    for (index, pair) in chain.windows(2).enumerate() {
        let issuer_of_this = x509_parser::parse_x509_certificate(pair[0].as_ref())
            .map(|(_, parsed)| parsed.issuer().as_raw().to_vec())
            .ok();
        let subject_of_next = x509_parser::parse_x509_certificate(pair[1].as_ref())
            .map(|(_, parsed)| parsed.subject().as_raw().to_vec())
            .ok();
        if issuer_of_this != subject_of_next {
            found.push(Finding::OutOfOrder { index });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certificate::tests::certificate_for;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

    fn chain_certificate(in_order: bool) -> Certificate {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let chain = if in_order {
            format!("{}{}", leaf.pem(), ca.pem())
        } else {
            // The leaf twice: the second is not its issuer.
            format!("{}{}", leaf.pem(), leaf.pem())
        };
        let provider = rustls::crypto::ring::default_provider();
        Certificate::parse(
            std::path::Path::new("chain.pem"),
            chain.as_bytes(),
            std::path::Path::new("leaf.key"),
            leaf_key.serialize_pem().as_bytes(),
            &provider,
            SystemTime::now(),
        )
        .unwrap()
    }

    #[test]
    fn a_chain_in_order_far_from_expiry_has_nothing_to_say() {
        assert_eq!(findings(&chain_certificate(true), SystemTime::now()), Vec::new());
        assert_eq!(findings(&certificate_for(&["a.test"]), SystemTime::now()), Vec::new());
    }

    #[test]
    fn a_chain_out_of_order_is_pointed_at() {
        assert_eq!(
            findings(&chain_certificate(false), SystemTime::now()),
            vec![Finding::OutOfOrder { index: 0 }]
        );
    }

    #[test]
    fn a_certificate_close_to_its_end_is_warned_about() {
        let certificate = certificate_for(&["a.test"]);
        let near_the_end = certificate.not_after - Duration::from_secs(3 * 86_400 + 60);
        assert_eq!(
            findings(&certificate, near_the_end),
            vec![Finding::ExpiresSoon { days: 3 }]
        );
    }
}
