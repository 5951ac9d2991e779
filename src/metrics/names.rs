//! Every metric name corelb exposes, in one place. Prometheus conventions: `corelb_` prefix, base units, `_total`
//! for counters, `_seconds` for durations.

pub const REQUESTS: &str = "corelb_requests_total";
pub const REQUEST_DURATION: &str = "corelb_request_duration_seconds";
pub const UPSTREAM_RESPONSE: &str = "corelb_upstream_response_seconds";
pub const RECEIVED_BYTES: &str = "corelb_received_bytes_total";
pub const SENT_BYTES: &str = "corelb_sent_bytes_total";
pub const SPLICED_BYTES: &str = "corelb_spliced_bytes_total";
pub const CLIENT_CONNECTIONS_ACTIVE: &str = "corelb_client_connections_active";
pub const CLIENT_CONNECTIONS: &str = "corelb_client_connections_total";
pub const UPSTREAM_CONNECTIONS: &str = "corelb_upstream_connections_total";
pub const UPSTREAM_CONNECTIONS_IDLE: &str = "corelb_upstream_connections_idle";
pub const UPSTREAM_CONNECTIONS_OPEN: &str = "corelb_upstream_connections_open";
pub const ERRORS: &str = "corelb_errors_total";
pub const RATELIMIT_DECISIONS: &str = "corelb_ratelimit_decisions_total";
pub const RETRIES: &str = "corelb_retries_total";
pub const UPSTREAM_DISCARDED: &str = "corelb_upstream_connections_discarded_total";
pub const ACCEPT_PAUSED: &str = "corelb_accept_paused_total";
pub const BACKEND_UP: &str = "corelb_backend_up";
pub const BACKEND_WEIGHT: &str = "corelb_backend_weight";
pub const BACKEND_CIRCUIT_STATE: &str = "corelb_backend_circuit_state";
pub const BACKEND_CIRCUIT_TRIPS: &str = "corelb_backend_circuit_trips_total";
pub const CONFIG_VERSION: &str = "corelb_config_version";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "corelb_config_last_reload_successful";
pub const CONFIG_LAST_RELOAD_TIME: &str = "corelb_config_last_reload_timestamp_seconds";
pub const WORKER_REQUESTS: &str = "corelb_worker_requests_total";
pub const BUILD_INFO: &str = "corelb_build_info";
