//! Streaming a message body from one connection to another without holding the whole body: Content-Length bodies
//! are forwarded straight out of the read buffer, chunked bodies are decoded and re-encoded, and bodies that end at
//! connection close are forwarded until EOF. Bytes to send first (a head) go out in the same write as the first body
//! bytes, so a small response is one `write`. What is left of a large unencoded body after that first write is
//! spliced (socket → pipe → socket in the kernel) instead of copied through user memory.

use std::io;
use std::time::{Duration, Instant};

use crate::http::chunked::{write_chunk, LAST_CHUNK};
use crate::http::{BodyFraming, ChunkedDecoder, ChunkedError};
use crate::net::{BufferedStream, PendingInput, Pipe, PipePool, Readable};

/// A body with at least this much left after the head's write is spliced rather than copied: below it, the copy
/// costs less than the extra system calls.
const SPLICE_MIN_BODY: u64 = 16 * 1024;
/// A splice whose two sides stay ready never waits; after this many bytes it waits once on the event loop anyway,
/// so that the worker's other connections and its watchdog get their turn.
const SPLICE_FAIR_SHARE: u64 = 1024 * 1024;

/// How body bytes are written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As they are (Content-Length, or until close).
    Identity,
    Chunked,
}

/// Which body a copy moves, which decides what it watches and what bounds it.
///
/// A request body is bounded in size and time ([`BodyBudget`]), and its copy watches the destination: a backend may
/// send its final response before it has read the whole body (an early 401 or 413, RFC 9112 §9.3), and then the
/// copy stops at once instead of pushing the rest into a connection whose exchange is over. A response body is
/// bounded only by the per-read timeouts.
#[derive(Debug, Clone, Copy)]
pub enum BodyRole {
    Request(BodyBudget),
    Response,
}

/// What a request body may cost.
#[derive(Debug, Clone, Copy)]
pub struct BodyBudget {
    /// Most decoded bytes (a chunked body; a Content-Length is checked before any backend is chosen).
    pub max_bytes: u64,
    /// When the body started to arrive.
    pub started: Instant,
    /// Time the body gets before it must keep up `min_rate`.
    pub grace: Duration,
    /// Bytes a second, on average over the whole body, once `grace` has passed.
    pub min_rate: u64,
}

impl BodyBudget {
    /// The wait allowed for more bytes after `received`: at most `idle`, and never past the body's deadline
    /// (`started + grace + received / min_rate`). `Err(TooSlow)` once the deadline has passed; the flag says the
    /// deadline, not `idle`, bounds the wait.
    fn next_wait(&self, received: u64, idle: Duration, now: Instant) -> Result<(Duration, bool), BodyError> {
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate.max(1) as f64);
        let deadline = self.started + self.grace + earned;
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            Err(BodyError::TooSlow)
        } else if left < idle {
            Ok((left, true))
        } else {
            Ok((idle, false))
        }
    }
}

/// Why a body could not be copied; the caller knows which side each direction is.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading body failed: {0}")]
    Read(io::Error),
    #[error("connection closed before the body ended")]
    ReadEof,
    #[error("writing body failed: {0}")]
    Write(io::Error),
    #[error("malformed chunked body: {0}")]
    Malformed(ChunkedError),
    /// The body grew past its budget's `max_bytes`.
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    /// The body arrived slower than its budget allows.
    #[error("body arrived too slowly")]
    TooSlow,
    /// The destination answered (or closed) before the body was complete, after this many body bytes were read
    /// from the source.
    #[error("the peer answered after {0} body bytes, before the body was complete")]
    Answered(u64),
}

/// Timeouts for the two sides of one copy.
#[derive(Debug, Clone, Copy)]
pub struct CopyTimeouts {
    pub read: Duration,
    pub write: Duration,
}

async fn flush(dst: &mut BufferedStream, pending: &mut Vec<u8>, timeout: Duration) -> Result<(), BodyError> {
    if pending.is_empty() {
        return Ok(());
    }
    let (result, mut buf) = dst.write_all(std::mem::take(pending), timeout).await;
    buf.clear();
    *pending = buf;
    result.map_err(BodyError::Write)
}

async fn fill(src: &mut BufferedStream, timeout: Duration) -> Result<usize, BodyError> {
    src.fill(timeout).await.map_err(BodyError::Read)
}

fn encode(pending: &mut Vec<u8>, data: &[u8], encoding: Encoding) {
    match encoding {
        Encoding::Identity => pending.extend_from_slice(data),
        Encoding::Chunked => write_chunk(pending, data),
    }
}

/// Copies one body framed as `input` from `src` to `dst`, preceded by `pending` (left empty and reusable). With
/// `pipes`, a large unencoded body is spliced. A request body ([`BodyRole::Request`]) stops with
/// [`BodyError::Answered`] once `dst` has something to read, and keeps to its budget. Returns the number of body
/// bytes delivered.
#[allow(clippy::too_many_arguments)]
pub async fn copy_body(
    src: &mut BufferedStream,
    dst: &mut BufferedStream,
    input: BodyFraming,
    output: Encoding,
    pending: &mut Vec<u8>,
    timeouts: CopyTimeouts,
    pipes: Option<&PipePool>,
    role: BodyRole,
) -> Result<u64, BodyError> {
    match input {
        BodyFraming::None | BodyFraming::Length(0) => {
            flush(dst, pending, timeouts.write).await?;
            Ok(0)
        }
        BodyFraming::Length(length) => copy_length(src, dst, length, pending, timeouts, pipes, role).await,
        BodyFraming::Chunked => copy_chunked(src, dst, output, pending, timeouts, role).await,
        BodyFraming::UntilClose => copy_until_close(src, dst, output, pending, timeouts, pipes).await,
    }
}

/// For a request body: fails with [`BodyError::Answered`] when `dst` has already answered, without waiting.
fn check_answered(dst: &BufferedStream, role: BodyRole, delivered: u64) -> Result<(), BodyError> {
    match role {
        BodyRole::Request(_) if dst.pending_input() != PendingInput::Nothing => Err(BodyError::Answered(delivered)),
        BodyRole::Request(_) | BodyRole::Response => Ok(()),
    }
}

/// Reads more body bytes into `src`, after `delivered`. For a request body, the wait ends early with
/// [`BodyError::Answered`] when `dst` answers first, and with [`BodyError::TooSlow`] at the body's deadline.
/// Returns how many bytes arrived (0: `src` closed).
async fn fill_body(
    src: &mut BufferedStream,
    dst: &BufferedStream,
    role: BodyRole,
    delivered: u64,
    timeout: Duration,
) -> Result<usize, BodyError> {
    let BodyRole::Request(budget) = role else {
        return fill(src, timeout).await;
    };
    check_answered(dst, role, delivered)?;
    let (wait, at_deadline) = budget.next_wait(delivered, timeout, Instant::now())?;
    let slow = |error: io::Error| match error.kind() {
        io::ErrorKind::TimedOut if at_deadline => BodyError::TooSlow,
        _ => BodyError::Read(error),
    };
    match src.wait_readable_unless(dst, wait).await.map_err(slow)? {
        Readable::This => {}
        Readable::Other => return Err(BodyError::Answered(delivered)),
    }
    src.fill(wait).await.map_err(slow)
}

async fn copy_length(
    src: &mut BufferedStream,
    dst: &mut BufferedStream,
    length: u64,
    pending: &mut Vec<u8>,
    timeouts: CopyTimeouts,
    pipes: Option<&PipePool>,
    role: BodyRole,
) -> Result<u64, BodyError> {
    let mut remaining = length;
    // The first body bytes ride along with the pending head.
    let take = (src.buffered().len() as u64).min(remaining) as usize;
    pending.extend_from_slice(&src.buffered()[..take]);
    src.consume(take);
    remaining -= take as u64;
    flush(dst, pending, timeouts.write).await?;
    // Nothing is buffered now unless the body is already complete.
    if remaining >= SPLICE_MIN_BODY {
        let sent = length - remaining;
        if let Some(spliced) = try_splice(src, dst, pipes, Some(remaining), timeouts, role).await {
            return spliced.map(|_| length).map_err(|error| match error {
                BodyError::Answered(moved) => BodyError::Answered(sent + moved),
                other => other,
            });
        }
    }
    if remaining > 0 {
        src.reserve_for_body();
    }
    while remaining > 0 {
        if src.buffered().is_empty() {
            // The wait for more bytes watches for an answer itself.
            if fill_body(src, dst, role, length - remaining, timeouts.read).await? == 0 {
                return Err(BodyError::ReadEof);
            }
        } else {
            check_answered(dst, role, length - remaining)?;
        }
        let take = (src.buffered().len() as u64).min(remaining) as usize;
        src.forward_buffered(dst, take, timeouts.write)
            .await
            .map_err(BodyError::Write)?;
        remaining -= take as u64;
    }
    Ok(length)
}

async fn copy_chunked(
    src: &mut BufferedStream,
    dst: &mut BufferedStream,
    output: Encoding,
    pending: &mut Vec<u8>,
    timeouts: CopyTimeouts,
    role: BodyRole,
) -> Result<u64, BodyError> {
    let max_bytes = match role {
        BodyRole::Request(budget) => budget.max_bytes,
        BodyRole::Response => u64::MAX,
    };
    let mut decoder = ChunkedDecoder::new();
    let mut delivered = 0u64;
    loop {
        if !src.buffered().is_empty() {
            let used = decoder
                .decode(src.buffered(), |data| {
                    delivered += data.len() as u64;
                    encode(pending, data, output);
                })
                .map_err(BodyError::Malformed)?;
            src.consume(used);
            if delivered > max_bytes {
                return Err(BodyError::TooLarge(max_bytes));
            }
            if decoder.is_done() {
                if output == Encoding::Chunked {
                    pending.extend_from_slice(LAST_CHUNK);
                }
                flush(dst, pending, timeouts.write).await?;
                return Ok(delivered);
            }
        }
        flush(dst, pending, timeouts.write).await?;
        src.reserve_for_body();
        if fill_body(src, dst, role, delivered, timeouts.read).await? == 0 {
            return Err(BodyError::ReadEof);
        }
    }
}

async fn copy_until_close(
    src: &mut BufferedStream,
    dst: &mut BufferedStream,
    output: Encoding,
    pending: &mut Vec<u8>,
    timeouts: CopyTimeouts,
    pipes: Option<&PipePool>,
) -> Result<u64, BodyError> {
    let mut delivered = 0u64;
    src.reserve_for_body();
    loop {
        let available = src.buffered().len();
        if available > 0 {
            encode(pending, src.buffered(), output);
            src.consume(available);
            delivered += available as u64;
        }
        flush(dst, pending, timeouts.write).await?;
        if output == Encoding::Identity {
            // Nothing is buffered: the rest can go through a pipe.
            if let Some(spliced) = try_splice(src, dst, pipes, None, timeouts, BodyRole::Response).await {
                return spliced.map(|count| delivered + count);
            }
        }
        if fill(src, timeouts.read).await? == 0 {
            break;
        }
    }
    if output == Encoding::Chunked {
        pending.extend_from_slice(LAST_CHUNK);
        flush(dst, pending, timeouts.write).await?;
    }
    Ok(delivered)
}

/// Splices the rest of a body (see [`splice_body`]) when splicing is on, both sides are plain TCP and a pipe is to
/// be had; `None` means the caller copies instead.
async fn try_splice(
    src: &mut BufferedStream,
    dst: &mut BufferedStream,
    pipes: Option<&PipePool>,
    limit: Option<u64>,
    timeouts: CopyTimeouts,
    role: BodyRole,
) -> Option<Result<u64, BodyError>> {
    let pool = pipes?;
    if !src.spliceable() || !dst.spliceable() {
        return None;
    }
    let mut pipe = pool.take()?;
    let spliced = splice_body(src, dst, &mut pipe, pool, limit, timeouts, role).await;
    pool.give_back(pipe);
    Some(spliced)
}

/// Moves the rest of a body, `limit` bytes or (`None`) everything until `src` closes, from `src` to `dst` through
/// `pipe`, counting them in `pool`. Nothing may be buffered in `src`. Returns the bytes moved; with
/// a request body, stops with [`BodyError::Answered`] once `dst` answers, and keeps to the body's deadline.
async fn splice_body(
    src: &mut BufferedStream,
    dst: &mut BufferedStream,
    pipe: &mut Pipe,
    pool: &PipePool,
    limit: Option<u64>,
    timeouts: CopyTimeouts,
    role: BodyRole,
) -> Result<u64, BodyError> {
    let source = src.prepare_splice().map_err(BodyError::Read)?;
    let target = dst.prepare_splice().map_err(BodyError::Write)?;
    let mut moved = 0u64;
    let mut next_turn = SPLICE_FAIR_SHARE;
    let mut source_done = limit == Some(0);
    loop {
        check_answered(dst, role, moved)?;
        let mut progress = false;
        if !source_done && pipe.room() > 0 {
            let want = limit.map_or(usize::MAX, |limit| usize::try_from(limit - moved).unwrap_or(usize::MAX));
            match pipe.fill_from(source, want) {
                Ok(0) if limit.is_some() => return Err(BodyError::ReadEof),
                Ok(0) => source_done = true,
                Ok(count) => {
                    moved += count as u64;
                    source_done = limit == Some(moved);
                    progress = true;
                }
                // Nothing arrived yet, or the pipe is full.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(BodyError::Read(error)),
            }
        }
        if pipe.held() > 0 {
            match pipe.drain_into(target) {
                Ok(count) => {
                    pool.count_spliced(count);
                    progress |= count > 0;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(BodyError::Write(error)),
            }
        }
        if source_done && pipe.held() == 0 {
            return Ok(moved);
        }
        if progress {
            if moved >= next_turn {
                next_turn = moved + SPLICE_FAIR_SHARE;
                // A readiness wait goes through the ring, so other tasks run before this one resumes.
                dst.wait_writable(timeouts.write).await.map_err(BodyError::Write)?;
            }
            continue;
        }
        // Neither side moved: wait for the one holding things up.
        if pipe.held() == 0 {
            match role {
                BodyRole::Request(budget) => {
                    let (wait, at_deadline) = budget.next_wait(moved, timeouts.read, Instant::now())?;
                    match src.wait_readable_unless(dst, wait).await {
                        Ok(Readable::This) => {}
                        Ok(Readable::Other) => return Err(BodyError::Answered(moved)),
                        Err(error) if at_deadline && error.kind() == io::ErrorKind::TimedOut => {
                            return Err(BodyError::TooSlow)
                        }
                        Err(error) => return Err(BodyError::Read(error)),
                    }
                }
                BodyRole::Response => src.wait_readable(timeouts.read).await.map_err(BodyError::Read)?,
            }
        } else {
            dst.wait_writable(timeouts.write).await.map_err(BodyError::Write)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(started: Instant) -> BodyBudget {
        BodyBudget {
            max_bytes: 1 << 20,
            started,
            grace: Duration::from_secs(10),
            min_rate: 1000,
        }
    }

    #[test]
    fn a_body_gets_its_grace_then_must_keep_up_the_rate() {
        let start = Instant::now();
        let idle = Duration::from_secs(60);
        let budget = budget(start);
        let (wait, at_deadline) = budget.next_wait(0, idle, start).unwrap();
        assert_eq!((wait, at_deadline), (Duration::from_secs(10), true));
        // 15 bytes earn 15 ms: a trickle is cut soon after the grace.
        let late = start + Duration::from_secs(9);
        let (wait, _) = budget.next_wait(15, idle, late).unwrap();
        assert_eq!(wait, Duration::from_millis(1015));
        assert!(matches!(
            budget.next_wait(15, idle, start + Duration::from_secs(11)),
            Err(BodyError::TooSlow)
        ));
    }

    #[test]
    fn a_body_that_keeps_up_is_bound_only_by_the_idle_timeout() {
        let start = Instant::now();
        let idle = Duration::from_secs(5);
        // A megabyte in 20 s is 50 KB/s: far ahead of 1 KB/s.
        let (wait, at_deadline) = budget(start)
            .next_wait(1_000_000, idle, start + Duration::from_secs(20))
            .unwrap();
        assert_eq!((wait, at_deadline), (idle, false));
    }
}
