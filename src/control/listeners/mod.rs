//! One thread serves the control socket, the metrics listener and the admin API from a single poll(2) loop. A
//! request goes to the control thread only once it has arrived whole; until then a connection costs a descriptor and
//! a buffer, never a thread. Every connection has a deadline and every listener a cap, and a new connection at the
//! cap evicts the oldest one still sending its request, so idle or trickling clients (slowloris) can neither pile up
//! threads nor keep `ctl` and a Prometheus scrape from being answered.

use std::io::{self, Read};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::Value;

use super::admin::{self, Exchange};
use super::command::{parse_request_line, reply_json, CommandError, ErrorKind, Source};
use super::socket::{self, Line};
use super::ControlRequest;
use crate::net::descriptors::out_of_descriptors;
use connection::{Connection, Phase, Reply, CONTROL_IDLE, REQUEST_DEADLINE};
use sockets::{Acceptor, Entry, Peer, Service, Stream};

mod connection;
mod sockets;

/// Connections one listener holds at most; past it the oldest one still sending its request is closed.
pub const MAX_CONNECTIONS_PER_LISTENER: usize = 64;
/// How long a listener rests after accept fails (out of descriptors, say) before it is polled again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The listeners to serve, bound by the caller.
pub struct Listeners {
    pub control: UnixListener,
    pub metrics: Option<TcpListener>,
    /// The admin API and the token every call must carry.
    pub admin: Option<(TcpListener, Option<String>)>,
}

/// Starts the serving thread.
pub fn serve(listeners: Listeners, requests: Sender<ControlRequest>) -> io::Result<()> {
    let (wake_receiver, wake_sender) = UnixStream::pair()?;
    wake_receiver.set_nonblocking(true)?;
    wake_sender.set_nonblocking(true)?;
    let mut entries = vec![Entry::new(Service::Control, Acceptor::Unix(listeners.control))?];
    if let Some(listener) = listeners.metrics {
        entries.push(Entry::new(Service::Metrics, Acceptor::Tcp(listener))?);
    }
    if let Some((listener, token)) = listeners.admin {
        entries.push(Entry::new(Service::Admin { token }, Acceptor::Tcp(listener))?);
    }
    let mut server = Server {
        listeners: entries,
        connections: Vec::new(),
        requests,
        wake_receiver,
        wake_sender: Arc::new(wake_sender),
        last_warning: None,
        spare: spare_descriptor(),
    };
    std::thread::Builder::new()
        .name("corelb-control-io".into())
        .spawn(move || server.run())?;
    Ok(())
}

/// What the framing of the bytes received calls for.
enum Step {
    Incomplete,
    Respond {
        bytes: Vec<u8>,
        close_after: bool,
    },
    Dispatch {
        command: super::command::Command,
        source: Source,
        reply: Reply,
    },
}

struct Server {
    listeners: Vec<Entry>,
    connections: Vec<Connection>,
    requests: Sender<ControlRequest>,
    /// Readable when the control thread has answered a command from this loop.
    wake_receiver: UnixStream,
    wake_sender: Arc<UnixStream>,
    last_warning: Option<Instant>,
    /// A descriptor held in reserve: when the process is out of descriptors it is closed so that one operator
    /// connection can still be accepted (`ctl`, a scrape). It is taken back from the next connection that ends
    /// (its socket shut down, its descriptor kept), so no other thread can grab the number in between.
    spare: Option<OwnedFd>,
}

impl Server {
    fn run(&mut self) {
        loop {
            if self.spare.is_none() {
                self.spare = spare_descriptor();
            }
            let now = Instant::now();
            let mut fds = Vec::with_capacity(1 + self.listeners.len() + self.connections.len());
            fds.push(poll_entry(self.wake_receiver.as_raw_fd(), libc::POLLIN));
            for entry in &self.listeners {
                let resting = entry.resting_until.is_some_and(|until| now < until);
                // A resting listener is left out of the poll set (fd -1 is ignored), so accept errors cannot spin.
                fds.push(poll_entry(if resting { -1 } else { entry.fd() }, libc::POLLIN));
            }
            for connection in &self.connections {
                // A connection waiting for the control thread is left out: poll would report a hang-up on it
                // again and again, and the wake socket says when its answer is there.
                fds.push(match connection.phase {
                    Phase::Reading => poll_entry(connection.stream.fd(), libc::POLLIN),
                    Phase::Waiting { .. } => poll_entry(-1, 0),
                    Phase::Writing { .. } => poll_entry(connection.stream.fd(), libc::POLLOUT),
                });
            }
            let timeout = self.poll_timeout(now);
            if let Err(error) = crate::net::sys::poll(&mut fds, timeout) {
                if error.kind() != io::ErrorKind::Interrupted {
                    self.warn("control listeners: poll failed", &error);
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
                continue;
            }
            if fds[0].revents != 0 {
                let mut drain = [0u8; 256];
                while matches!((&self.wake_receiver).read(&mut drain), Ok(read) if read > 0) {}
            }
            // Connections first (their indices match `fds` only until accept or close changes the list).
            let first_connection = 1 + self.listeners.len();
            let keep: Vec<bool> = fds[first_connection..]
                .iter()
                .enumerate()
                .map(|(index, fd)| self.progress(index, fd.revents))
                .collect();
            let connections = std::mem::take(&mut self.connections);
            for (connection, keep) in connections.into_iter().zip(keep) {
                if keep {
                    self.connections.push(connection);
                } else {
                    self.retire(connection);
                }
            }
            for listener in 0..self.listeners.len() {
                if fds[1 + listener].revents != 0 {
                    self.accept_all(listener);
                }
            }
        }
    }

    /// Milliseconds until the nearest deadline or listener rest ends.
    fn poll_timeout(&self, now: Instant) -> libc::c_int {
        let nearest = self
            .connections
            .iter()
            .filter(|connection| !matches!(connection.phase, Phase::Waiting { .. }))
            .map(|connection| connection.deadline)
            .chain(self.listeners.iter().filter_map(|entry| entry.resting_until))
            .min();
        match nearest {
            None => 1000,
            Some(at) => at.saturating_duration_since(now).as_millis().clamp(1, 1000) as libc::c_int,
        }
    }

    /// Moves connection `index` on after poll said `revents`; false when it is to be closed.
    fn progress(&mut self, index: usize, revents: libc::c_short) -> bool {
        let now = Instant::now();
        let connection = &mut self.connections[index];
        match &connection.phase {
            Phase::Waiting { result, .. } => {
                let answered = match result.try_recv() {
                    Ok(answered) => answered,
                    Err(crossbeam_channel::TryRecvError::Empty) => return true,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        Err(CommandError::new(ErrorKind::Unavailable, "corelb is shutting down"))
                    }
                };
                let Phase::Waiting { reply, .. } = std::mem::replace(&mut connection.phase, Phase::Reading) else {
                    return false;
                };
                let (bytes, close_after) = match reply {
                    Reply::Line { id } => (reply_line(id.as_ref(), &answered), false),
                    Reply::Http(answer) => (admin::render(answer, &answered), true),
                };
                connection.start_writing(bytes, close_after, now);
                self.write_and_go_on(index, now)
            }
            _ if revents & (libc::POLLERR | libc::POLLNVAL) != 0 => false,
            Phase::Reading if revents & (libc::POLLIN | libc::POLLHUP) != 0 => {
                if !connection.read_some() {
                    return false;
                }
                self.frame(index, now)
            }
            Phase::Writing { .. } if revents & (libc::POLLOUT | libc::POLLHUP) != 0 => self.write_and_go_on(index, now),
            Phase::Reading | Phase::Writing { .. } => now < connection.deadline,
        }
    }

    /// Writes connection `index`'s reply; once it is out, frames the next request a control client may have sent.
    fn write_and_go_on(&mut self, index: usize, now: Instant) -> bool {
        if !self.connections[index].write_some() {
            return false;
        }
        match self.connections[index].phase {
            Phase::Reading => self.frame(index, now),
            Phase::Waiting { .. } | Phase::Writing { .. } => true,
        }
    }

    /// Frames what connection `index` has received and acts on it; false when it is to be closed.
    fn frame(&mut self, index: usize, now: Instant) -> bool {
        loop {
            let step = self.step(index);
            let connection = &mut self.connections[index];
            match step {
                Step::Incomplete => {
                    // A client that has stopped sending gets no more than the replies to what it sent.
                    connection.deadline = connection.reading_deadline(now);
                    return !connection.input_closed;
                }
                Step::Respond { bytes, close_after } => {
                    connection.start_writing(bytes, close_after, now);
                    if !connection.write_some() {
                        return false;
                    }
                    if !matches!(connection.phase, Phase::Reading) {
                        return true;
                    }
                }
                Step::Dispatch { command, source, reply } => {
                    let (sender, result) = crossbeam_channel::bounded(1);
                    let request = ControlRequest {
                        command,
                        source,
                        reply: super::ReplyTo {
                            result: sender,
                            wake: Some(Arc::clone(&self.wake_sender)),
                        },
                    };
                    if self.requests.send(request).is_err() {
                        return false;
                    }
                    connection.phase = Phase::Waiting { result, reply };
                    return true;
                }
            }
        }
    }

    /// Looks at connection `index`'s input and consumes the request it holds, if whole.
    fn step(&mut self, index: usize) -> Step {
        let connection = &mut self.connections[index];
        let peer = match &connection.peer {
            Peer::Address(address) => address.as_str(),
            Peer::Uid(_) => "",
        };
        match &self.listeners[connection.listener].service {
            Service::Control => loop {
                match socket::next_line(&connection.input, &mut connection.skipping) {
                    Line::Incomplete => return Step::Incomplete,
                    Line::Skipped { consumed } => {
                        connection.input.drain(..consumed);
                    }
                    Line::TooLong { consumed } => {
                        connection.input.drain(..consumed);
                        let error = CommandError::invalid_request(format!(
                            "request line exceeds {} bytes",
                            super::command::MAX_REQUEST_BYTES
                        ));
                        return Step::Respond {
                            bytes: reply_line(None, &Err(error)),
                            close_after: false,
                        };
                    }
                    Line::Text { text, consumed } => {
                        connection.input.drain(..consumed);
                        if text.trim().is_empty() {
                            continue;
                        }
                        let (id, command) = parse_request_line(text.trim());
                        let uid = match connection.peer {
                            Peer::Uid(uid) => uid,
                            Peer::Address(_) => None,
                        };
                        return match command {
                            Ok(command) => Step::Dispatch {
                                command,
                                source: Source::Socket { uid },
                                reply: Reply::Line { id },
                            },
                            Err(error) => Step::Respond {
                                bytes: reply_line(id.as_ref(), &Err(error)),
                                close_after: false,
                            },
                        };
                    }
                }
            },
            Service::Metrics => http_step(admin::metrics_exchange(&connection.input, peer)),
            Service::Admin { token } => http_step(admin::admin_exchange(&connection.input, peer, token.as_deref())),
        }
    }

    /// Accepts every connection waiting on listener `listener`.
    fn accept_all(&mut self, listener: usize) {
        loop {
            let accepted = match self.listeners[listener].accept() {
                Err(error) if out_of_descriptors(&error) && self.spare.is_some() => {
                    self.warn("out of descriptors; the spare one serves a control connection", &error);
                    // Freed and taken again in one handover turn, so a worker cannot take the number between.
                    let _turn = crate::net::descriptors::handover();
                    self.spare = None;
                    self.listeners[listener].accept()
                }
                accepted => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Out of descriptors (EMFILE/ENFILE) or the like: rest this listener instead of spinning.
                    self.listeners[listener].resting_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    self.warn("control listener accept failed; backing off", &error);
                    return;
                }
            };
            if stream.set_nonblocking().is_err() {
                continue;
            }
            self.make_room(listener);
            let now = Instant::now();
            let first_deadline = match self.listeners[listener].service {
                Service::Control => now + CONTROL_IDLE,
                Service::Metrics | Service::Admin { .. } => now + REQUEST_DEADLINE,
            };
            self.connections.push(Connection {
                listener,
                stream,
                peer,
                accepted: now,
                phase: Phase::Reading,
                input: Vec::new(),
                output: Vec::new(),
                written: 0,
                skipping: false,
                input_closed: false,
                deadline: first_deadline,
            });
        }
    }

    /// At the cap, closes the oldest connection on `listener` that is still sending its request.
    fn make_room(&mut self, listener: usize) {
        let held = self
            .connections
            .iter()
            .filter(|connection| connection.listener == listener)
            .count();
        if held < MAX_CONNECTIONS_PER_LISTENER {
            return;
        }
        let oldest = self
            .connections
            .iter()
            .enumerate()
            .filter(|(_, connection)| connection.listener == listener && matches!(connection.phase, Phase::Reading))
            .min_by_key(|(_, connection)| connection.accepted)
            .map(|(index, _)| index);
        if let Some(index) = oldest {
            let evicted = self.connections.swap_remove(index);
            self.retire(evicted);
        }
    }

    /// Ends a connection. Without a spare descriptor, its own becomes the spare: the socket is shut down (the
    /// client sees the close) and the descriptor kept.
    fn retire(&mut self, connection: Connection) {
        if self.spare.is_some() {
            return;
        }
        let descriptor: OwnedFd = match connection.stream {
            Stream::Unix(stream) => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                stream.into()
            }
            Stream::Tcp(stream) => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                stream.into()
            }
        };
        self.spare = Some(descriptor);
    }

    fn warn(&mut self, message: &str, error: &io::Error) {
        if self
            .last_warning
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(%error, "{message}");
            self.last_warning = Some(Instant::now());
        }
    }
}

fn http_step(exchange: Exchange) -> Step {
    match exchange {
        Exchange::Incomplete => Step::Incomplete,
        Exchange::Respond(bytes) => Step::Respond {
            bytes,
            close_after: true,
        },
        Exchange::Dispatch {
            command,
            source,
            answer,
        } => Step::Dispatch {
            command,
            source,
            reply: Reply::Http(answer),
        },
    }
}

/// One reply line of the control socket.
fn reply_line(id: Option<&Value>, result: &Result<Value, CommandError>) -> Vec<u8> {
    let mut line = reply_json(id, result).to_string();
    line.push('\n');
    line.into_bytes()
}

fn spare_descriptor() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

fn poll_entry(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}
