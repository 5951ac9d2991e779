//! The Unix control socket's protocol: one JSON object per line each way. A malformed line gets an error reply and
//! the connection stays usable; a line over 1 MiB is refused and skipped to its end. Connections are served by the
//! shared loop in [`super::listeners`]; this module binds the socket and frames lines.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use super::command::MAX_REQUEST_BYTES;

/// Binds the socket (mode 0600), removing a stale socket file left by a corelb that is gone.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
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
    Ok(listener)
}

/// The uid of the process on the other end, from SO_PEERCRED.
pub fn peer_uid(stream: &UnixStream) -> Option<u32> {
    crate::net::sys::peer_uid(stream.as_raw_fd())
}

/// What the bytes received so far hold.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// A whole line (without its newline) and how many bytes it took.
    Text { text: String, consumed: usize },
    /// A line over `MAX_REQUEST_BYTES`: `consumed` bytes of it are dropped; the rest, to its newline, will be skipped.
    TooLong { consumed: usize },
    /// `consumed` bytes of an over-long line's tail were dropped; look again at what follows.
    Skipped { consumed: usize },
    /// No newline yet.
    Incomplete,
}

/// Frames the next line of `input`. `skipping` is set while the tail of an over-long line is being discarded.
pub fn next_line(input: &[u8], skipping: &mut bool) -> Line {
    let newline = input.iter().position(|&byte| byte == b'\n');
    if *skipping {
        return match newline {
            Some(position) => {
                *skipping = false;
                Line::Skipped { consumed: position + 1 }
            }
            None if input.is_empty() => Line::Incomplete,
            None => Line::Skipped { consumed: input.len() },
        };
    }
    match newline {
        Some(position) if position <= MAX_REQUEST_BYTES => Line::Text {
            text: String::from_utf8_lossy(&input[..position]).into_owned(),
            consumed: position + 1,
        },
        Some(position) => Line::TooLong { consumed: position + 1 },
        None if input.len() > MAX_REQUEST_BYTES => {
            *skipping = true;
            Line::TooLong { consumed: input.len() }
        }
        None => Line::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames every line of `input` as the serving loop does, one step at a time.
    fn frame_all(mut input: &[u8]) -> Vec<Line> {
        let mut skipping = false;
        let mut lines = Vec::new();
        loop {
            let line = next_line(input, &mut skipping);
            let consumed = match &line {
                Line::Text { consumed, .. } | Line::TooLong { consumed } | Line::Skipped { consumed } => *consumed,
                Line::Incomplete => break,
            };
            input = &input[consumed..];
            lines.push(line);
        }
        lines
    }

    #[test]
    fn frames_lines_and_refuses_oversized_ones() {
        let mut input = b"{\"cmd\":\"status\"}\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_REQUEST_BYTES + 10));
        input.extend_from_slice(b"\nlast\npartial");
        let lines = frame_all(&input);
        assert_eq!(
            lines,
            vec![
                Line::Text {
                    text: "{\"cmd\":\"status\"}".into(),
                    consumed: 17
                },
                Line::TooLong {
                    consumed: MAX_REQUEST_BYTES + 11
                },
                Line::Text {
                    text: "last".into(),
                    consumed: 5
                },
            ]
        );
    }

    #[test]
    fn an_over_long_line_arriving_in_pieces_is_refused_once_and_skipped_to_its_end() {
        let mut skipping = false;
        let first = vec![b'x'; MAX_REQUEST_BYTES + 1];
        assert_eq!(
            next_line(&first, &mut skipping),
            Line::TooLong {
                consumed: MAX_REQUEST_BYTES + 1
            }
        );
        assert_eq!(next_line(b"yyyy", &mut skipping), Line::Skipped { consumed: 4 });
        assert_eq!(next_line(b"yy\n{}", &mut skipping), Line::Skipped { consumed: 3 });
        assert!(!skipping);
        assert_eq!(next_line(b"{}", &mut skipping), Line::Incomplete);
    }
}
