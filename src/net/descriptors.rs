//! The descriptor budget. Every client connection, upstream connection, listener and log file is a descriptor, and
//! running out mid-request turns into failures nobody caused (a backend blamed, `ctl` locked out). So corelb raises
//! its soft `RLIMIT_NOFILE` to the hard limit at start and splits what it has once: a reserve for its own
//! descriptors, client connections, and upstream connections, each worker getting its share.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// How the descriptors of the process are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// The soft `RLIMIT_NOFILE` in force.
    pub limit: usize,
    /// Kept for listeners, rings, wake sockets, log files and the control plane's connections.
    pub reserve: usize,
    /// Client connections the process holds at most.
    pub clients: usize,
    /// Upstream connections (in use and idle) the process holds at most.
    pub upstream: usize,
}

impl DescriptorBudget {
    /// Shares out `limit` descriptors. Without a configured `max_connections`, clients get two thirds of what the
    /// reserve leaves and upstream connections the rest: a request holds an upstream connection only while it is in
    /// flight, while a client connection is held between requests too, so fewer upstream descriptors serve as many
    /// clients (and when they are all in use a request waits for one rather than failing).
    pub fn plan(limit: usize, max_connections: Option<usize>) -> DescriptorBudget {
        let reserve = (limit / 16).clamp(64, 512).min(limit / 2);
        let available = limit - reserve;
        let clients = max_connections.unwrap_or(available * 2 / 3).max(1);
        // A configured client count the limit cannot honour still leaves upstream connections an eighth.
        let upstream = available.saturating_sub(clients).max(available / 8).max(1);
        DescriptorBudget {
            limit,
            reserve,
            clients,
            upstream,
        }
    }

    /// Whether the plan fits the limit (a configured `max_connections` may not).
    pub fn fits(&self) -> bool {
        self.reserve + self.clients + self.upstream <= self.limit
    }

    /// One worker's share of `total`, out of `workers`: rounded up, so the workers together may hold a few more
    /// than `total` but no worker is starved by rounding.
    pub fn share(total: usize, workers: usize) -> usize {
        total.div_ceil(workers.max(1))
    }
}

/// Raises the soft descriptor limit to the hard one and returns the limit now in force.
pub fn raise_nofile_limit() -> io::Result<usize> {
    let mut limits = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid `limits`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limits) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limits.rlim_cur < limits.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limits.rlim_max,
            rlim_max: limits.rlim_max,
        };
        // SAFETY: setrlimit reads one valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limits.rlim_cur = limits.rlim_max;
        }
    }
    // RLIM_INFINITY is not a descriptor count; the kernel caps open files at nr_open (1,048,576 by default) anyway.
    Ok(usize::try_from(limits.rlim_cur).unwrap_or(usize::MAX).min(1 << 20))
}

/// Held across the moment the control plane frees its spare descriptor and accepts an operator's connection in
/// its place, and across a worker's retry of accept after running out. Without it a worker retrying in that moment
/// takes the freed number for a client, and `ctl` waits until some connection closes (a CI run waited 60 s, the
/// clients' idle timeout). Only taken while the process is out of descriptors, never on the request path.
static HANDOVER: Mutex<()> = Mutex::new(());

/// The handover turn (see [`HANDOVER`]).
pub fn handover() -> MutexGuard<'static, ()> {
    HANDOVER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A worker's retry of accept after running out of descriptors, in its handover turn: one non-blocking
/// accept4(2) when a client is waiting on `listener`, `Ok(None)` when none is. Only the worker that owns the
/// (SO_REUSEPORT) listener accepts from it, and its own accept is not pending meanwhile, so the check before the
/// accept cannot be overtaken.
pub fn accept_after_running_out(listener: &impl AsRawFd) -> io::Result<Option<(std::net::TcpStream, SocketAddr)>> {
    let fd = listener.as_raw_fd();
    let mut waiting = [libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    if super::sys::poll(&mut waiting, 0)? == 0 {
        return Ok(None);
    }
    let _turn = handover();
    // SAFETY: accept4 with null address pointers takes one connection off `fd`'s queue and returns its new
    // descriptor, or -1.
    let accepted = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if accepted < 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(error),
        };
    }
    // SAFETY: `accepted` is a new descriptor that nothing else owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(accepted) };
    let peer = stream.peer_addr()?;
    Ok(Some((stream, peer)))
}

/// Whether an error says the process or the system is out of descriptors.
pub fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plan_fits_the_limit_and_leaves_a_reserve() {
        for limit in [64, 256, 1024, 20_000, 1 << 20] {
            let budget = DescriptorBudget::plan(limit, None);
            assert!(budget.fits(), "{budget:?}");
            assert!(budget.reserve >= 32 && budget.reserve <= 512, "{budget:?}");
            assert!(budget.reserve >= 64 || budget.reserve == limit / 2, "{budget:?}");
            assert!(budget.clients > budget.upstream, "{budget:?}");
        }
        let budget = DescriptorBudget::plan(20_000, None);
        assert_eq!(budget.reserve, 512);
        // wrk -c10000 fits beside its upstream connections.
        assert_eq!(budget.clients, 12_992);
        assert_eq!(budget.upstream, 6_496);
    }

    #[test]
    fn a_configured_count_is_kept_and_told_apart_when_it_cannot_fit() {
        let budget = DescriptorBudget::plan(20_000, Some(5_000));
        assert_eq!(budget.clients, 5_000);
        assert_eq!(budget.upstream, 14_488);
        assert!(budget.fits());
        let over = DescriptorBudget::plan(256, Some(1_000));
        assert_eq!(over.clients, 1_000);
        assert_eq!(over.upstream, 24);
        assert!(!over.fits());
    }

    #[test]
    fn shares_round_up() {
        assert_eq!(DescriptorBudget::share(10, 3), 4);
        assert_eq!(DescriptorBudget::share(9, 3), 3);
        assert_eq!(DescriptorBudget::share(5, 0), 5);
    }
}
