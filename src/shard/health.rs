//! What the active health checks observed, as every worker reads it: the backends found unhealthy, by id and
//! address. Versioned on its own, apart from the config: a flip of health is an observation, not a change an
//! operator made, so it never enters the version history or needs a rollback.

use std::collections::BTreeSet;
use std::net::SocketAddr;

/// The backends the active checks found unhealthy, as of `version`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthTable {
    pub version: u64,
    pub unhealthy: BTreeSet<(String, SocketAddr)>,
}

impl HealthTable {
    /// Whether the backend with this id and address was found unhealthy.
    pub fn is_unhealthy(&self, id: &str, addr: SocketAddr) -> bool {
        self.unhealthy
            .iter()
            .any(|(unhealthy, at)| unhealthy == id && *at == addr)
    }
}
