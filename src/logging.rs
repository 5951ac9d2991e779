//! Diagnostic logs on stderr through `tracing`, as text or JSON. The level can be changed while running
//! ([`set_level`], used by the control plane). `CORELB_LOG` (an `EnvFilter` directive) overrides the configured level
//! at start, for example `CORELB_LOG=corelb=debug`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LogLevel, LoggingConfig};

static LEVEL_HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber. Later calls do nothing.
pub fn init(config: &LoggingConfig) {
    let filter = std::env::var("CORELB_LOG")
        .ok()
        .and_then(|directive| EnvFilter::try_new(directive).ok())
        .unwrap_or_else(|| EnvFilter::new(config.level.as_str()));
    let (filter, handle) = reload::Layer::new(filter);
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let output: Box<dyn Layer<Registry> + Send + Sync> = match config.format {
        LogFormat::Text => Box::new(output),
        LogFormat::Json => Box::new(output.json().flatten_event(true)),
    };
    if tracing_subscriber::registry()
        .with(output.and_then(filter))
        .try_init()
        .is_ok()
    {
        let _ = LEVEL_HANDLE.set(handle);
    }
}

/// Changes the log level of the running process.
pub fn set_level(level: LogLevel) -> Result<(), String> {
    let handle = LEVEL_HANDLE.get().ok_or("logging is not initialised")?;
    handle
        .reload(EnvFilter::new(level.as_str()))
        .map_err(|error| error.to_string())
}
