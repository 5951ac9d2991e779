//! The request path on a worker: client connections, forwarding, body streaming, and the error categories.

pub mod body;
pub mod client;
pub mod error;
pub mod forward;

pub use client::serve_client;
pub use error::ProxyError;
