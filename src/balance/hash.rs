//! Consistent hashing (`ip_hash`, `consistent_hash`): a request's key maps to a backend the same way on every core,
//! across restarts and config reloads, and removing one of N backends moves close to 1/N of the keys.
//!
//! - **Maglev** (Google's, the default): a lookup table whose size is a prime at least 100 × the backends (and at
//!   least 65,537, Maglev's own; it changes only when the count crosses a power of two past 512, since a new size
//!   would move nearly every key), filled
//!   from each backend's own permutation of the slots (offset and skip from its id's hash) in turns, a backend of
//!   weight w taking w slots per turn. A pick is one table lookup. Built when the backend set changes, never per
//!   request.
//! - **Rendezvous** (highest random weight): each backend scores `-weight / ln(u)` for `u` the hash of (key, id)
//!   in (0, 1), the highest wins. Minimal movement and no table, but O(backends) per pick: for small pools.
//!
//! When the chosen backend is not admitted, the key walks on in a fixed order (the next table slots; the next
//! highest score), so its fallback is as stable as its first choice. Hashes are FNV-1a with a SplitMix finaliser:
//! fixed, so that every core and every restart agree (never `RandomState`).
//!
//! Pure: ids and weights in, picks out.

use super::Candidates;

/// How keys map to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Maglev,
    Rendezvous,
}

/// A stable 64-bit hash of `bytes`.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    finalise(hash)
}

fn finalise(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maglev's table size for `backends`: the smallest prime at least 100 × the backend count rounded up to a power
/// of two, and at least 65,537. Stable while the count moves within a power of two, so a change moves few keys.
pub fn table_size(backends: usize) -> usize {
    let mut size = (backends.next_power_of_two() * 100).max(65_536);
    while !is_prime(size) {
        size += 1;
    }
    size
}

fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// The per-generation state of a consistent-hash balancer.
#[derive(Debug)]
pub enum ConsistentHash {
    Maglev { table: Vec<u32> },
    Rendezvous { ids: Vec<u64>, weights: Vec<f64> },
}

impl ConsistentHash {
    /// Builds the mapping for backends with these `ids` and `weights` (in config order).
    pub fn new(method: Method, ids: &[&str], weights: &[u32]) -> ConsistentHash {
        match method {
            Method::Maglev => ConsistentHash::Maglev {
                table: maglev_table(ids, weights),
            },
            Method::Rendezvous => ConsistentHash::Rendezvous {
                ids: ids.iter().map(|id| stable_hash(id.as_bytes())).collect(),
                weights: weights.iter().map(|&weight| f64::from(weight)).collect(),
            },
        }
    }

    /// The backend for `key`: its first choice if admitted, else the next in its fixed order.
    pub fn pick(&self, key: u64, candidates: &impl Candidates) -> Option<usize> {
        match self {
            ConsistentHash::Maglev { table } => {
                if table.is_empty() {
                    return None;
                }
                let start = (key % table.len() as u64) as usize;
                (0..table.len())
                    .map(|step| table[(start + step) % table.len()] as usize)
                    .find(|&index| candidates.admitted(index))
            }
            ConsistentHash::Rendezvous { ids, weights } => (0..ids.len())
                .filter(|&index| candidates.admitted(index) && weights[index] > 0.0)
                .map(|index| (index, rendezvous_score(key, ids[index], weights[index])))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(index, _)| index),
        }
    }
}

/// Weighted rendezvous: `-weight / ln(u)`, `u` in (0, 1) from the pair's hash.
fn rendezvous_score(key: u64, id: u64, weight: f64) -> f64 {
    let mixed = finalise(key ^ id.rotate_left(32));
    let unit = ((mixed >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / unit.ln()
}

fn maglev_table(ids: &[&str], weights: &[u32]) -> Vec<u32> {
    let count = ids.len();
    if count == 0 || weights.iter().all(|&weight| weight == 0) {
        return Vec::new();
    }
    let size = table_size(count);
    let permutations: Vec<(usize, usize)> = ids
        .iter()
        .map(|id| {
            let hash = stable_hash(id.as_bytes());
            let offset = (hash % size as u64) as usize;
            let skip = (finalise(hash) % (size as u64 - 1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; count];
    let mut table = vec![u32::MAX; size];
    let mut filled = 0;
    while filled < size {
        for index in 0..count {
            for _ in 0..weights[index] {
                let (offset, skip) = permutations[index];
                // The backend's next free slot in its own permutation.
                let slot = loop {
                    let slot = (offset + next[index] * skip) % size;
                    next[index] += 1;
                    if table[slot] == u32::MAX {
                        break slot;
                    }
                };
                table[slot] = index as u32;
                filled += 1;
                if filled == size {
                    return table;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Everyone;

    struct Without(usize);

    impl Candidates for Without {
        fn admitted(&self, index: usize) -> bool {
            index != self.0
        }
        fn takes_turn(&self, _: usize) -> bool {
            true
        }
        fn share(&self, _: usize) -> f64 {
            1.0
        }
        fn in_flight(&self, _: usize) -> u32 {
            0
        }
    }

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|index| format!("10.0.0.{index}:8080")).collect()
    }

    fn mapping(method: Method, ids: &[String], keys: u64) -> Vec<String> {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let balancer = ConsistentHash::new(method, &refs, &vec![1; ids.len()]);
        (0..keys)
            .map(|key| ids[balancer.pick(stable_hash(&key.to_le_bytes()), &Everyone).unwrap()].clone())
            .collect()
    }

    /// The share of keys that change backend when the last of `count` backends is removed.
    fn moved_on_removal(method: Method, count: usize) -> f64 {
        let ids = names(count);
        let before = mapping(method, &ids, 20_000);
        let after = mapping(method, &ids[..count - 1], 20_000);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        moved as f64 / before.len() as f64
    }

    #[test]
    fn removing_one_of_n_backends_moves_close_to_one_nth_of_the_keys() {
        for method in [Method::Maglev, Method::Rendezvous] {
            for count in [3, 10, 100] {
                let moved = moved_on_removal(method, count);
                let ideal = 1.0 / count as f64;
                println!(
                    "{method:?}, {count} backends, one removed: {:.2} % of keys moved (ideal {:.2} %)",
                    moved * 100.0,
                    ideal * 100.0
                );
                // Rendezvous moves exactly the removed backend's keys; Maglev a little more.
                let allowed = if method == Method::Rendezvous { 1.0 } else { 1.6 };
                assert!(
                    moved >= ideal * 0.8 && moved <= ideal * allowed + 0.005,
                    "{method:?} at {count}: {moved}"
                );
            }
        }
    }

    #[test]
    fn keys_spread_by_weight_and_an_unadmitted_choice_falls_back_the_same_way_every_time() {
        let ids = names(3);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        for method in [Method::Maglev, Method::Rendezvous] {
            let balancer = ConsistentHash::new(method, &refs, &[2, 1, 1]);
            let mut seen = [0usize; 3];
            for key in 0..40_000u64 {
                seen[balancer.pick(stable_hash(&key.to_le_bytes()), &Everyone).unwrap()] += 1;
            }
            assert!(
                seen[0].abs_diff(20_000) < 1_200 && seen[1].abs_diff(10_000) < 1_000,
                "{method:?}: {seen:?}"
            );
            for key in 0..1_000u64 {
                let hashed = stable_hash(&key.to_le_bytes());
                let first = balancer.pick(hashed, &Everyone).unwrap();
                let fallback = balancer.pick(hashed, &Without(first)).unwrap();
                assert_ne!(fallback, first);
                assert_eq!(balancer.pick(hashed, &Without(first)), Some(fallback), "a fixed order");
            }
        }
    }

    #[test]
    fn the_table_is_a_prime_at_least_a_hundred_times_the_backends_and_fully_filled() {
        assert_eq!(table_size(3), 65_537);
        assert_eq!(table_size(2), table_size(512), "the same size for pools up to 512");
        assert_ne!(table_size(512), table_size(513));
        assert!(is_prime(table_size(1000)) && table_size(1000) >= 100_000);
        let ids = names(7);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let ConsistentHash::Maglev { table } = ConsistentHash::new(Method::Maglev, &refs, &[1; 7]) else {
            panic!("maglev");
        };
        assert_eq!(table.len(), table_size(7));
        assert!(table.iter().all(|&index| index < 7));
        assert_eq!(stable_hash(b"client"), stable_hash(b"client"), "fixed, never seeded");
    }
}
