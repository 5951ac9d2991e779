//! The state one core owns, below the request path: the worker context, the current generation, each backend's
//! view and the request ids. `proxy` and `worker` build on it; it imports only `net` and the pure modules, so
//! per-backend features (health, breaker, capacity) land here without touching the request path's imports.

pub mod backend;
pub mod capacity;
pub mod context;
pub mod generation;
pub mod health;
pub mod outcomes;
pub mod request_id;
pub mod sticky;
pub mod tls;
pub mod warnings;

pub use backend::{
    Admission, BackendReport, BackendState, BreakerChange, Claim, DynamicReport, Outcome, Settings, StatusSet,
};
pub use context::{BreakerNews, ConnectionGuard, Outboxes, WorkerContext, WorkerLimits};
pub use generation::{Generation, Place, Snapshot};
pub use health::HealthTable;
pub use outcomes::{BackendTally, OutcomeReport, Tally};
pub use warnings::WarningGate;
