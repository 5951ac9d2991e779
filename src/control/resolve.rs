//! Backend host names become addresses here, on the control thread, so no worker ever blocks on DNS.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
#[error("backends[{index}].url: cannot resolve {host:?}: {reason}")]
pub struct ResolveError {
    pub index: usize,
    pub host: String,
    pub reason: String,
}

/// Resolves every backend to one address (the first the resolver returns).
pub fn resolve_backends(config: &Config) -> Result<Vec<SocketAddr>, ResolveError> {
    config
        .backends
        .iter()
        .enumerate()
        .map(|(index, backend)| {
            let error = |reason: String| ResolveError {
                index,
                host: backend.host.clone(),
                reason,
            };
            if let Ok(ip) = backend.host.parse::<std::net::IpAddr>() {
                return Ok(SocketAddr::new(ip, backend.port));
            }
            (backend.host.as_str(), backend.port)
                .to_socket_addrs()
                .map_err(|source| error(source.to_string()))?
                .next()
                .ok_or_else(|| error("no address".to_string()))
        })
        .collect()
}
