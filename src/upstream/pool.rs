//! A bounded pool of idle keep-alive connections for one backend on one worker. Generic over the connection type
//! and fed the current time, so its rules are tested without sockets or clocks.

use std::time::{Duration, Instant};

/// Idle connections, oldest first. The most recently used is handed out first: it is the least likely to have been
/// closed by the backend's own idle timeout.
#[derive(Debug)]
pub struct IdlePool<C> {
    idle: Vec<(C, Instant)>,
}

impl<C> Default for IdlePool<C> {
    fn default() -> Self {
        IdlePool { idle: Vec::new() }
    }
}

impl<C> IdlePool<C> {
    /// Takes the freshest connection idle for less than `max_idle`, dropping any older ones.
    pub fn take(&mut self, now: Instant, max_idle: Duration) -> Option<C> {
        self.evict_expired(now, max_idle);
        self.idle.pop().map(|(connection, _)| connection)
    }

    /// Returns a connection to the pool. When `capacity` is reached the oldest idle connection is dropped instead.
    pub fn put(&mut self, connection: C, now: Instant, capacity: usize) {
        if capacity == 0 {
            return;
        }
        if self.idle.len() >= capacity {
            self.idle.remove(0);
        }
        self.idle.push((connection, now));
    }

    /// Drops connections idle for `max_idle` or longer; returns how many.
    pub fn evict_expired(&mut self, now: Instant, max_idle: Duration) -> usize {
        let expired = self
            .idle
            .iter()
            .take_while(|(_, since)| now.saturating_duration_since(*since) >= max_idle)
            .count();
        self.idle.drain(..expired);
        expired
    }

    pub fn len(&self) -> usize {
        self.idle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idle.is_empty()
    }

    /// Drops the connection idle longest; false when there was none.
    pub fn drop_oldest(&mut self) -> bool {
        if self.idle.is_empty() {
            return false;
        }
        self.idle.remove(0);
        true
    }

    /// Drops every idle connection.
    pub fn clear(&mut self) {
        self.idle.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(10);

    #[test]
    fn hands_out_the_freshest_first() {
        let start = Instant::now();
        let mut pool = IdlePool::default();
        pool.put("old", start, 4);
        pool.put("new", start + Duration::from_secs(1), 4);
        assert_eq!(pool.take(start + Duration::from_secs(2), IDLE), Some("new"));
        assert_eq!(pool.take(start + Duration::from_secs(2), IDLE), Some("old"));
        assert_eq!(pool.take(start + Duration::from_secs(2), IDLE), None);
    }

    #[test]
    fn never_hands_out_an_expired_connection() {
        let start = Instant::now();
        let mut pool = IdlePool::default();
        pool.put(1, start, 4);
        pool.put(2, start + Duration::from_secs(5), 4);
        assert_eq!(pool.take(start + Duration::from_secs(12), IDLE), Some(2));
        assert!(pool.is_empty(), "the expired connection was dropped, not kept");
    }

    #[test]
    fn stays_within_capacity_by_dropping_the_oldest() {
        let start = Instant::now();
        let mut pool = IdlePool::default();
        for connection in 0..5 {
            pool.put(connection, start, 3);
        }
        assert_eq!(pool.len(), 3);
        assert_eq!(pool.take(start, IDLE), Some(4));
        pool.put(9, start, 0);
        assert_eq!(pool.len(), 2, "capacity 0 keeps nothing");
    }

    #[test]
    fn eviction_counts_what_it_dropped() {
        let start = Instant::now();
        let mut pool = IdlePool::default();
        pool.put('a', start, 4);
        pool.put('b', start + Duration::from_secs(3), 4);
        assert_eq!(pool.evict_expired(start + Duration::from_secs(11), IDLE), 1);
        assert_eq!(pool.len(), 1);
    }
}
