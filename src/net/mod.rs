//! Sockets on a worker's event loop: buffered streams, the watchdog that keeps their timeouts, and SO_REUSEPORT
//! listeners.

pub mod buffered;
pub mod listener;
pub mod watchdog;

pub use buffered::BufferedStream;
pub use watchdog::Watchdog;
