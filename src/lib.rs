//! corelb: a thread-per-core HTTP/1.1 load balancer on io_uring. ARCHITECTURE.md describes the shape; the layers
//! below follow it: pure modules (`config`, `http`, `balance`, `upstream`), TLS material (`tls`: certificates
//! read on the control thread, the SNI choice the cores make), per-core modules (`net`, `shard`,
//! `proxy`, `worker`), the `health` prober thread, and the `control` thread that reaches the cores only through
//! messages.

pub mod access_log;
pub mod balance;
pub mod cli;
pub mod config;
pub mod control;
pub mod ctl;
pub mod health;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod ratelimit;
pub mod shard;
pub mod tls;
pub mod upstream;
pub mod worker;
