//! The key a hashing algorithm maps to a backend, read from the request: the client address, the path, a header's
//! value or a cookie's. A request without the header or cookie hashes its client address instead, so it still
//! keeps to one backend.

use crate::balance::hash::stable_hash;
use crate::config::{Algorithm, BalancerConfig, HashKey};
use crate::http::cookie;
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
        HashKey::Cookie(name) => cookie::find(bytes, head, name.as_bytes()),
    };
    Some(stable_hash(chosen.unwrap_or(peer_ip.as_bytes())))
}
