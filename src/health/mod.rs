//! Active health checks. One prober thread for the whole process (`prober`), not one per core: each backend is
//! probed once per interval however many workers there are, concurrently with every other backend, on an event
//! loop of its own, so a slow probe never delays a request or a control command. `probe` is one probe;
//! `tracker` is the pure part (thresholds, spread and jitter of the schedule). The control thread owns the prober,
//! hands it the targets after every change, and turns its flips into the health table the workers read
//! (`shard::HealthTable`), versioned apart from the config.

pub mod probe;
pub mod prober;
pub mod tracker;

pub use probe::ProbeTls;
pub use prober::{CheckCounts, Figures, HealthNews, ProbeReply, ProbeTarget, Prober, Target};
