//! Sockets on a worker's event loop: buffered streams, the watchdog that keeps their timeouts, SO_REUSEPORT
//! listeners, and the pipes that splice large bodies.

pub mod buffered;
pub mod listener;
pub mod splice;
pub mod watchdog;

pub use buffered::{BufferedStream, PendingInput, Readable};
pub use splice::{Pipe, PipePool};
pub use watchdog::Watchdog;
