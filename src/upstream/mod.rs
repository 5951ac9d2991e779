//! Upstream bookkeeping that needs no I/O: the per-backend idle connection pool.

pub mod pool;

pub use pool::IdlePool;
