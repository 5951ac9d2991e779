//! TLS material: certificates and keys read from files, and the choice of certificate for a handshake by the name
//! the client asked for (SNI). This layer knows rustls and the file system, and nothing of the cores: the control
//! thread reads and checks every certificate here ([`certificate`]), so that a worker never reads a file and a
//! broken pair is refused with the file and the reason before any worker sees it; the cores receive the parsed
//! result in their snapshot and hand it to rustls through [`sni::SniCertificates`].
//!
//! The cryptography is rustls' `ring` provider: ring is already corelb's HMAC (sticky cookies), builds with no C
//! tool chain beyond the system compiler (aws-lc-rs wants cmake and NASM and takes minutes on two cores), and
//! covers what termination needs: TLS 1.3 and 1.2, ECDSA P-256/P-384, Ed25519 and RSA keys, AES-GCM and
//! ChaCha20-Poly1305.

pub mod audit;
pub mod certificate;
pub mod sni;
pub mod termination;
pub mod tickets;
pub mod upstream;

use std::sync::Arc;

/// The cryptography every TLS object of corelb is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(provider_for_core())
}

/// Adds `bytes` (a file read) to a digest of loaded TLS material, length first, so two files' bytes cannot be cut
/// differently to the same sum. Equal digests mean nothing read has changed, so the running material is kept.
pub fn digest_bytes(digest: &mut ring::digest::Context, bytes: &[u8]) {
    digest.update(&(bytes.len() as u64).to_le_bytes());
    digest.update(bytes);
}

/// A provider of a core's own (its `Arc` is counted by that core alone).
pub fn provider_for_core() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
