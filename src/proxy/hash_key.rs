//! The key a hashing algorithm maps to a backend, read from the request: the client address, the path, a header's
//! value or a cookie's. A request without the header or cookie hashes its client address instead, so it still
//! keeps to one backend.

use crate::balance::hash::stable_hash;
use crate::config::{Algorithm, BalancerConfig, HashKey};
use crate::http::head::RequestHead;

/// The hash key under `balancer` of the request `head` parsed from `bytes`, from the client at `peer_ip`; `None`
/// when the algorithm does not hash.
pub fn of_request(balancer: &BalancerConfig, bytes: &[u8], head: &RequestHead, peer_ip: &str) -> Option<u64> {
    let key = match balancer.algorithm {
        Algorithm::IpHash => &HashKey::ClientIp,
        Algorithm::ConsistentHash => &balancer.hash_key,
        _ => return None,
    };
    let field = |wanted: &str| {
        head.fields
            .iter()
            .find(|field| bytes[field.name.clone()].eq_ignore_ascii_case(wanted.as_bytes()))
            .map(|field| &bytes[field.value.clone()])
    };
    let chosen: Option<&[u8]> = match key {
        HashKey::ClientIp => None,
        HashKey::Path => {
            let target = &bytes[head.target.clone()];
            Some(target.split(|&byte| byte == b'?').next().unwrap_or(target))
        }
        HashKey::Header(name) => field(name),
        HashKey::Cookie(name) => head
            .fields
            .iter()
            .filter(|field| bytes[field.name.clone()].eq_ignore_ascii_case(b"cookie"))
            .find_map(|field| cookie_value(&bytes[field.value.clone()], name.as_bytes())),
    };
    Some(stable_hash(chosen.unwrap_or(peer_ip.as_bytes())))
}

/// The value of cookie `name` in a `Cookie` field (`a=1; b=2`).
fn cookie_value<'a>(field: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    field.split(|&byte| byte == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let equals = pair.iter().position(|&byte| byte == b'=')?;
        (&pair[..equals] == name).then(|| &pair[equals + 1..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_found_by_its_exact_name_among_others() {
        assert_eq!(cookie_value(b"a=1; session=xyz; b=2", b"session"), Some(&b"xyz"[..]));
        assert_eq!(cookie_value(b"session=xyz", b"session"), Some(&b"xyz"[..]));
        assert_eq!(cookie_value(b"xsession=1; sessionx=2", b"session"), None);
        assert_eq!(cookie_value(b"", b"session"), None);
    }
}
