//! The request path on a worker: client connections, forwarding, body streaming, and the error categories.

pub mod body;
pub mod client;
pub mod connect;
pub mod error;
pub mod forward;
pub mod hash_key;
pub mod linger;
pub mod local;
pub mod record;
pub mod retry;
mod stages;

pub use client::{serve_client, serve_tls_client};
pub use error::ProxyError;
