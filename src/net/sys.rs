//! The system calls corelb makes outside the event loop's own operations, each behind a safe function that says
//! what it does: the one place to look for `libc` and `unsafe` besides the socket code of this module (buffered
//! streams, splice, the watchdog, descriptors).

use std::io;
use std::os::fd::RawFd;

/// Waits on `fds` for at most `timeout_ms` (poll(2)); returns how many have events.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, initialised slice of `fds.len()` pollfd structures the kernel may write.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ready as usize)
}

/// The uid of the process on the other end of a Unix socket, from SO_PEERCRED.
pub fn peer_uid(fd: RawFd) -> Option<u32> {
    let mut credentials = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into `credentials`, which is a valid ucred.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut length,
        )
    };
    (result == 0).then_some(credentials.uid)
}

/// Ends both directions of a socket (shutdown(2)); on a listening socket it stops the listening at once and ends a
/// pending accept. The caller must own `fd` for the duration of the call, or another socket that reused the
/// number would be shut instead.
pub fn shutdown_both(fd: RawFd) {
    // SAFETY: shutdown touches no memory; an invalid descriptor only makes it fail.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Makes the calling thread SCHED_BATCH at nice `nice`: its wake-ups stop preempting a busy thread on its core.
pub fn run_as_batch(nice: libc::c_int) {
    let parameters = libc::sched_param { sched_priority: 0 };
    // SAFETY: both calls only change the scheduling of the calling thread (0 = this thread, gettid for nice).
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &parameters);
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice);
    }
}

/// Restores the default disposition of SIGPIPE (the process ends quietly when its output pipe closes). To be
/// called before any thread is started.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler and touches no memory.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Returns free heap pages to the kernel (glibc's malloc_trim).
pub fn trim_heap() {
    // SAFETY: malloc_trim only reorganises the allocator's free lists; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
