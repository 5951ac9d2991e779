//! The access log: one line per request, JSON or the combined log format. A worker formats lines into its own
//! buffer and hands full buffers (or every 200 ms) to a writer thread, so disk I/O never blocks an event loop and the
//! request path takes no lock. The writer appends to a file or stderr and reopens the file on request (SIGUSR1,
//! for logrotate).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

use crate::config::AccessLogFormat;

/// A worker hands its buffer over once it holds this much.
pub const FLUSH_BYTES: usize = 32 * 1024;
/// ... or this often, whichever comes first.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Longest path written to the log.
const MAX_PATH: usize = 256;

/// What the writer thread is told.
pub enum LogMessage {
    Lines(Vec<u8>),
    Reopen,
}

/// Starts the writer thread for `path` (`None`: stderr). Returns where workers send their buffers.
pub fn start_writer(path: Option<PathBuf>) -> std::io::Result<Sender<LogMessage>> {
    let open = |path: &PathBuf| OpenOptions::new().create(true).append(true).open(path);
    let mut file = match &path {
        Some(path) => Some(open(path)?),
        None => None,
    };
    let (sender, receiver): (Sender<LogMessage>, Receiver<LogMessage>) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("corelb-access-log".into())
        .spawn(move || {
            yield_to_workers();
            for message in receiver {
                match message {
                    LogMessage::Lines(lines) => {
                        let result = match file.as_mut() {
                            Some(file) => file.write_all(&lines),
                            None => std::io::stderr().write_all(&lines),
                        };
                        if let Err(error) = result {
                            tracing::error!(error = %error, "access log write failed");
                        }
                    }
                    LogMessage::Reopen => {
                        if let Some(path) = &path {
                            match open(path) {
                                Ok(reopened) => file = Some(reopened),
                                Err(error) => {
                                    tracing::error!(error = %error, path = %path.display(), "access log reopen failed")
                                }
                            }
                        }
                    }
                }
            }
            if let Some(mut file) = file.take() {
                let _ = file.flush();
            }
        })?;
    Ok(sender)
}

/// Makes the calling thread (a log writer) give way to the workers on a shared core: SCHED_BATCH, so that its
/// wake-ups do not preempt a worker mid-loop, and a lower priority (nice 5). It still gets its share of the CPU, so
/// the log keeps up; it only stops cutting into a worker's latency when both are pinned to one core.
pub fn yield_to_workers() {
    crate::net::sys::run_as_batch(5);
}

/// One request, as logged.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub time: SystemTime,
    pub client: std::net::SocketAddr,
    pub frontend: &'a str,
    pub method: &'a str,
    pub path: &'a [u8],
    pub version: &'a str,
    pub status: u16,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub backend: &'a str,
    pub worker: usize,
    pub error: Option<&'a str>,
    pub request_id: &'a str,
    pub user_agent: &'a [u8],
    pub referer: &'a [u8],
}

/// Escapes bytes for a JSON string, replacing invalid UTF-8 and truncating to `limit` bytes.
fn json_escaped(out: &mut String, bytes: &[u8], limit: usize) {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]);
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            character if (character as u32) < 0x20 || character == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", character as u32);
            }
            character => out.push(character),
        }
    }
}

/// Escapes bytes for a quoted field of the combined format.
fn quoted_escaped(out: &mut String, bytes: &[u8], limit: usize) {
    for &byte in &bytes[..bytes.len().min(limit)] {
        match byte {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(byte as char);
            }
            0x20..=0x7e => out.push(byte as char),
            other => {
                let _ = write!(out, "\\x{other:02x}");
            }
        }
    }
}

/// UTC calendar fields of `time`: (year, month, day, seconds of the day, milliseconds).
pub fn civil(time: SystemTime) -> (i64, u32, u32, u64, u32) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let days = (seconds / 86_400) as i64;
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day, seconds % 86_400, since.subsec_millis())
}

/// Appends one line for `entry` to `out`.
pub fn format_entry(out: &mut String, entry: &Entry, format: AccessLogFormat) {
    let (year, month, day, of_day, millis) = civil(entry.time);
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    let duration = entry.duration.as_secs_f64();
    match format {
        AccessLogFormat::Json => {
            let _ = write!(
                out,
                "{{\"time\":\"{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z\",\"client\":\"{}\",\"client_port\":{},\"frontend\":\"",
                entry.client.ip(),
                entry.client.port()
            );
            json_escaped(out, entry.frontend.as_bytes(), 64);
            let _ = write!(out, "\",\"method\":\"");
            json_escaped(out, entry.method.as_bytes(), 32);
            out.push_str("\",\"path\":\"");
            json_escaped(out, entry.path, MAX_PATH);
            let _ = write!(
                out,
                "\",\"version\":\"{}\",\"status\":{},\"bytes_sent\":{},\"bytes_received\":{},\"duration_seconds\":{duration:.6},\"upstream_seconds\":",
                entry.version, entry.status, entry.bytes_sent, entry.bytes_received
            );
            match entry.upstream {
                Some(upstream) => {
                    let _ = write!(out, "{:.6}", upstream.as_secs_f64());
                }
                None => out.push_str("null"),
            }
            out.push_str(",\"backend\":\"");
            json_escaped(out, entry.backend.as_bytes(), 128);
            let _ = write!(out, "\",\"worker\":{},\"error\":", entry.worker);
            match entry.error {
                Some(error) => {
                    let _ = write!(out, "\"{error}\"");
                }
                None => out.push_str("null"),
            }
            let _ = writeln!(out, ",\"request_id\":\"{}\"}}", entry.request_id);
        }
        AccessLogFormat::Combined => {
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let month_name = MONTHS[(month as usize).clamp(1, 12) - 1];
            let _ = write!(
                out,
                "{} - - [{day:02}/{month_name}/{year:04}:{hour:02}:{minute:02}:{second:02} +0000] \"{} ",
                entry.client.ip(),
                entry.method
            );
            quoted_escaped(out, entry.path, MAX_PATH);
            let _ = write!(out, " {}\" {} {} \"", entry.version, entry.status, entry.bytes_sent);
            quoted_escaped(out, if entry.referer.is_empty() { b"-" } else { entry.referer }, 256);
            out.push_str("\" \"");
            quoted_escaped(
                out,
                if entry.user_agent.is_empty() {
                    b"-"
                } else {
                    entry.user_agent
                },
                256,
            );
            let _ = write!(out, "\" rt={duration:.6} urt=");
            match entry.upstream {
                Some(upstream) => {
                    let _ = write!(out, "{:.6}", upstream.as_secs_f64());
                }
                None => out.push('-'),
            }
            let _ = writeln!(
                out,
                " backend={} worker={} error={} rid={}",
                entry.backend,
                entry.worker,
                entry.error.unwrap_or("-"),
                entry.request_id
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            time: UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
            client: "10.1.2.3:5555".parse().unwrap(),
            frontend: "web",
            method: "GET",
            path: b"/a\"b\n",
            version: "HTTP/1.1",
            status: 200,
            bytes_sent: 42,
            bytes_received: 80,
            duration: Duration::from_micros(1500),
            upstream: Some(Duration::from_micros(900)),
            backend: "b1",
            worker: 1,
            error: None,
            request_id: "r-1",
            user_agent: b"curl/8",
            referer: b"",
        }
    }

    #[test]
    fn json_lines_parse_with_every_field() {
        let mut line = String::new();
        format_entry(&mut line, &entry(), AccessLogFormat::Json);
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["time"], "2026-11-18T11:06:40.123Z");
        assert_eq!(value["path"], "/a\"b\n");
        assert_eq!(value["status"], 200);
        assert_eq!(value["upstream_seconds"], 0.0009);
        assert_eq!(value["error"], serde_json::Value::Null);
        assert!(value["client_port"].is_u64());
        for key in [
            "client",
            "method",
            "bytes_sent",
            "duration_seconds",
            "backend",
            "worker",
            "request_id",
            "frontend",
        ] {
            assert!(value.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn combined_lines_follow_the_format() {
        let mut line = String::new();
        format_entry(&mut line, &entry(), AccessLogFormat::Combined);
        assert_eq!(
            line,
            "10.1.2.3 - - [18/Nov/2026:11:06:40 +0000] \"GET /a\\\"b\\x0a HTTP/1.1\" 200 42 \"-\" \"curl/8\" rt=0.001500 urt=0.000900 backend=b1 worker=1 error=- rid=r-1\n"
        );
    }

    #[test]
    fn long_paths_are_bounded() {
        let long = vec![b'a'; 5000];
        let mut line = String::new();
        format_entry(&mut line, &Entry { path: &long, ..entry() }, AccessLogFormat::Json);
        assert!(line.len() < 1000, "{}", line.len());
    }
}
