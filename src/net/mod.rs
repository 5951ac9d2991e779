//! Sockets on a worker's event loop: buffered streams, the watchdog that keeps their timeouts, SO_REUSEPORT
//! listeners, the pipes that splice large bodies, and the descriptor budget with each worker's slots.

pub mod buffered;
pub mod descriptors;
pub mod listener;
pub mod slots;
pub mod splice;
pub mod sys;
pub mod tls;
pub mod transport;
pub mod watchdog;

pub use buffered::{BufferedStream, PendingInput, Readable};
pub use splice::{Pipe, PipePool};
pub use watchdog::Watchdog;
