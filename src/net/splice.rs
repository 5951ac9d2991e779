//! Zero-copy body forwarding: splice(2) moves a large body socket → pipe → socket inside the kernel, so the proxy
//! neither copies it into user memory nor back out (two memory copies of every byte saved; HAProxy's
//! `option splice-response` does the same). io_uring's own splice op always runs on a kernel worker thread, so the
//! calls here are plain non-blocking syscalls, with readiness waited for through the event loop.
//!
//! A pipe holds bytes between the two calls, so each worker keeps a small pool of empty pipes.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Pipe size asked for: a 256 KiB body crosses in one round instead of four.
const PIPE_SIZE: usize = 256 * 1024;
/// A pipe smaller than this is not used: the kernel gives 8 KiB pipes to a user past `pipe-user-pages-soft`, and
/// splicing through one costs more system calls than copying.
const MIN_PIPE_SIZE: usize = 64 * 1024;
/// Empty pipes kept per worker; more are closed when given back. Each counts its full size against the user's pipe
/// page limit even when empty.
const MAX_IDLE_PIPES: usize = 16;

/// A pipe and how many bytes are in it.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    held: usize,
}

impl Pipe {
    /// A new pipe, or `None` when the kernel will not give one of at least [`MIN_PIPE_SIZE`].
    fn open() -> io::Result<Option<Pipe>> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A smaller pipe (the system's limit may be lower) still works, in more rounds.
        // SAFETY: fcntl on a descriptor we own.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        let size = if size > 0 {
            size
        } else {
            // SAFETY: as above.
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) }
        };
        let capacity = usize::try_from(size).unwrap_or(0);
        if capacity < MIN_PIPE_SIZE {
            return Ok(None);
        }
        Ok(Some(Pipe {
            read,
            write,
            capacity,
            held: 0,
        }))
    }

    /// Bytes in the pipe, not yet passed on.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Room left in the pipe.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.held)
    }

    /// Moves up to `max` bytes from the socket `source` into the pipe. `Ok(0)` means the peer closed; `WouldBlock`
    /// means nothing has arrived (or the pipe is full).
    pub fn fill_from(&mut self, source: RawFd, max: usize) -> io::Result<usize> {
        let want = max.min(self.room());
        let moved = splice(source, self.write.as_raw_fd(), want)?;
        if moved == 0 && want > 0 && !at_end_of_stream(source) {
            // TCP splice also returns 0 when urgent (out-of-band) data blocks the stream; that is not an end.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "splice stopped before the end of the stream (urgent data?)",
            ));
        }
        self.held += moved;
        Ok(moved)
    }

    /// Moves what the pipe holds into the socket `target`, as much as it takes now. `WouldBlock` means its send
    /// buffer is full.
    pub fn drain_into(&mut self, target: RawFd) -> io::Result<usize> {
        let moved = splice(self.read.as_raw_fd(), target, self.held)?;
        self.held -= moved.min(self.held);
        Ok(moved)
    }
}

/// Whether the socket has nothing more to read because the peer closed (checked without consuming anything).
fn at_end_of_stream(socket: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: one writable byte; MSG_PEEK leaves it queued and MSG_DONTWAIT returns at once.
    let peeked = unsafe {
        libc::recv(
            socket,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    peeked == 0
}

/// One non-blocking splice call, retried on EINTR. Both descriptors must be non-blocking (a blocking socket would
/// stall the whole worker), which [`crate::net::BufferedStream::prepare_splice`] sees to.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: plain descriptors and null offsets (neither end is a seekable file); no memory is passed.
        let moved = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if moved >= 0 {
            return Ok(moved as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// A worker's empty pipes. Owned by one thread.
#[derive(Debug, Default)]
pub struct PipePool {
    idle: RefCell<Vec<Pipe>>,
    /// Bytes spliced by this worker so far (`corelb_spliced_bytes_total`).
    spliced: Cell<u64>,
}

impl PipePool {
    /// An empty pipe, or `None` when none can be had (out of descriptors, or past the pipe page limit): the
    /// caller copies instead.
    pub fn take(&self) -> Option<Pipe> {
        if let Some(pipe) = self.idle.borrow_mut().pop() {
            return Some(pipe);
        }
        match Pipe::open() {
            Ok(pipe) => pipe,
            Err(error) => {
                tracing::debug!(%error, "no pipe for splicing; copying the body instead");
                None
            }
        }
    }

    /// Keeps an empty pipe for the next body; one still holding bytes (an interrupted transfer) is closed.
    pub fn give_back(&self, pipe: Pipe) {
        let mut idle = self.idle.borrow_mut();
        if pipe.held == 0 && idle.len() < MAX_IDLE_PIPES {
            idle.push(pipe);
        }
    }

    /// Counts bytes passed on through one of this pool's pipes.
    pub fn count_spliced(&self, bytes: usize) {
        self.spliced.set(self.spliced.get() + bytes as u64);
    }

    /// Bytes spliced through this pool's pipes so far.
    pub fn spliced_bytes(&self) -> u64 {
        self.spliced.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn connected_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.set_nonblocking(true).unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server)
    }

    #[test]
    fn bytes_cross_from_socket_to_socket_through_the_pipe() {
        let (mut origin, source) = connected_pair();
        let (target, mut receiver) = connected_pair();
        let mut pipe = Pipe::open().unwrap().expect("a pipe of at least 64 KiB");
        assert!(pipe.room() >= 64 * 1024);

        let empty = pipe.fill_from(source.as_raw_fd(), 1024).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock, "nothing has arrived yet");

        origin.write_all(b"hello, splice").unwrap();
        let mut moved = 0;
        for _ in 0..100 {
            match pipe.fill_from(source.as_raw_fd(), 1024) {
                Ok(count) => {
                    moved = count;
                    break;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(error) => panic!("{error}"),
            }
        }
        assert_eq!(moved, 13);
        assert_eq!(pipe.held(), 13);
        assert_eq!(pipe.drain_into(target.as_raw_fd()).unwrap(), 13);
        assert_eq!(pipe.held(), 0);

        receiver.set_nonblocking(false).unwrap();
        let mut received = [0u8; 13];
        receiver.read_exact(&mut received).unwrap();
        assert_eq!(&received, b"hello, splice");

        drop(origin);
        let mut closed = None;
        for _ in 0..100 {
            match pipe.fill_from(source.as_raw_fd(), 1024) {
                Ok(count) => {
                    closed = Some(count);
                    break;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(error) => panic!("{error}"),
            }
        }
        assert_eq!(closed, Some(0), "the peer's close reads as 0");
    }

    #[test]
    fn only_empty_pipes_are_kept() {
        let pool = PipePool::default();
        let first = pool.take().unwrap();
        let mut second = pool.take().unwrap();
        second.held = 1;
        pool.give_back(first);
        pool.give_back(second);
        assert_eq!(pool.idle.borrow().len(), 1, "the pipe still holding a byte was closed");
    }
}
