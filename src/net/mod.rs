//! Sockets on a worker's event loop: buffered streams with per-operation timeouts, and SO_REUSEPORT listeners.

pub mod buffered;
pub mod listener;

pub use buffered::{write_all_timeout, BufferedStream};
