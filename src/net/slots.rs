//! Counted slots on one worker: how many connections of a kind it holds against its share of the descriptor budget,
//! and a way for a task to wait until one frees. Single-threaded (`Cell`, no atomics): each worker has its own.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Tasks waiting for something on this worker, in arrival order. [`wake_one`](Self::wake_one) wakes the longest
/// waiting, so under saturation a freed slot goes to requests in the order they began to wait (no herd of thousands
/// woken to race for one slot); a woken waiter that goes away without finishing passes its turn on.
#[derive(Default)]
pub struct Wakeups {
    queue: RefCell<VecDeque<(Rc<Cell<Turn>>, Waker)>>,
}

/// Where one registered waiter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Waiting,
    Woken,
    /// Gone (finished or dropped) while still queued; skipped when its turn comes.
    Left,
}

impl Wakeups {
    /// Wakes the longest-waiting task that is still waiting.
    pub fn wake_one(&self) {
        loop {
            let Some((turn, waker)) = self.queue.borrow_mut().pop_front() else {
                return;
            };
            if turn.get() == Turn::Waiting {
                turn.set(Turn::Woken);
                waker.wake();
                return;
            }
        }
    }

    /// Wakes every waiting task; each checks its own condition again.
    pub fn wake_all(&self) {
        let queue = std::mem::take(&mut *self.queue.borrow_mut());
        for (turn, waker) in queue {
            if turn.get() == Turn::Waiting {
                turn.set(Turn::Woken);
                waker.wake();
            }
        }
    }

    /// Resolves once `ready()` holds, checked now and whenever this task is woken (a woken task whose condition
    /// does not hold yet keeps its place at the front).
    pub async fn until(&self, ready: impl Fn() -> bool) {
        let mut front = false;
        while !ready() {
            self.next_turn(front).await;
            front = true;
        }
    }

    /// Waits to be woken, whatever holds now: for a task that must not overtake those already waiting. `front`
    /// puts it first (a woken task that found nothing keeps its place).
    pub fn next_turn(&self, front: bool) -> NextTurn<'_> {
        NextTurn {
            wakeups: self,
            front,
            turn: None,
        }
    }

    /// Whether any task is waiting.
    pub fn has_waiters(&self) -> bool {
        let mut queue = self.queue.borrow_mut();
        while let Some((turn, _)) = queue.front() {
            if turn.get() == Turn::Waiting {
                return true;
            }
            queue.pop_front();
        }
        false
    }

    fn register(&self, waker: &Waker, front: bool) -> Rc<Cell<Turn>> {
        let turn = Rc::new(Cell::new(Turn::Waiting));
        let entry = (Rc::clone(&turn), waker.clone());
        let mut queue = self.queue.borrow_mut();
        if front {
            queue.push_front(entry);
        } else {
            queue.push_back(entry);
        }
        turn
    }
}

/// The future [`Wakeups::next_turn`] returns.
pub struct NextTurn<'a> {
    wakeups: &'a Wakeups,
    front: bool,
    turn: Option<Rc<Cell<Turn>>>,
}

impl Future for NextTurn<'_> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match this.turn.as_ref().map(|turn| turn.get()) {
            None => {
                this.turn = Some(this.wakeups.register(cx.waker(), this.front));
                Poll::Pending
            }
            Some(Turn::Woken) => {
                this.turn = None;
                Poll::Ready(())
            }
            Some(Turn::Waiting | Turn::Left) => Poll::Pending,
        }
    }
}

/// A waiter goes away: still queued, it is skipped; woken but gone before using its turn (a timeout fired at
/// once), the turn goes to the next waiter.
impl Drop for NextTurn<'_> {
    fn drop(&mut self) {
        match self.turn.take().map(|turn| (turn.get(), turn)) {
            Some((Turn::Waiting, turn)) => turn.set(Turn::Left),
            Some((Turn::Woken, _)) => self.wakeups.wake_one(),
            Some((Turn::Left, _)) | None => {}
        }
    }
}

/// A worker's count of held connections of one kind against its limit.
pub struct Slots {
    held: Cell<usize>,
    limit: Cell<usize>,
    /// Tasks that want a slot: the longest waiting is woken when one frees.
    pub freed: Wakeups,
    /// Tasks that only watch for slots freeing (an accept loop out of descriptors): all woken at every release.
    pub released: Wakeups,
}

impl Slots {
    pub fn new(limit: usize) -> Rc<Slots> {
        Rc::new(Slots {
            held: Cell::new(0),
            limit: Cell::new(limit.max(1)),
            freed: Wakeups::default(),
            released: Wakeups::default(),
        })
    }

    pub fn held(&self) -> usize {
        self.held.get()
    }

    /// Changes the limit; waiters look again when it grows.
    pub fn set_limit(&self, limit: usize) {
        let grew = limit > self.limit.get();
        self.limit.set(limit.max(1));
        if grew {
            self.freed.wake_all();
        }
    }

    pub fn full(&self) -> bool {
        self.held.get() >= self.limit.get()
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
        self.slots.freed.wake_one();
        self.slots.released.wake_all();
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
    fn freed_slots_go_to_waiters_in_the_order_they_began_to_wait() {
        let slots = Slots::new(1);
        let held = slots.try_take();
        let order = Rc::new(RefCell::new(Vec::new()));
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().unwrap();
        runtime.block_on({
            let slots = Rc::clone(&slots);
            let order = Rc::clone(&order);
            async move {
                let mut waiters = Vec::new();
                for id in 0..5 {
                    let slots = Rc::clone(&slots);
                    let order = Rc::clone(&order);
                    waiters.push(monoio::spawn(async move {
                        slots.freed.until(|| !slots.full()).await;
                        let slot = slots.take();
                        order.borrow_mut().push(id);
                        // Hold it a moment so the others must wait their turn.
                        for _ in 0..3 {
                            monoio::spawn(async {}).await;
                        }
                        drop(slot);
                    }));
                    // Let each waiter park before the next arrives.
                    for _ in 0..3 {
                        monoio::spawn(async {}).await;
                    }
                }
                drop(held);
                for waiter in waiters {
                    waiter.await;
                }
            }
        });
        assert_eq!(*order.borrow(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_woken_waiter_that_leaves_passes_its_turn_on() {
        let wakeups = Rc::new(Wakeups::default());
        let done = Rc::new(Cell::new(false));
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().unwrap();
        runtime.block_on({
            let wakeups = Rc::clone(&wakeups);
            let done = Rc::clone(&done);
            async move {
                let open = Rc::new(Cell::new(false));
                // The first waiter is polled once (queued), then dropped after being woken.
                let mut first = Box::pin(wakeups.until(|| open.get()));
                let waker = futures_noop_waker();
                let mut cx = std::task::Context::from_waker(&waker);
                assert!(first.as_mut().poll(&mut cx).is_pending());
                let second = monoio::spawn({
                    let wakeups = Rc::clone(&wakeups);
                    let open = Rc::clone(&open);
                    let done = Rc::clone(&done);
                    async move {
                        wakeups.until(|| open.get()).await;
                        done.set(true);
                    }
                });
                for _ in 0..3 {
                    monoio::spawn(async {}).await;
                }
                open.set(true);
                wakeups.wake_one();
                drop(first);
                second.await;
            }
        });
        assert!(done.get(), "the second waiter got the turn the first did not use");
    }

    fn futures_noop_waker() -> Waker {
        const VTABLE: std::task::RawWakerVTable = std::task::RawWakerVTable::new(
            |_| std::task::RawWaker::new(std::ptr::null(), &VTABLE),
            |_| {},
            |_| {},
            |_| {},
        );
        // SAFETY: every function of the vtable ignores the (null) data pointer.
        unsafe { Waker::from_raw(std::task::RawWaker::new(std::ptr::null(), &VTABLE)) }
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
