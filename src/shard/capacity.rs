//! The capacity queue: requests that wait, on one worker, for a backend under its `max_connections`.
//!
//! A backend at capacity is skipped by every algorithm ([`BackendState::at_capacity`]). When every backend a
//! request could use is at capacity, it waits here, first come first served, until a request on this worker ends
//! on a capped backend (or the config changes), for at most `upstream.capacity_queue_timeout`. The queue is bounded
//! (`upstream.capacity_queue` per worker): past it, or with a bound of zero, the request is answered 503 at once.
//! Single-threaded, like everything a worker owns.
//!
//! [`BackendState::at_capacity`]: super::BackendState::at_capacity

use std::cell::Cell;
use std::time::Instant;

use crate::net::slots::Wakeups;

/// Requests waiting on this worker for a backend with room.
#[derive(Default)]
pub struct CapacityQueue {
    freed: Wakeups,
    waiting: Cell<usize>,
}

/// Why a request stopped waiting without room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// The queue already holds its bound.
    QueueFull,
    /// The wait ran out.
    TimedOut,
}

impl CapacityQueue {
    /// A request in flight to a capped backend ended: the longest-waiting request looks again.
    pub fn freed(&self) {
        self.freed.wake_one();
    }

    /// The config changed (limits may have risen, backends joined): every waiting request looks again.
    pub fn changed(&self) {
        self.freed.wake_all();
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.get()
    }

    /// Waits for the next turn, until `until`, when fewer than `bound` requests wait already. `front` keeps the
    /// place of a request that was woken and found no room after all.
    pub async fn next_turn(&self, bound: usize, until: Instant, front: bool) -> Result<(), NoRoom> {
        if !front && self.waiting.get() >= bound {
            return Err(NoRoom::QueueFull);
        }
        let remaining = until.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(NoRoom::TimedOut);
        }
        self.waiting.set(self.waiting.get() + 1);
        let _counted = Waiting(&self.waiting);
        monoio::time::timeout(remaining, self.freed.next_turn(front))
            .await
            .map_err(|_| NoRoom::TimedOut)
    }
}

/// Counts one waiting request until dropped (woken, timed out, or the request went away).
struct Waiting<'a>(&'a Cell<usize>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    fn run<F: std::future::Future>(future: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_a_freed_slot_wakes_the_first_waiter() {
        run(async {
            let queue = Rc::new(CapacityQueue::default());
            let far = Instant::now() + Duration::from_secs(30);
            assert_eq!(queue.next_turn(0, far, false).await, Err(NoRoom::QueueFull));
            let waiter = {
                let queue = Rc::clone(&queue);
                monoio::spawn(async move { queue.next_turn(1, far, false).await })
            };
            // Let the waiter register before the slot frees.
            while queue.waiting() == 0 {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(
                queue.next_turn(1, far, false).await,
                Err(NoRoom::QueueFull),
                "one waits, the bound is one"
            );
            queue.freed();
            assert_eq!(waiter.await, Ok(()));
            assert_eq!(queue.waiting(), 0);
        });
    }

    #[test]
    fn a_wait_ends_at_its_deadline() {
        run(async {
            let queue = CapacityQueue::default();
            let soon = Instant::now() + Duration::from_millis(20);
            assert_eq!(queue.next_turn(4, soon, false).await, Err(NoRoom::TimedOut));
            assert_eq!(queue.waiting(), 0, "the timed-out waiter is no longer counted");
        });
    }
}
