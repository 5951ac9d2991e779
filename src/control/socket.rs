//! The Unix control socket: one JSON object per line each way. Each client gets its own thread; every request is
//! handed to the control thread as a [`ControlRequest`] and its reply written back as one line. A malformed line gets
//! an error reply and the connection stays usable; a line over 1 MiB is refused and skipped.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crossbeam_channel::Sender;
use serde_json::Value;

use super::command::{parse_request_line, reply_json, CommandError, ErrorKind, Source, MAX_REQUEST_BYTES};
use super::ControlRequest;

/// Binds the socket (mode 0600) and serves it on a background thread.
pub fn serve(path: &Path, requests: Sender<ControlRequest>) -> io::Result<()> {
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        // Only a socket is ever removed: a path that names anything else (a typo naming the config file, say) is
        // refused and left alone.
        if !metadata.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; refusing to replace it (choose another control.socket)",
            ));
        }
        // A socket file left by a process that is gone is removed; a live one means another corelb owns it.
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is listening on this control socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("corelb-control-socket".into())
        .spawn(move || {
            let mut last_warning: Option<std::time::Instant> = None;
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(error) => {
                        // Out of descriptors (EMFILE/ENFILE) or the like: back off instead of spinning, and say so
                        // at most once a second.
                        if last_warning.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1)) {
                            tracing::warn!(%error, "control socket accept failed; backing off");
                            last_warning = Some(std::time::Instant::now());
                        }
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        continue;
                    }
                };
                let requests = requests.clone();
                let _ = std::thread::Builder::new()
                    .name("corelb-control-client".into())
                    .spawn(move || serve_client(stream, requests));
            }
        })?;
    Ok(())
}

/// The uid of the process on the other end, from SO_PEERCRED.
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    let mut credentials = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into `credentials`, which is a valid ucred.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut length,
        )
    };
    (result == 0).then_some(credentials.uid)
}

/// What reading one line produced.
enum Line {
    Text(String),
    TooLong,
    End,
}

/// Reads one line of at most `MAX_REQUEST_BYTES`; a longer one is consumed to its end and reported.
fn read_line(reader: &mut impl BufRead) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(if line.is_empty() && !too_long {
                Line::End
            } else if too_long {
                Line::TooLong
            } else {
                Line::Text(String::from_utf8_lossy(&line).into_owned())
            });
        }
        let (chunk, found_end) = match available.iter().position(|&byte| byte == b'\n') {
            Some(position) => (&available[..position], Some(position + 1)),
            None => (available, None),
        };
        if !too_long {
            if line.len() + chunk.len() > MAX_REQUEST_BYTES {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let consumed = found_end.unwrap_or(available.len());
        reader.consume(consumed);
        if found_end.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Text(String::from_utf8_lossy(&line).into_owned())
            });
        }
    }
}

fn serve_client(stream: UnixStream, requests: Sender<ControlRequest>) {
    let uid = peer_uid(&stream);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let (id, result) = match read_line(&mut reader) {
            Ok(Line::End) | Err(_) => return,
            Ok(Line::TooLong) => (
                None,
                Err(CommandError::invalid_request(format!(
                    "request line exceeds {MAX_REQUEST_BYTES} bytes"
                ))),
            ),
            Ok(Line::Text(line)) if line.trim().is_empty() => continue,
            Ok(Line::Text(line)) => {
                let (id, command) = parse_request_line(line.trim());
                let result = match command {
                    Ok(command) => dispatch(&requests, command, Source::Socket { uid }),
                    Err(error) => Err(error),
                };
                (id, result)
            }
        };
        let mut reply = reply_json(id.as_ref(), &result).to_string();
        reply.push('\n');
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Hands a command to the control thread and waits for its result.
pub fn dispatch(
    requests: &Sender<ControlRequest>,
    command: super::command::Command,
    source: Source,
) -> Result<Value, CommandError> {
    let (reply, result) = crossbeam_channel::bounded(1);
    requests
        .send(ControlRequest { command, source, reply })
        .map_err(|_| CommandError::new(ErrorKind::Unavailable, "corelb is shutting down"))?;
    result
        .recv()
        .map_err(|_| CommandError::new(ErrorKind::Unavailable, "corelb is shutting down"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lines_and_refuses_oversized_ones() {
        let mut input = b"{\"cmd\":\"status\"}\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_REQUEST_BYTES + 10));
        input.extend_from_slice(b"\nlast");
        let mut reader = BufReader::with_capacity(4096, &input[..]);
        assert!(matches!(read_line(&mut reader).unwrap(), Line::Text(text) if text == "{\"cmd\":\"status\"}"));
        assert!(matches!(read_line(&mut reader).unwrap(), Line::TooLong));
        assert!(matches!(read_line(&mut reader).unwrap(), Line::Text(text) if text == "last"));
        assert!(matches!(read_line(&mut reader).unwrap(), Line::End));
    }
}
