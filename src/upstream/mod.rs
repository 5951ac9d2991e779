//! Upstream bookkeeping that needs no I/O: the per-backend idle connection pool and circuit breaker, the per-core
//! retry budget, and the sliding window of counts they and outlier detection use.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod pool;
pub mod window;

pub use pool::IdlePool;
