//! corelb: a thread-per-core HTTP/1.1 load balancer on io_uring. See ARCHITECTURE.md for the shape.

pub mod config;
pub mod http;
