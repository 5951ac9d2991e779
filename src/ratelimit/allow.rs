//! Client networks that are never rate limited, written as CIDR blocks (`10.0.0.0/8`, `::1/128`).

use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<(IpAddr, u8)>,
}

impl AllowList {
    /// Parses CIDR blocks; a bare address means a single host.
    pub fn parse(blocks: &[String]) -> Result<AllowList, String> {
        let mut networks = Vec::with_capacity(blocks.len());
        for block in blocks {
            let (address, prefix) = match block.split_once('/') {
                Some((address, prefix)) => (address, Some(prefix)),
                None => (block.as_str(), None),
            };
            let address: IpAddr = address.parse().map_err(|_| format!("{block:?} is not an IP network"))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(prefix) => prefix
                    .parse::<u8>()
                    .ok()
                    .filter(|prefix| *prefix <= max)
                    .ok_or_else(|| format!("{block:?}: prefix length must be 0..={max}"))?,
                None => max,
            };
            networks.push((address, prefix));
        }
        Ok(AllowList { networks })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.networks.iter().any(|&(network, prefix)| match (network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(blocks: &[&str]) -> AllowList {
        AllowList::parse(&blocks.iter().map(|block| block.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn matches_networks_and_hosts() {
        let allowed = list(&["10.0.0.0/8", "192.168.1.7", "::1/128", "0.0.0.0/0"][..3]);
        assert!(allowed.contains("10.200.3.4".parse().unwrap()));
        assert!(!allowed.contains("11.0.0.1".parse().unwrap()));
        assert!(allowed.contains("192.168.1.7".parse().unwrap()));
        assert!(!allowed.contains("192.168.1.8".parse().unwrap()));
        assert!(allowed.contains("::1".parse().unwrap()));
        assert!(
            allowed.contains("::ffff:10.1.1.1".parse().unwrap()),
            "v4-mapped addresses match v4 blocks"
        );
        assert!(list(&["0.0.0.0/0"]).contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn refuses_bad_blocks() {
        for bad in ["10.0.0.0/33", "banana", "::/129", "1.2.3.4/x"] {
            assert!(AllowList::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
