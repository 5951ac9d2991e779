//! `corelb ctl`: the control socket's client. Sends one request line, prints the reply as a readable table (or raw
//! JSON with `--json`). Exit status: 0 applied/answered, 1 refused by corelb, 2 the socket cannot be reached.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::config::duration::parse_duration;
use crate::config::load_config;
use crate::control::command::Command;

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Control socket path (default: control.socket of the config file).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Config file used to find the socket when --socket is not given.
    #[arg(short, long, default_value = "config.toml")]
    config: PathBuf,
    /// Print the raw JSON reply.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Version, uptime, workers, frontends and backends with health, weight and in-flight requests.
    Status,
    /// Show, apply or diff the whole config.
    #[command(subcommand)]
    Config(ConfigVerb),
    /// Re-read the config file (like SIGHUP).
    Reload,
    /// List backends.
    Backends,
    /// Add, remove, reweight or drain one backend.
    #[command(subcommand)]
    Backend(BackendVerb),
    /// List the applied config versions.
    Versions,
    /// Restore a previous version (default: the one before the current).
    Rollback { version: Option<u64> },
    /// Change the log level: error, warn, info, debug or trace.
    LogLevel { level: String },
    /// Reload or list the TLS certificates.
    #[command(subcommand)]
    Cert(CertVerb),
    /// Replace the backend set in batches; without --to, shows the rollout's status.
    Rollout(RolloutArgs),
    /// Merged metrics as a summary: request rate over --interval, latency quantiles, errors, per-backend split.
    Metrics {
        /// How long to sample the request rate, e.g. "1s".
        #[arg(long, default_value = "1s")]
        interval: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigVerb {
    /// Print the running config as TOML.
    Show,
    /// Apply a whole new config file.
    Apply { file: PathBuf },
    /// Show what applying a file would change, without applying it.
    Diff { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum BackendVerb {
    /// Add a backend.
    Add {
        url: String,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        id: Option<String>,
    },
    /// Remove a backend (requests in flight to it finish).
    Remove { id: String },
    /// Change a backend's weight.
    Set {
        id: String,
        #[arg(long)]
        weight: u32,
    },
    /// Send no new requests to a backend; requests in flight finish.
    Drain { id: String },
}

#[derive(Debug, Subcommand)]
enum CertVerb {
    /// Read every TLS frontend's certificate files again (new handshakes get the new ones; a broken pair is
    /// refused and the old one stays).
    Reload,
    /// The certificates in force, with their names and days to expiry.
    List,
}

#[derive(Debug, Args)]
struct RolloutArgs {
    /// status (default), pause, resume or abort.
    action: Option<String>,
    /// The new backend set: a config file whose [[backends]] to use, or comma-separated URLs.
    #[arg(long)]
    to: Option<String>,
    /// Backends replaced per step.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Pause between steps, e.g. "5s".
    #[arg(long, default_value = "5s")]
    interval: String,
}

/// Exit status when the socket cannot be reached or the request cannot be built.
const EXIT_UNREACHABLE: u8 = 2;

fn read_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
}

fn target_urls(to: &str) -> Result<Vec<String>, String> {
    let path = Path::new(to);
    if path.is_file() {
        let config = load_config(path).map_err(|error| error.to_string())?;
        return Ok(config.backends.into_iter().map(|backend| backend.url).collect());
    }
    Ok(to
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The command a verb sends: the control plane's own type, so `ctl` cannot spell a name or field differently.
fn request_for(verb: &Verb) -> Result<Command, String> {
    Ok(match verb {
        Verb::Status => Command::Status,
        Verb::Config(ConfigVerb::Show) => Command::ConfigShow,
        Verb::Config(ConfigVerb::Apply { file }) => Command::ConfigApply { toml: read_file(file)? },
        Verb::Config(ConfigVerb::Diff { file }) => Command::ConfigDiff { toml: read_file(file)? },
        Verb::Reload => Command::Reload,
        Verb::Backends => Command::Backends,
        Verb::Backend(BackendVerb::Add { url, weight, id }) => Command::BackendAdd {
            url: url.clone(),
            weight: *weight,
            id: id.clone(),
        },
        Verb::Backend(BackendVerb::Remove { id }) => Command::BackendRemove { id: id.clone() },
        Verb::Backend(BackendVerb::Set { id, weight }) => Command::BackendSet {
            id: id.clone(),
            weight: *weight,
        },
        Verb::Backend(BackendVerb::Drain { id }) => Command::BackendDrain { id: id.clone() },
        Verb::Versions => Command::Versions,
        Verb::Cert(CertVerb::Reload) => Command::CertReload,
        Verb::Cert(CertVerb::List) => Command::Certificates,
        Verb::Rollback { version } => Command::Rollback { version: *version },
        Verb::LogLevel { level } => Command::LogLevel { level: level.clone() },
        Verb::Metrics { .. } => Command::MetricsSummary,
        Verb::Rollout(args) => match (&args.to, args.action.as_deref()) {
            (Some(to), None | Some("start")) => Command::RolloutStart {
                to: target_urls(to)?,
                batch: args.batch.max(1),
                interval: parse_duration(&args.interval).map_err(|reason| format!("--interval: {reason}"))?,
            },
            (None, None | Some("status")) => Command::RolloutStatus,
            (None, Some("pause")) => Command::RolloutPause,
            (None, Some("resume")) => Command::RolloutResume,
            (None, Some("abort")) => Command::RolloutAbort,
            (_, Some(other)) => {
                return Err(format!(
                    "unknown rollout action {other:?} (status, pause, resume, abort)"
                ))
            }
        },
    })
}

fn socket_path(args: &CtlArgs) -> Result<PathBuf, String> {
    if let Some(socket) = &args.socket {
        return Ok(socket.clone());
    }
    if let Ok(config) = load_config(&args.config) {
        return Ok(config.control.socket);
    }
    // A file with errors elsewhere (the one `ctl reload` is about to be refused for) still names the socket: read
    // just `control.socket`, so corelb itself can report what is wrong with the rest.
    let text = read_file(&args.config)
        .map_err(|error| format!("{error}\n(use --socket PATH to name the control socket directly)"))?;
    let named = text
        .parse::<toml::Table>()
        .ok()
        .and_then(|table| table.get("control")?.get("socket")?.as_str().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONTROL_SOCKET));
    let folder = args.config.parent().unwrap_or(Path::new(""));
    Ok(if named.is_absolute() { named } else { folder.join(named) })
}

/// Runs `corelb ctl`.
pub fn run(args: &CtlArgs) -> ExitCode {
    // Printing into a closed pipe (`corelb ctl status | head -1`) ends the process quietly, as it does for any
    // Unix tool, instead of panicking on EPIPE.
    crate::net::sys::default_sigpipe();
    let request = match request_for(&args.verb) {
        Ok(command) => command.to_json(),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let path = match socket_path(args) {
        Ok(path) => path,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let mut reply = match exchange(&path, &request) {
        Ok(reply) => reply,
        Err(error) => {
            eprintln!("error: cannot reach corelb at {}: {error}", path.display());
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    if let Verb::Metrics { interval } = &args.verb {
        // Two samples, `interval` apart: the rate is their difference.
        let Ok(interval) = crate::config::duration::parse_duration(interval) else {
            eprintln!("error: --interval: not a duration such as \"1s\"");
            return ExitCode::from(EXIT_UNREACHABLE);
        };
        std::thread::sleep(interval);
        let before = reply["result"]["requests"].as_u64().unwrap_or(0);
        reply = match exchange(&path, &request) {
            Ok(reply) => reply,
            Err(error) => {
                eprintln!("error: cannot reach corelb at {}: {error}", path.display());
                return ExitCode::from(EXIT_UNREACHABLE);
            }
        };
        let after = reply["result"]["requests"].as_u64().unwrap_or(0);
        let rate = after.saturating_sub(before) as f64 / interval.as_secs_f64().max(0.001);
        if let Some(result) = reply.get_mut("result").and_then(Value::as_object_mut) {
            result.insert("requests_per_second".to_string(), json!(rate));
        }
    }
    let ok = reply.get("ok").and_then(Value::as_bool).unwrap_or(false);
    if args.json {
        println!("{reply}");
    } else if ok {
        let result = reply.get("result").unwrap_or(&Value::Null);
        print_result(&args.verb, result);
        if let Some(note) = result.get("note").and_then(Value::as_str) {
            println!("note: {note}");
        }
    } else {
        let error = reply.get("error").cloned().unwrap_or(Value::Null);
        eprintln!(
            "refused ({}): {}",
            error.get("kind").and_then(Value::as_str).unwrap_or("error"),
            error.get("message").and_then(Value::as_str).unwrap_or("")
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn exchange(path: &Path, request: &Value) -> std::io::Result<Value> {
    let mut stream = UnixStream::connect(path)?;
    let mut line = request.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => "-".to_string(),
        Some(other) => other.to_string(),
    }
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|header| header.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn print_backends(backends: &Value) {
    let rows: Vec<Vec<String>> = backends
        .as_array()
        .into_iter()
        .flatten()
        .map(|backend| {
            [text(backend, "id"), text(backend, "url"), weight_text(backend)]
                .into_iter()
                .chain(
                    ["state", "health", "in_flight", "idle_connections"]
                        .iter()
                        .map(|key| text(backend, key)),
                )
                .chain([circuit_text(backend), outlier_text(backend)])
                .collect()
        })
        .collect();
    print_table(
        &[
            "ID",
            "URL",
            "WEIGHT",
            "STATE",
            "HEALTH",
            "IN-FLIGHT",
            "IDLE",
            "CIRCUIT",
            "OUTLIER",
        ],
        &rows,
    );
}

/// The configured weight, and with dynamic weights on the effective one: `3 (1.24)`.
fn print_certificates(result: &Value) {
    let mut rows = Vec::new();
    for frontend in result["frontends"].as_array().into_iter().flatten() {
        for certificate in frontend["certificates"].as_array().into_iter().flatten() {
            let names: Vec<&str> = certificate["names"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let days = certificate["expires_in_seconds"].as_f64().unwrap_or(0.0) / 86_400.0;
            rows.push(vec![
                text(frontend, "frontend"),
                names.join(","),
                format!("{days:.1}"),
                text(certificate, "cert"),
            ]);
        }
    }
    print_table(&["FRONTEND", "NAMES", "DAYS-LEFT", "CERT"], &rows);
}

fn weight_text(backend: &Value) -> String {
    let weight = text(backend, "weight");
    match backend
        .get("dynamic")
        .and_then(|dynamic| dynamic.get("effective_weight"))
        .and_then(Value::as_f64)
    {
        Some(effective) => format!("{weight} ({effective:.2})"),
        None => weight,
    }
}

/// The backend's circuit breaker in one word (`-` when the breaker is off).
fn circuit_text(backend: &Value) -> String {
    backend
        .get("circuit")
        .and_then(|circuit| circuit.get("state"))
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_string()
}

/// `ejected 27s` while passive outlier detection keeps the backend out, `-` otherwise.
fn outlier_text(backend: &Value) -> String {
    let outlier = backend.get("outlier");
    let seconds = outlier
        .filter(|outlier| outlier.get("ejected").and_then(Value::as_bool) == Some(true))
        .and_then(|outlier| outlier.get("seconds_left"))
        .and_then(Value::as_f64);
    seconds.map_or_else(|| "-".to_string(), |seconds| format!("ejected {seconds:.0}s"))
}

fn print_result(verb: &Verb, result: &Value) {
    match verb {
        Verb::Status => {
            let workers = result
                .get("workers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let drivers: Vec<String> = workers.iter().map(|worker| text(worker, "driver")).collect();
            println!(
                "corelb: config version {}, up {}s, {} workers ({}), {}",
                text(result, "version"),
                text(result, "uptime_seconds"),
                workers.len(),
                drivers.join(","),
                text(result, "algorithm")
            );
            for frontend in result.get("frontends").and_then(Value::as_array).into_iter().flatten() {
                println!("frontend {} on {}", text(frontend, "name"), text(frontend, "address"));
            }
            print_backends(result.get("backends").unwrap_or(&Value::Null));
            if let Some(rollout) = result.get("rollout").filter(|rollout| !rollout.is_null()) {
                println!("rollout: {}", text(rollout, "state"));
            }
        }
        Verb::Backends => print_backends(result.get("backends").unwrap_or(&Value::Null)),
        Verb::Config(ConfigVerb::Show) => print!("{}", text(result, "toml")),
        Verb::Config(ConfigVerb::Diff { .. }) => {
            let changes = result
                .get("changes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if changes.is_empty() {
                println!("no changes");
            }
            for change in changes {
                println!("{}", change.as_str().unwrap_or_default());
            }
            let restart = result
                .get("restart_required")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !restart.is_empty() {
                println!(
                    "needs a restart: {}",
                    restart.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
                );
            }
        }
        Verb::Versions => {
            let current = text(result, "current");
            let rows: Vec<Vec<String>> = result
                .get("versions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|record| {
                    let version = text(record, "version");
                    let marker = if version == current { "*" } else { "" };
                    vec![
                        format!("{version}{marker}"),
                        text(record, "applied_at"),
                        text(record, "source"),
                        text(record, "summary"),
                    ]
                })
                .collect();
            print_table(&["VERSION", "APPLIED", "SOURCE", "SUMMARY"], &rows);
        }
        Verb::LogLevel { .. } => println!("log level: {}", text(result, "level")),
        Verb::Metrics { .. } => {
            let millis = |key: &str| {
                result
                    .get(key)
                    .and_then(Value::as_f64)
                    .map_or("-".to_string(), |seconds| format!("{:.3}ms", seconds * 1000.0))
            };
            println!(
                "requests: {} total, {:.1}/s; latency p50 <= {}, p99 <= {}; errors: {}",
                text(result, "requests"),
                result.get("requests_per_second").and_then(Value::as_f64).unwrap_or(0.0),
                millis("p50_seconds"),
                millis("p99_seconds"),
                text(result, "errors")
            );
            if let Some(errors) = result
                .get("errors_by_category")
                .and_then(Value::as_object)
                .filter(|errors| !errors.is_empty())
            {
                let parts: Vec<String> = errors
                    .iter()
                    .map(|(category, count)| format!("{category}={count}"))
                    .collect();
                println!("errors by category: {}", parts.join(" "));
            }
            let rows: Vec<Vec<String>> = result
                .get("backends")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(id, backend)| {
                    vec![
                        id.clone(),
                        text(backend, "requests"),
                        text(backend, "connections_new"),
                        text(backend, "connections_reused"),
                    ]
                })
                .collect();
            print_table(&["BACKEND", "REQUESTS", "CONN-NEW", "CONN-REUSED"], &rows);
        }
        Verb::Cert(CertVerb::List) => print_certificates(result),
        Verb::Rollout(_) => println!("{}", serde_json::to_string_pretty(result).unwrap_or_default()),
        _ => {
            let changes: Vec<String> = result
                .get("changes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|change| change.as_str().map(str::to_owned))
                .collect();
            if result.get("applied").and_then(Value::as_bool) == Some(false) {
                println!("no change (version {})", text(result, "version"));
            } else {
                println!(
                    "applied version {} on every worker: {}",
                    text(result, "version"),
                    changes.join("; ")
                );
            }
        }
    }
}
