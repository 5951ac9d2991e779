//! Diagnostic logs on stderr through `tracing`, as text or JSON. The level can be changed while running
//! ([`set_level`], used by the control plane). `CORELB_LOG` (an `EnvFilter` directive) overrides the configured level
//! at start, for example `CORELB_LOG=corelb=debug`.
//!
//! A worker never writes stderr itself: an event is formatted into a buffer on the thread that logs it and handed
//! to a writer thread through a bounded channel (`tracing_appender::non_blocking`), so a slow or blocked stderr
//! (a full pipe, a paused terminal) cannot stall an event loop, and no lock on stderr is taken on the request path.
//! When the channel is full, lines are dropped rather than waited for. Repeated warnings are also rate-limited at
//! their source (`WarningGate`).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LogLevel, LoggingConfig};

static LEVEL_HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Lines the writer thread may have queued before new ones are dropped.
const QUEUED_LINES: usize = 64 * 1024;

/// Keeps the writer thread; dropping it writes out what is queued. Hold it until the process ends.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Installs the global subscriber. Later calls do nothing.
pub fn init(config: &LoggingConfig) -> LogGuard {
    let filter = std::env::var("CORELB_LOG")
        .ok()
        .and_then(|directive| EnvFilter::try_new(directive).ok())
        .unwrap_or_else(|| EnvFilter::new(config.level.as_str()));
    let (filter, handle) = reload::Layer::new(filter);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("corelb-log")
        .finish(std::io::stderr());
    let output = tracing_subscriber::fmt::layer()
        .with_writer(writer)
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
        LogGuard { _writer: Some(guard) }
    } else {
        LogGuard { _writer: None }
    }
}

/// Changes the log level of the running process.
pub fn set_level(level: LogLevel) -> Result<(), String> {
    let handle = LEVEL_HANDLE.get().ok_or("logging is not initialised")?;
    handle
        .reload(EnvFilter::new(level.as_str()))
        .map_err(|error| error.to_string())
}
