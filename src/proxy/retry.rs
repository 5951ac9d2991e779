//! Where a request goes after a failed attempt. The error says what kind of retry it allows
//! ([`ProxyError::retry`]); the request says whether it can be sent again ([`replayable`]); the [`Route`] bounds
//! how often and remembers which backends were tried, so that a retry goes elsewhere when there is an elsewhere.

use std::rc::Rc;
use std::time::Instant;

use crate::balance::Candidates;
use crate::shard::{Admission, BackendState, Generation};

/// How far an exchange got when its connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Writing the request failed: the backend's socket was already gone, so it cannot have acted on it.
    Writing,
    /// The request was written and the connection ended (reset, EOF) before any response byte.
    Awaiting,
}

/// Whether a request whose upstream connection failed before any response byte may be sent again. A bodiless
/// request is still held whole, so it can be replayed; a body was streamed from the client and is gone. An
/// idempotent request (RFC 9110 §9.2.2) may be replayed even if the backend received it; any other only when the
/// write itself failed.
pub fn replayable(stage: Stage, bodiless: bool, idempotent: bool) -> bool {
    match stage {
        Stage::Writing => bodiless,
        Stage::Awaiting => bodiless && idempotent,
    }
}

/// Every backend that is not draining is unhealthy by the active checks (and there is at least one).
pub fn every_serving_backend_unhealthy(generation: &Generation) -> bool {
    let mut serving = generation
        .backends
        .iter()
        .filter(|backend| backend.serving())
        .peekable();
    serving.peek().is_some() && serving.all(|backend| backend.unhealthy())
}

/// Which backends one of [`Route::pick`]'s passes offers the balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// Untried and admitted, taking their share of turns (slow start, dynamic weights).
    Admitted,
    /// Untried and usable as a last resort (resting after a failure, ejected), at full share.
    Fallback,
    /// Any usable as a last resort, tried or not: a replay's fresh connection.
    AnyFallback,
    /// Untried and unhealthy: the fail-open panic.
    Panic,
}

/// The backends of one pass, as the balancer sees them.
struct Pass<'a> {
    backends: &'a [Rc<BackendState>],
    tried: &'a [usize],
    now: Instant,
    tier: Tier,
    key: u64,
}

impl Candidates for Pass<'_> {
    fn admitted(&self, index: usize) -> bool {
        let untried = !self.tried.contains(&index);
        let backend = &self.backends[index];
        if backend.at_capacity() {
            return false;
        }
        let admission = backend.admits(self.now);
        match self.tier {
            Tier::Admitted => untried && admission == Admission::Admitted,
            Tier::Fallback => untried && admission.as_fallback(),
            Tier::AnyFallback => admission.as_fallback(),
            Tier::Panic => untried && admission == Admission::Unhealthy,
        }
    }

    fn takes_turn(&self, index: usize) -> bool {
        self.tier != Tier::Admitted || self.backends[index].takes_turn(self.now)
    }

    fn share(&self, index: usize) -> f64 {
        let backend = &self.backends[index];
        match self.tier {
            Tier::Admitted => backend.share(self.now) * backend.dynamic_share(),
            _ => 1.0,
        }
    }

    fn in_flight(&self, index: usize) -> u32 {
        self.backends[index].in_flight()
    }

    fn response_time(&self, index: usize) -> f64 {
        self.backends[index].response_time(self.now)
    }

    fn hash_key(&self) -> u64 {
        self.key
    }
}

/// A request is replayed after a failed exchange at most this often, and at most `max_connect_attempts` times; at
/// least once, so that even with an attempt limit of one the keep-alive race gets a fresh connection.
const MAX_REPLAYS: u32 = 2;

/// The backends one request has tried, and how many more tries it has.
#[derive(Debug)]
pub struct Route {
    tried: Vec<usize>,
    /// Most backends tried for one request (`upstream.max_connect_attempts`).
    limit: usize,
    /// Exchanges that failed before any response byte and were sent again.
    replays: u32,
    /// Replayed, and no connect has failed since: a backend already tried may take the replay.
    may_reuse_tried: bool,
    /// Tries made after the first, of every kind.
    retries: u32,
    /// The request's hash key, for the hashing algorithms.
    key: u64,
    /// The backend the request's sticky cookie names.
    sticky: Option<usize>,
    /// The sticky backend was at capacity and the wait for it ended: the algorithm chooses.
    sticky_given_up: bool,
}

/// What a request's sticky cookie asks of the pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StickyChoice {
    /// Its backend takes it.
    Go(usize),
    /// Its backend would take it but is at capacity: wait for room there.
    Wait,
}

impl Route {
    pub fn new(limit: u32) -> Route {
        Route {
            tried: Vec::new(),
            limit: limit.max(1) as usize,
            replays: 0,
            may_reuse_tried: false,
            retries: 0,
            key: 0,
            sticky: None,
            sticky_given_up: false,
        }
    }

    /// The route of a request whose sticky cookie names backend `index`.
    pub fn sticky(self, index: Option<usize>) -> Route {
        Route { sticky: index, ..self }
    }

    /// The sticky backend, when it is admitted and not tried yet (so a failure there moves the request on, and
    /// a draining, unhealthy, ejected or stopped backend moves its clients): it takes the request, or it is at
    /// capacity and the request waits for it.
    fn sticky_choice(&self, generation: &Generation, now: Instant) -> Option<StickyChoice> {
        let index = self.sticky.filter(|_| !self.sticky_given_up)?;
        let backend = generation.backends.get(index)?;
        // A replay after a pooled connection the backend had closed may go back (its fresh connection is no fault
        // of the backend's); a backend that failed is resting, so not admitted, and its client moves.
        let tried = self.tried.contains(&index) && !self.may_reuse_tried;
        if tried || backend.admits(now) != Admission::Admitted {
            return None;
        }
        Some(if backend.at_capacity() {
            StickyChoice::Wait
        } else {
            StickyChoice::Go(index)
        })
    }

    /// The request waits for its sticky backend to have room.
    pub fn waits_for_sticky(&self, generation: &Generation, now: Instant) -> bool {
        self.sticky_choice(generation, now) == Some(StickyChoice::Wait)
    }

    /// The wait for the sticky backend ended without room: the algorithm chooses from now on.
    pub fn give_up_sticky(&mut self) {
        self.sticky_given_up = true;
    }

    /// The route of a request whose hash key is `key` (`ip_hash`, `consistent_hash`).
    pub fn keyed(self, key: u64) -> Route {
        Route { key, ..self }
    }

    /// The backend for the next attempt: an admitted one not tried yet; else one resting after a failure (it may
    /// be back, and refusing outright helps nobody); else, for a replay, a fresh connection to one already tried.
    /// A draining backend, or one whose circuit breaker stops traffic, is never picked.
    pub fn pick(&self, generation: &Generation, now: Instant) -> Option<usize> {
        match self.sticky_choice(generation, now) {
            Some(StickyChoice::Go(index)) => return Some(index),
            Some(StickyChoice::Wait) => return None,
            None => {}
        }
        let pass = |tier| Pass {
            backends: &generation.backends,
            tried: &self.tried,
            now,
            tier,
            key: self.key,
        };
        generation
            .balancer
            .pick(&pass(Tier::Admitted))
            .or_else(|| generation.balancer.pick(&pass(Tier::Fallback)))
            .or_else(|| {
                self.may_reuse_tried
                    .then(|| generation.balancer.pick(&pass(Tier::AnyFallback)))
                    .flatten()
            })
    }

    /// In panic (every backend that is not draining found unhealthy, and `panic_mode = "fail_open"`): a backend
    /// not tried yet, as if every one were healthy, so that broken checks do not take the whole service down.
    /// A stopped or draining backend is still never picked.
    pub fn pick_in_panic(&self, generation: &Generation, now: Instant) -> Option<usize> {
        let backends = &generation.backends;
        if !every_serving_backend_unhealthy(generation) {
            return None;
        }
        generation.balancer.pick(&Pass {
            backends,
            tried: &self.tried,
            now,
            tier: Tier::Panic,
            key: self.key,
        })
    }

    /// Records that connecting to `index` failed; whether the request may try another backend.
    pub fn connect_failed(&mut self, index: usize, backends: usize) -> bool {
        self.mark_tried(index);
        self.may_reuse_tried = false;
        self.retries += 1;
        self.tried.len() < self.limit.min(backends)
    }

    /// Records a failed exchange on `index` to be sent again; false when the request has been replayed enough.
    pub fn replay(&mut self, index: usize) -> bool {
        self.mark_tried(index);
        self.replays += 1;
        self.retries += 1;
        self.may_reuse_tried = true;
        self.replays <= MAX_REPLAYS && self.replays as usize <= self.limit
    }

    /// Records that the try on `index` answered with a status to retry, or timed out: the request goes to another
    /// backend, never back to this one; false when the tries are used up.
    pub fn elsewhere(&mut self, index: usize) -> bool {
        self.mark_tried(index);
        self.may_reuse_tried = false;
        self.retries += 1;
        (self.retries as usize) < self.limit
    }

    /// Whether a backend not tried yet could take the request now (without moving the balancer's rotation).
    pub fn can_go_elsewhere(&self, generation: &Generation, now: Instant) -> bool {
        generation.backends.iter().enumerate().any(|(index, backend)| {
            !self.tried.contains(&index) && !backend.at_capacity() && backend.admits(now).as_fallback()
        })
    }

    /// Whether a backend this request could use is at capacity (so it may wait for room rather than fail).
    pub fn held_back_by_capacity(&self, generation: &Generation, now: Instant) -> bool {
        generation.backends.iter().enumerate().any(|(index, backend)| {
            (self.may_reuse_tried || !self.tried.contains(&index))
                && backend.at_capacity()
                && backend.admits(now).as_fallback()
        })
    }

    /// Tries this request has made, or is about to make, beyond its first.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    fn mark_tried(&mut self, index: usize) {
        if !self.tried.contains(&index) {
            self.tried.push(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::error::{ProxyError, Retry};

    fn reset() -> ProxyError {
        ProxyError::UpstreamIo {
            backend: "b".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        }
    }

    /// What the forwarding loop does after a lost connection: the error must allow a fresh connection and the
    /// request must be replayable.
    fn sent_again(error: &ProxyError, stage: Stage, bodiless: bool, idempotent: bool) -> bool {
        error.retry() == Retry::FreshConnection && replayable(stage, bodiless, idempotent)
    }

    #[test]
    fn an_idempotent_bodiless_request_is_sent_again_after_a_silent_failure() {
        for stage in [Stage::Writing, Stage::Awaiting] {
            assert!(sent_again(&reset(), stage, true, true));
            let closed = ProxyError::UpstreamClosed { backend: "b".into() };
            assert!(sent_again(&closed, stage, true, true));
        }
    }

    #[test]
    fn a_post_is_sent_again_only_when_the_backend_cannot_have_seen_it() {
        assert!(sent_again(&reset(), Stage::Writing, true, false));
        assert!(!sent_again(&reset(), Stage::Awaiting, true, false));
    }

    #[test]
    fn a_streamed_body_is_never_sent_again() {
        assert!(!sent_again(&reset(), Stage::Writing, false, true));
        assert!(!sent_again(&reset(), Stage::Awaiting, false, true));
    }

    #[test]
    fn a_status_or_timeout_retry_never_returns_to_the_same_backend_and_stops_at_the_limit() {
        let mut route = Route::new(3);
        assert!(route.elsewhere(0));
        assert!(route.elsewhere(1));
        assert!(!route.elsewhere(2), "three tries in all");
        assert!(!route.may_reuse_tried);
        assert_eq!(route.tried, [0, 1, 2]);
    }

    #[test]
    fn a_garbled_answer_is_not_replayed() {
        let garbled = ProxyError::BadResponse {
            backend: "b".into(),
            reason: "x".into(),
        };
        assert!(!sent_again(&garbled, Stage::Awaiting, true, true));
    }

    #[test]
    fn a_route_tries_each_backend_once_within_its_limit() {
        let mut route = Route::new(3);
        assert!(route.connect_failed(0, 5));
        assert!(route.connect_failed(0, 5), "the same backend is counted once");
        assert!(route.connect_failed(1, 5));
        assert!(!route.connect_failed(2, 5), "three tried of a limit of three");
        let mut small = Route::new(3);
        assert!(!small.connect_failed(0, 1), "one backend, nothing else to try");
    }

    #[test]
    fn replays_are_bounded() {
        let mut route = Route::new(10);
        assert!(route.replay(0));
        assert!(route.replay(0));
        assert!(!route.replay(0));
        let mut single = Route::new(1);
        assert!(single.replay(0), "one replay even with an attempt limit of one");
        assert!(!single.replay(0));
    }
}
