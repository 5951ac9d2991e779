//! An IP network written as a CIDR block (`10.0.0.0/8`, `::1/128`) or a bare address (one host), as the config's
//! client lists use it.

use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
    /// Written as a bare address: shown back the same way.
    bare: bool,
}

impl Network {
    /// Parses a CIDR block; a bare address means a single host.
    pub fn parse(block: &str) -> Result<Network, String> {
        let (address, prefix) = match block.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (block, None),
        };
        let address: IpAddr = address.parse().map_err(|_| format!("{block:?} is not an IP network"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_length = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= max)
                .ok_or_else(|| format!("{block:?}: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Network {
            address,
            prefix: prefix_length,
            bare: prefix.is_none(),
        })
    }

    /// Whether `address` is in this network; a v4-mapped IPv6 address matches v4 networks.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bare {
            write!(f, "{}", self.address)
        } else {
            write!(f, "{}/{}", self.address, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(block: &str) -> Network {
        Network::parse(block).unwrap()
    }

    #[test]
    fn matches_networks_and_hosts() {
        assert!(network("10.0.0.0/8").contains("10.200.3.4".parse().unwrap()));
        assert!(!network("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(network("192.168.1.7").contains("192.168.1.7".parse().unwrap()));
        assert!(!network("192.168.1.7").contains("192.168.1.8".parse().unwrap()));
        assert!(network("::1/128").contains("::1".parse().unwrap()));
        assert!(
            network("10.0.0.0/8").contains("::ffff:10.1.1.1".parse().unwrap()),
            "v4-mapped addresses match v4 blocks"
        );
        assert!(network("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn refuses_bad_blocks() {
        for bad in ["10.0.0.0/33", "banana", "::/129", "1.2.3.4/x"] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shows_a_block_as_it_was_written() {
        for block in ["10.0.0.0/8", "192.168.1.7", "::1/128", "10.1.2.3/32"] {
            assert_eq!(network(block).to_string(), block);
        }
    }
}
