//! Upstream bookkeeping that needs no I/O: the per-backend idle connection pool and circuit breaker.

pub mod breaker;
pub mod pool;

pub use pool::IdlePool;
