//! Socket timeouts without a timer per operation. A per-operation `monoio::time::timeout` registers and removes a
//! timer-wheel entry and reads the clock twice for every read and write, which measured as a fifth of corelb's CPU
//! per proxied request. Instead each socket gets one slot in its worker's `Watchdog` for its whole life; an
//! operation writes its deadline (in coarse ticks, no clock read) into the slot before it starts and clears it
//! when it ends. One task per worker advances the clock every `TICK` and ends every operation past its deadline
//! by shutting the socket down, which completes the pending read or write on both io_uring and epoll. A socket
//! whose operation timed out is never reused (the io_uring rule: a cancelled operation may have completed anyway).
//! A timed-out read shuts only the read side: every later read fails with `TimedOut`, but writes still work, with
//! their own deadlines, so the peer can be sent its 408 or 504. A timed-out write shuts both sides and every later
//! operation fails.
//!
//! Precision is one tick: a deadline fires between `timeout` and `timeout + 2 * TICK` after the operation began
//! (earlier only by as long as the worker's loop stalled past a tick). With no deadline pending the task stops
//! ticking, so an idle worker does not wake 100 times a second; the next `arm` reads the clock and wakes it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often deadlines are checked: the resolution of every socket timeout.
pub const TICK: Duration = Duration::from_millis(10);
const TICK_MS: u64 = 10;

/// What kind of operation a deadline guards, which decides how an expired one is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A read: the socket's read side is shut, so the peer can still be sent an error response.
    Read,
    /// A read while a keep-alive connection waits for its next request; also ended early by `end_idle_waits`.
    IdleRead,
    /// A write: both sides are shut (a peer that stopped reading gets nothing more).
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not owned by any socket; on the free list.
    Free,
    /// Owned; `deadline` is 0 when no operation is pending.
    Open,
    /// A read's deadline passed (or an idle wait was ended): the read side is shut and reads fail; writes go on.
    ReadShut,
    /// A write's deadline passed: the socket is shut down both ways and every operation fails.
    Expired,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    fd: RawFd,
    /// Tick at which the pending operation times out; 0: none pending.
    deadline: u64,
    operation: Operation,
    state: State,
}

/// One worker's socket deadlines. Single-threaded: slots are plain data behind `RefCell`, borrowed only for the
/// length of one method call.
pub struct Watchdog {
    started: Instant,
    /// Ticks since `started`, as of the last `advance`.
    now: Cell<u64>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    /// Whether the last scan of the slots found a deadline still pending.
    pending: Cell<bool>,
    /// Whether the ticking task is parked because no deadline was pending (`now` is stale meanwhile).
    parked: Cell<bool>,
    /// The parked task, woken by the next `arm`.
    waker: RefCell<Option<Waker>>,
}

impl Watchdog {
    pub fn new() -> Rc<Watchdog> {
        Rc::new(Watchdog {
            started: Instant::now(),
            // Starts at 1 so that a deadline is never 0 (0 means "nothing pending").
            now: Cell::new(1),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            pending: Cell::new(true),
            parked: Cell::new(false),
            waker: RefCell::new(None),
        })
    }

    /// Advances the clock every `TICK` and ends expired operations, forever; spawn it once per event loop. Parks
    /// while no deadline is pending.
    pub async fn run(self: Rc<Self>) {
        loop {
            if self.pending.get() {
                monoio::time::sleep(TICK).await;
                self.advance(Instant::now());
            } else {
                self.parked.set(true);
                Parked(&self).await;
            }
        }
    }

    /// Called by the first `arm` after the task parked: brings the clock up to date and wakes the task.
    fn unpark(&self) {
        self.parked.set(false);
        self.advance(Instant::now());
        // The deadline being armed is not in the slots yet.
        self.pending.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Gives the socket `fd` a slot for as long as the returned `Watch` lives. The `Watch` must be dropped before
    /// the socket is closed, so that a reused descriptor number is never shut down by mistake.
    pub fn watch(self: &Rc<Self>, fd: RawFd) -> Watch {
        let slot = Slot {
            fd,
            deadline: 0,
            operation: Operation::Read,
            state: State::Open,
        };
        let mut slots = self.slots.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(index) => {
                slots[index as usize] = slot;
                index
            }
            None => {
                slots.push(slot);
                // More than 4 billion sockets on one worker cannot be open at once (descriptor limits).
                (slots.len() - 1) as u32
            }
        };
        Watch {
            watchdog: Rc::clone(self),
            index,
        }
    }

    /// Moves the clock to `now` and ends every operation whose deadline has passed. Returns how many were ended.
    pub fn advance(&self, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.started).as_millis() as u64;
        let tick = 1 + elapsed / TICK_MS;
        self.now.set(tick);
        self.expire_where(|slot| slot.deadline != 0 && slot.deadline <= tick)
    }

    /// Ends every keep-alive wait now (graceful shutdown). Returns how many were ended.
    pub fn end_idle_waits(&self) -> usize {
        self.expire_where(|slot| slot.deadline != 0 && slot.operation == Operation::IdleRead)
    }

    /// Ends the operations `due` picks; notes whether any deadline is left.
    fn expire_where(&self, due: impl Fn(&Slot) -> bool) -> usize {
        let mut ended = 0;
        let mut pending = false;
        for slot in self.slots.borrow_mut().iter_mut() {
            let live = matches!(slot.state, State::Open | State::ReadShut);
            if live && due(slot) {
                slot.state = match slot.operation {
                    Operation::Read | Operation::IdleRead => State::ReadShut,
                    Operation::Write => State::Expired,
                };
                slot.deadline = 0;
                shut_down(slot.fd, slot.operation);
                ended += 1;
            }
            pending |= slot.deadline != 0;
        }
        self.pending.set(pending);
        ended
    }

    fn deadline_after(&self, timeout: Duration) -> u64 {
        let millis = timeout.as_secs().saturating_mul(1000) + u64::from(timeout.subsec_millis());
        // Rounded up, plus one tick because `now` may be up to a tick old.
        self.now.get() + millis.div_ceil(TICK_MS) + 1
    }
}

/// Resolves once `unpark` has run.
struct Parked<'a>(&'a Watchdog);

impl Future for Parked<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.parked.get() {
            *self.0.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

fn shut_down(fd: RawFd, operation: Operation) {
    let how = match operation {
        Operation::Read | Operation::IdleRead => libc::SHUT_RD,
        Operation::Write => libc::SHUT_RDWR,
    };
    // SAFETY: `fd` belongs to a live socket: its `Watch` frees the slot before the socket is closed. shutdown(2)
    // touches no memory; an error (the peer already gone) leaves nothing to do.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// A socket's slot in its worker's `Watchdog`.
pub struct Watch {
    watchdog: Rc<Watchdog>,
    index: u32,
}

impl Watch {
    /// Starts the deadline of one operation.
    #[inline]
    pub fn arm(&self, timeout: Duration, operation: Operation) {
        if self.watchdog.parked.get() {
            self.watchdog.unpark();
        }
        let deadline = self.watchdog.deadline_after(timeout);
        let mut slots = self.watchdog.slots.borrow_mut();
        let slot = &mut slots[self.index as usize];
        slot.operation = operation;
        if slot.state != State::Expired {
            slot.deadline = deadline;
        }
    }

    /// Ends the current operation's deadline. Returns `true` when the operation cannot have succeeded: it timed
    /// out, or it is a read on a socket whose reads already did (or a write after a write did). Its result must be
    /// treated as a timeout.
    #[inline]
    pub fn disarm(&self) -> bool {
        let mut slots = self.watchdog.slots.borrow_mut();
        let slot = &mut slots[self.index as usize];
        slot.deadline = 0;
        match slot.state {
            State::Open | State::Free => false,
            State::ReadShut => slot.operation != Operation::Write,
            State::Expired => true,
        }
    }

    /// Whether an operation on this socket timed out; such a socket must not be reused.
    pub fn expired(&self) -> bool {
        self.watchdog.slots.borrow()[self.index as usize].state != State::Open
    }

    /// Whether the socket's read side was shut by a timeout while writing still works.
    pub fn reads_ended(&self) -> bool {
        self.watchdog.slots.borrow()[self.index as usize].state == State::ReadShut
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(slot) = self.watchdog.slots.borrow_mut().get_mut(self.index as usize) {
            slot.state = State::Free;
            slot.deadline = 0;
        }
        self.watchdog.free.borrow_mut().push(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn later(watchdog: &Watchdog, millis: u64) -> Instant {
        watchdog.started + Duration::from_millis(millis)
    }

    #[test]
    fn an_operation_expires_only_after_its_timeout() {
        let watchdog = Watchdog::new();
        let (ours, _peer) = UnixStream::pair().unwrap();
        let watch = watchdog.watch(ours.as_raw_fd());
        watch.arm(Duration::from_millis(100), Operation::Read);
        assert_eq!(watchdog.advance(later(&watchdog, 99)), 0);
        assert!(!watch.expired());
        assert_eq!(watchdog.advance(later(&watchdog, 130)), 1);
        assert!(watch.expired());
        assert!(watch.disarm(), "the operation must report the timeout");
    }

    #[test]
    fn an_expired_read_sees_end_of_file_at_once() {
        let watchdog = Watchdog::new();
        let (mut ours, _peer) = UnixStream::pair().unwrap();
        let watch = watchdog.watch(ours.as_raw_fd());
        watch.arm(Duration::from_millis(10), Operation::Read);
        watchdog.advance(later(&watchdog, 1000));
        let mut byte = [0u8; 1];
        // Without the shutdown this read would wait for the peer, which sends nothing: it fails after 5 s instead.
        ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(ours.read(&mut byte).unwrap(), 0);
    }

    #[test]
    fn after_a_read_timeout_writes_still_work_and_time_out_on_their_own() {
        let watchdog = Watchdog::new();
        let (ours, _peer) = UnixStream::pair().unwrap();
        let watch = watchdog.watch(ours.as_raw_fd());
        watch.arm(Duration::from_millis(10), Operation::Read);
        watchdog.advance(later(&watchdog, 100));
        assert!(watch.disarm(), "the read timed out");
        assert!(watch.expired() && watch.reads_ended());

        watch.arm(Duration::from_millis(100), Operation::Read);
        assert!(watch.disarm(), "later reads fail at once");
        watch.arm(Duration::from_millis(100), Operation::Write);
        assert_eq!(
            watchdog.advance(later(&watchdog, 150)),
            0,
            "the write has its own deadline"
        );
        assert!(!watch.disarm(), "a write that finished in time succeeded");

        watch.arm(Duration::from_millis(100), Operation::Write);
        assert_eq!(watchdog.advance(later(&watchdog, 400)), 1);
        assert!(watch.disarm(), "a write past its deadline timed out");
        assert!(!watch.reads_ended(), "both sides are shut now");
        watch.arm(Duration::from_millis(100), Operation::Write);
        assert!(watch.disarm(), "and every later write fails");
    }

    #[test]
    fn the_first_deadline_after_parking_counts_from_the_real_time() {
        let watchdog = Watchdog::new();
        let (ours, _peer) = UnixStream::pair().unwrap();
        let watch = watchdog.watch(ours.as_raw_fd());
        watchdog.advance(later(&watchdog, 10));
        assert!(!watchdog.pending.get(), "nothing armed: the ticking task may park");
        watchdog.parked.set(true);
        // While parked the clock is not advanced: a deadline counted from it would already be 300 ms late.
        std::thread::sleep(Duration::from_millis(300));
        watch.arm(Duration::from_millis(100), Operation::Read);
        assert!(!watchdog.parked.get());
        assert!(watchdog.pending.get());
        assert_eq!(watchdog.advance(later(&watchdog, 330)), 0, "fired early");
        assert!(watchdog.pending.get(), "the deadline is still pending");
        assert_eq!(watchdog.advance(later(&watchdog, 450)), 1);
    }

    #[test]
    fn a_disarmed_operation_never_expires() {
        let watchdog = Watchdog::new();
        let (ours, _peer) = UnixStream::pair().unwrap();
        let watch = watchdog.watch(ours.as_raw_fd());
        watch.arm(Duration::from_millis(10), Operation::Write);
        assert!(!watch.disarm());
        assert_eq!(watchdog.advance(later(&watchdog, 10_000)), 0);
        assert!(!watch.expired());
    }

    #[test]
    fn an_expired_socket_stays_expired() {
        let watchdog = Watchdog::new();
        let (ours, _peer) = UnixStream::pair().unwrap();
        let watch = watchdog.watch(ours.as_raw_fd());
        watch.arm(Duration::ZERO, Operation::Read);
        watchdog.advance(later(&watchdog, 1000));
        watch.arm(Duration::from_secs(60), Operation::Read);
        assert!(watch.disarm());
    }

    #[test]
    fn ending_idle_waits_leaves_other_operations_alone() {
        let watchdog = Watchdog::new();
        let (idle, _idle_peer) = UnixStream::pair().unwrap();
        let (busy, _busy_peer) = UnixStream::pair().unwrap();
        let idle_watch = watchdog.watch(idle.as_raw_fd());
        let busy_watch = watchdog.watch(busy.as_raw_fd());
        idle_watch.arm(Duration::from_secs(60), Operation::IdleRead);
        busy_watch.arm(Duration::from_secs(60), Operation::Read);
        assert_eq!(watchdog.end_idle_waits(), 1);
        assert!(idle_watch.expired());
        assert!(!busy_watch.expired());
    }

    #[test]
    fn a_freed_slot_is_reused_and_never_fires_for_its_old_socket() {
        let watchdog = Watchdog::new();
        let (first, _first_peer) = UnixStream::pair().unwrap();
        let watch = watchdog.watch(first.as_raw_fd());
        watch.arm(Duration::ZERO, Operation::Read);
        drop(watch);
        assert_eq!(
            watchdog.advance(later(&watchdog, 1000)),
            0,
            "a dropped watch's deadline must not fire"
        );
        let (second, _second_peer) = UnixStream::pair().unwrap();
        let reused = watchdog.watch(second.as_raw_fd());
        assert_eq!(reused.index, 0);
        assert!(!reused.expired());
    }
}
