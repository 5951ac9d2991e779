//! Diagnostic logs on stderr through `tracing`, as text or JSON. `CORELB_LOG` (an `EnvFilter` directive) overrides
//! the configured level, for example `CORELB_LOG=corelb=debug`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Installs the global subscriber. Safe to call once per process.
pub fn init(config: &LoggingConfig) {
    let filter = std::env::var("CORELB_LOG")
        .ok()
        .and_then(|directive| EnvFilter::try_new(directive).ok())
        .unwrap_or_else(|| EnvFilter::new(config.level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
