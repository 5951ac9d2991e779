//! Upstream bookkeeping that needs no I/O: the per-backend idle connection pool and circuit breaker, and the
//! per-core retry budget.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod pool;

pub use pool::IdlePool;
