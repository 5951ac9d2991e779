//! The capacity queue: requests that wait, on one worker, for a backend under its `max_connections`.
//!
//! A backend at capacity is skipped by every algorithm ([`BackendState::at_capacity`]). When every backend a
//! request could use is at capacity, it waits here until a request on this worker ends on a capped backend (or the
//! config changes), for at most `upstream.capacity_queue_timeout`. Waiters are woken one at a time in the order they
//! began to wait (a request arriving at that moment may take the room first). Waiters do not all want the same
//! backends (a sticky request wants its own; a retry not the one it tried), so one woken for room it cannot use
//! passes the wake-up on to the next and waits again behind the others; it passes on at most once per freed room,
//! so a wake-up nobody can use goes round once and stops. The queue is bounded (`upstream.capacity_queue` per
//! worker): past it, or with a bound of zero, the request is answered 503 at once. Single-threaded, like
//! everything a worker owns.
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
    /// Rooms freed so far: a waiter passes a wake-up on once per freed room.
    rooms: Cell<u64>,
}

/// One waiting request's place: whether it has waited yet, and the last freed room it passed on.
#[derive(Debug, Default)]
pub struct Waiter {
    queued: bool,
    passed_on: Option<u64>,
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
        self.rooms.set(self.rooms.get() + 1);
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

    /// Waits for the next turn, until `until`. A request's first wait needs fewer than `bound` requests waiting
    /// already; a request woken that found no room after all passes the wake-up on (once per freed room) and waits
    /// again behind the others, without counting against the bound a second time.
    pub async fn next_turn(&self, waiter: &mut Waiter, bound: usize, until: Instant) -> Result<(), NoRoom> {
        if !waiter.queued && self.waiting.get() >= bound {
            return Err(NoRoom::QueueFull);
        }
        if waiter.queued && waiter.passed_on != Some(self.rooms.get()) {
            waiter.passed_on = Some(self.rooms.get());
            self.freed.wake_one();
        }
        waiter.queued = true;
        let remaining = until.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(NoRoom::TimedOut);
        }
        self.waiting.set(self.waiting.get() + 1);
        let _counted = Waiting(&self.waiting);
        monoio::time::timeout(remaining, self.freed.next_turn(false))
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
            assert_eq!(
                queue.next_turn(&mut Waiter::default(), 0, far).await,
                Err(NoRoom::QueueFull)
            );
            let waiter = {
                let queue = Rc::clone(&queue);
                monoio::spawn(async move { queue.next_turn(&mut Waiter::default(), 1, far).await })
            };
            // Let the waiter register before the slot frees.
            while queue.waiting() == 0 {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(
                queue.next_turn(&mut Waiter::default(), 1, far).await,
                Err(NoRoom::QueueFull),
                "one waits, the bound is one"
            );
            queue.freed();
            assert_eq!(waiter.await, Ok(()));
            assert_eq!(queue.waiting(), 0);
        });
    }

    /// Two waiters, the first unable to use the room freed: it passes the wake-up to the second, once, and a
    /// wake-up neither can use stops after one round.
    #[test]
    fn a_waiter_woken_for_room_it_cannot_use_passes_the_turn_on_once() {
        run(async {
            let queue = Rc::new(CapacityQueue::default());
            let far = Instant::now() + Duration::from_secs(30);
            let wakes = Rc::new(std::cell::RefCell::new(Vec::new()));
            let spawn_waiter = |name: &'static str, rounds: usize| {
                let (queue, wakes) = (Rc::clone(&queue), Rc::clone(&wakes));
                monoio::spawn(async move {
                    let mut waiter = Waiter::default();
                    for _ in 0..rounds {
                        queue.next_turn(&mut waiter, 8, far).await.unwrap();
                        wakes.borrow_mut().push(name);
                    }
                })
            };
            // "picky" cannot use the room and waits again; "able" takes it after one wake-up.
            let picky = spawn_waiter("picky", 3);
            while queue.waiting() < 1 {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            let able = spawn_waiter("able", 1);
            while queue.waiting() < 2 {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            queue.freed();
            able.await;
            assert_eq!(
                *wakes.borrow(),
                ["picky", "able"],
                "the wake-up went on to the next waiter"
            );
            // picky is waiting again, behind nobody; nothing new was freed, so nothing bounces.
            for _ in 0..5 {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(wakes.borrow().len(), 2);
            queue.freed();
            while wakes.borrow().len() < 3 {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            queue.changed();
            picky.await;
            assert_eq!(*wakes.borrow(), ["picky", "able", "picky", "picky"]);
        });
    }

    #[test]
    fn a_wait_ends_at_its_deadline() {
        run(async {
            let queue = CapacityQueue::default();
            let soon = Instant::now() + Duration::from_millis(20);
            assert_eq!(
                queue.next_turn(&mut Waiter::default(), 4, soon).await,
                Err(NoRoom::TimedOut)
            );
            assert_eq!(queue.waiting(), 0, "the timed-out waiter is no longer counted");
        });
    }
}
