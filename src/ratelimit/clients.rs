//! Per-client limiters in a table bounded in memory: past `capacity` clients the least recently seen is evicted.

use std::hash::Hash;

use rustc_hash::FxHashMap;

/// A bounded map with least-recently-used eviction, using a logical clock instead of a linked list: lookups are
/// O(1) (with a fast non-cryptographic hash: keys are client addresses, and the table is bounded, so flooding it
/// costs evictions, not collisions); an eviction scans once per `capacity / 8` insertions and drops the oldest eighth.
#[derive(Debug, Clone)]
pub struct ClientTable<K, V> {
    entries: FxHashMap<K, (V, u64)>,
    capacity: usize,
    clock: u64,
}

impl<K: Hash + Eq + Clone, V> ClientTable<K, V> {
    pub fn new(capacity: usize) -> ClientTable<K, V> {
        ClientTable {
            entries: FxHashMap::default(),
            capacity: capacity.max(1),
            clock: 0,
        }
    }

    /// The value for `key`, created with `make` when absent.
    pub fn get_or_insert_with(&mut self, key: &K, make: impl FnOnce() -> V) -> &mut V {
        self.clock += 1;
        let clock = self.clock;
        if !self.entries.contains_key(key) && self.entries.len() >= self.capacity {
            self.evict_oldest();
        }
        let entry = self.entries.entry(key.clone()).or_insert_with(|| (make(), clock));
        entry.1 = clock;
        &mut entry.0
    }

    fn evict_oldest(&mut self) {
        let drop_count = (self.capacity / 8).max(1);
        let mut ages: Vec<u64> = self.entries.values().map(|(_, seen)| *seen).collect();
        ages.sort_unstable();
        let cutoff = ages[drop_count.min(ages.len()) - 1];
        self.entries.retain(|_, (_, seen)| *seen > cutoff);
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(value, _)| value)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(key, (value, _))| (key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_capacity_and_keeps_recent_clients() {
        let mut table = ClientTable::new(16);
        for client in 0..16u32 {
            *table.get_or_insert_with(&client, || 0) += 1;
        }
        // Client 0 is used again, so it is recent; 1 and 2 are the oldest.
        *table.get_or_insert_with(&0, || 0) += 1;
        table.get_or_insert_with(&100, || 0);
        assert!(table.len() <= 16);
        assert_eq!(
            table.get_mut(&0).copied(),
            Some(2),
            "a recently seen client keeps its state"
        );
        assert!(table.get_mut(&1).is_none(), "the least recent was evicted");
        for client in 200..10_000u32 {
            table.get_or_insert_with(&client, || 0);
        }
        assert!(table.len() <= 16);
    }
}
