//! The key that signs sticky-session cookies, and each backend's cookie value.
//!
//! A cookie value is the first 16 bytes of HMAC-SHA256(key, backend id), in unpadded base64url (22 characters): it
//! names a backend without showing its address, and a client that does not hold the key cannot make one up, so it
//! can only return to a backend corelb sent it to (Envoy's stateful sessions put the address in the cookie, and
//! warn that a client can then steer itself anywhere). The value depends only on the key and the id, so it stays
//! the same across config changes for a backend that stays, on every core and, with `secret_file`, in every corelb
//! process sharing the file. The key lives on the control thread: workers get the values in the snapshot, never the
//! key.

use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::SystemRandom;

use crate::config::Config;

/// Fewest bytes a `secret_file` may hold: the HMAC-SHA256 key size.
pub const MIN_SECRET_BYTES: usize = 32;

/// What the signed message starts with, so that the key cannot be made to sign anything else that corelb uses.
const DOMAIN: &[u8] = b"corelb sticky v1\0";

/// Bytes of the tag kept: 128 bits, beyond guessing.
const TAG_BYTES: usize = 16;

/// The key sticky cookies are signed with.
pub struct StickyKey(hmac::Key);

impl std::fmt::Debug for StickyKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("StickyKey(..)")
    }
}

/// Why a `secret_file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("balancer.sticky.secret_file: cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "balancer.sticky.secret_file: {} holds {bytes} bytes; at least {MIN_SECRET_BYTES} are needed \
         (e.g. openssl rand -hex 32 > {})",
        path.display(),
        path.display()
    )]
    TooShort { path: PathBuf, bytes: usize },
    #[error("balancer.sticky: the system's random source failed")]
    Random,
}

impl StickyKey {
    /// A key of this process alone: cookies it signs last until corelb restarts.
    pub fn random() -> Result<StickyKey, SecretError> {
        hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map(StickyKey)
            .map_err(|_| SecretError::Random)
    }

    /// The key in `secret` (a file's contents; whitespace around it is not part of it).
    pub fn from_secret(secret: &[u8], path: &Path) -> Result<StickyKey, SecretError> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort {
                path: path.to_path_buf(),
                bytes: secret.len(),
            });
        }
        Ok(StickyKey(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// Reads the key from `path` (on a helper thread: the control loop never blocks on a file).
    pub fn read(path: &Path) -> Result<StickyKey, SecretError> {
        let secret = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        StickyKey::from_secret(&secret, path)
    }

    /// The cookie value that names backend `id`.
    pub fn cookie_value(&self, id: &str) -> String {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(DOMAIN);
        context.update(id.as_bytes());
        let tag = context.sign();
        base64url(&tag.as_ref()[..TAG_BYTES])
    }
}

/// Unpadded base64url (RFC 4648 §5): cookie-safe, with no character a cookie value may not hold.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = chunk
            .iter()
            .enumerate()
            .fold(0u32, |word, (index, &byte)| word | u32::from(byte) << (16 - 8 * index));
        for sextet in 0..=chunk.len() {
            out.push(ALPHABET[(word >> (18 - 6 * sextet) & 63) as usize] as char);
        }
    }
    out
}

/// The key from `config`'s `secret_file`, read now, when sticky sessions are on and it names one.
pub fn file_key(config: &Config) -> Option<Result<StickyKey, SecretError>> {
    let sticky = &config.balancer.sticky;
    let path = sticky.secret_file.as_deref().filter(|_| sticky.enabled)?;
    Some(StickyKey::read(path))
}

/// Each of `config`'s backends' cookie value, in order, signed with `file_key` (from its `secret_file`) or else
/// the process's `own` key; empty when sticky sessions are off.
pub fn cookie_values(config: &Config, file_key: Option<&StickyKey>, own: &StickyKey) -> Vec<String> {
    if !config.balancer.sticky.enabled {
        return Vec::new();
    }
    let key = file_key.unwrap_or(own);
    config
        .backends
        .iter()
        .map(|backend| key.cookie_value(&backend.id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc_4648_test_vectors_without_padding() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8", "the URL-safe alphabet");
    }

    #[test]
    fn a_value_is_fixed_by_key_and_id_and_differs_for_another_of_either() {
        let path = Path::new("secret");
        let key = StickyKey::from_secret(b"0123456789abcdef0123456789abcdef\n", path).unwrap();
        let same = StickyKey::from_secret(b"  0123456789abcdef0123456789abcdef", path).unwrap();
        let other = StickyKey::from_secret(b"0123456789abcdef0123456789abcdeF", path).unwrap();
        let value = key.cookie_value("app-1");
        assert_eq!(value.len(), 22);
        assert_eq!(
            value,
            same.cookie_value("app-1"),
            "whitespace around the secret is not part of it"
        );
        assert_ne!(value, key.cookie_value("app-2"));
        assert_ne!(value, other.cookie_value("app-1"));
        assert!(!value.contains("app"), "the value shows nothing of the id");
        // HMAC-SHA256 of the domain and id with this key, computed independently (Python's hmac module).
        assert_eq!(value, KNOWN_VALUE);
    }

    /// `base64.urlsafe_b64encode(hmac.new(b"0123456789abcdef0123456789abcdef", b"corelb sticky v1\0app-1",
    /// "sha256").digest()[:16]).rstrip(b"=")`
    const KNOWN_VALUE: &str = "2ClvuA7iS5b_TZaS2FmoVw";

    #[test]
    fn a_short_secret_is_refused_with_the_file_and_the_fix() {
        let error = StickyKey::from_secret(b"short\n", Path::new("/etc/corelb/sticky.key")).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("/etc/corelb/sticky.key holds 5 bytes; at least 32"),
            "{message}"
        );
        assert!(StickyKey::random().is_ok());
    }
}
