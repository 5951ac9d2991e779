//! One operator connection: its phase (reading a request, waiting for the control thread, writing a reply), its
//! buffers, and the deadline of each phase.

use std::io;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde_json::Value;

use super::super::admin::Answer;
use super::super::command::CommandError;
use super::sockets::{Peer, Stream};

/// Time an HTTP client has to send its whole request, and a control client to finish a line it has begun.
pub(super) const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Time a control-socket connection may sit idle between requests.
pub(super) const CONTROL_IDLE: Duration = Duration::from_secs(60);
/// Time a client has to take its reply.
pub(super) const WRITE_DEADLINE: Duration = Duration::from_secs(10);
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// Where one connection is in its exchange.
pub(super) enum Phase {
    /// Receiving a request.
    Reading,
    /// The control thread has the command; its result will come on this channel.
    Waiting {
        result: Receiver<Result<Value, CommandError>>,
        reply: Reply,
    },
    /// Sending `output[written..]`; then read the next request or close.
    Writing { close_after: bool },
}

/// How a result is rendered for the client that asked.
pub(super) enum Reply {
    /// A control-socket line, echoing the request's id.
    Line {
        id: Option<Value>,
    },
    Http(Answer),
}

pub(super) struct Connection {
    pub(super) listener: usize,
    pub(super) stream: Stream,
    pub(super) peer: Peer,
    pub(super) accepted: Instant,
    pub(super) phase: Phase,
    pub(super) input: Vec<u8>,
    pub(super) output: Vec<u8>,
    pub(super) written: usize,
    /// Skipping the tail of an over-long control line.
    pub(super) skipping: bool,
    /// The client has finished sending (EOF or a half-close).
    pub(super) input_closed: bool,
    /// When the phase must have ended.
    pub(super) deadline: Instant,
}

impl Connection {
    /// Reads what is there; false on an error. End of input is noted in `input_closed`: what came before it is
    /// still answered.
    pub(super) fn read_some(&mut self) -> bool {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.input_closed = true;
                    return true;
                }
                Ok(read) => {
                    self.input.extend_from_slice(&chunk[..read]);
                    if read < chunk.len() {
                        return true;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }

    pub(super) fn start_writing(&mut self, bytes: Vec<u8>, close_after: bool, now: Instant) {
        self.output = bytes;
        self.written = 0;
        self.phase = Phase::Writing { close_after };
        self.deadline = now + WRITE_DEADLINE;
    }

    /// Writes what the socket takes; false when the connection is done or broken.
    pub(super) fn write_some(&mut self) -> bool {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return false,
                Ok(written) => self.written += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        let Phase::Writing { close_after } = self.phase else {
            return true;
        };
        if close_after {
            return false;
        }
        self.output = Vec::new();
        self.phase = Phase::Reading;
        self.deadline = self.reading_deadline(Instant::now());
        true
    }

    /// An idle control connection may wait for its next request; a begun one must finish it.
    pub(super) fn reading_deadline(&self, now: Instant) -> Instant {
        match (&self.peer, self.input.is_empty() && !self.skipping) {
            (Peer::Uid(_), true) => now + CONTROL_IDLE,
            // HTTP requests have one deadline from accept; a begun control line keeps the one it was given.
            (Peer::Address(_), _) => self.accepted + REQUEST_DEADLINE,
            (Peer::Uid(_), false) if self.deadline > now + REQUEST_DEADLINE => now + REQUEST_DEADLINE,
            (Peer::Uid(_), false) => self.deadline,
        }
    }
}
