//! Client networks that are never rate limited.

use std::net::IpAddr;

use crate::config::Network;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<Network>,
}

impl AllowList {
    pub fn new(networks: &[Network]) -> AllowList {
        AllowList {
            networks: networks.to_vec(),
        }
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(address))
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_in_any_network_is_allowed() {
        let networks: Vec<Network> = ["10.0.0.0/8", "::1/128"]
            .iter()
            .map(|block| Network::parse(block).unwrap())
            .collect();
        let allowed = AllowList::new(&networks);
        assert!(allowed.contains("10.1.2.3".parse().unwrap()));
        assert!(allowed.contains("::1".parse().unwrap()));
        assert!(!allowed.contains("192.168.0.1".parse().unwrap()));
        assert!(AllowList::default().is_empty());
    }
}
