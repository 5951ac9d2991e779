//! Counted slots on one worker: how many connections of a kind it holds against its share of the descriptor budget,
//! and a way for a task to wait until one frees. Single-threaded (`Cell`, no atomics): each worker has its own.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Tasks waiting for something on this worker; woken all at once, each checks its own condition again.
#[derive(Default)]
pub struct Wakeups {
    waiters: RefCell<Vec<Waker>>,
}

impl Wakeups {
    pub fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }

    /// Resolves once `ready()` holds, checked whenever [`wake_all`](Self::wake_all) runs.
    pub fn until<'a>(&'a self, ready: impl Fn() -> bool + 'a) -> impl Future<Output = ()> + 'a {
        std::future::poll_fn(move |cx| {
            if ready() {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|waiter| waiter.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// A worker's count of held connections of one kind against its limit.
pub struct Slots {
    held: Cell<usize>,
    limit: usize,
    /// Woken when a slot frees.
    pub freed: Wakeups,
}

impl Slots {
    pub fn new(limit: usize) -> Rc<Slots> {
        Rc::new(Slots {
            held: Cell::new(0),
            limit: limit.max(1),
            freed: Wakeups::default(),
        })
    }

    pub fn held(&self) -> usize {
        self.held.get()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn full(&self) -> bool {
        self.held.get() >= self.limit
    }

    /// Takes a slot if one is free.
    pub fn try_take(self: &Rc<Self>) -> Option<Slot> {
        if self.full() {
            return None;
        }
        Some(self.take())
    }

    /// Takes a slot whether or not the limit allows it (for a connection already open).
    pub fn take(self: &Rc<Self>) -> Slot {
        self.held.set(self.held.get() + 1);
        Slot { slots: Rc::clone(self) }
    }
}

/// One held slot; dropping it frees the slot and wakes whoever waits for one.
pub struct Slot {
    slots: Rc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let held = &self.slots.held;
        held.set(held.get().saturating_sub(1));
        self.slots.freed.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_up_to_their_limit_and_free_on_drop() {
        let slots = Slots::new(2);
        let first = slots.try_take().expect("one free");
        let second = slots.try_take().expect("two free");
        assert!(slots.full());
        assert!(slots.try_take().is_none());
        drop(first);
        assert_eq!(slots.held(), 1);
        let third = slots.try_take().expect("freed by the drop");
        drop((second, third));
        assert_eq!(slots.held(), 0);
    }

    #[test]
    fn a_waiter_wakes_when_a_slot_frees() {
        let slots = Slots::new(1);
        let held = slots.try_take();
        let woke = Rc::new(Cell::new(false));
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().unwrap();
        runtime.block_on({
            let slots = Rc::clone(&slots);
            let woke = Rc::clone(&woke);
            async move {
                let waiter = monoio::spawn({
                    let slots = Rc::clone(&slots);
                    let woke = Rc::clone(&woke);
                    async move {
                        slots.freed.until(|| !slots.full()).await;
                        woke.set(true);
                    }
                });
                // Let the waiter park, then free the slot.
                for _ in 0..3 {
                    monoio::spawn(async {}).await;
                }
                assert!(!woke.get(), "nothing freed yet");
                drop(held);
                waiter.await;
            }
        });
        assert!(woke.get());
    }
}
