//! Workers: one thread per core, each running its own monoio event loop with its own listeners, backend view,
//! connection pools and counters. A worker hears from the control thread only through its inbox.

mod memory;
pub mod messages;

use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use monoio::io::{AsyncReadRent, Canceller};
use monoio::net::{TcpListener, UnixStream};

use crate::metrics::WorkerMetrics;
use crate::net::descriptors::{self, out_of_descriptors};
use crate::net::listener::bind_reuseport;
use crate::proxy::{serve_client, serve_tls_client};
use crate::shard::tls::Accept;
pub use crate::shard::{BackendReport, Snapshot, WorkerLimits};
use crate::shard::{BreakerNews, Generation, Outboxes, OutcomeReport, Place, WorkerContext};
pub use messages::{Driver, FromWorker, ToWorker, WorkerReport};

/// io_uring submission queue size per worker.
const RING_ENTRIES: u32 = 4096;
/// Accepting rests this long after a failed accept, doubling up to `ACCEPT_BACKOFF_MAX`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// Out of descriptors, accepting waits for one of the worker's connections to close, or this long.
const OUT_OF_DESCRIPTORS_WAIT: Duration = Duration::from_secs(1);
/// How often idle upstream connections past their idle timeout are closed.
const POOL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The control thread's end of one worker.
pub struct WorkerHandle {
    pub index: usize,
    inbox: Sender<ToWorker>,
    /// One byte written here wakes the worker's inbox task.
    waker: StdUnixStream,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// A handle to no thread, for tests that play the worker: what is sent arrives on the returned receiver, and
    /// the returned socket is the worker's end of the wake-up pair (keep it open).
    pub fn detached(index: usize) -> std::io::Result<(WorkerHandle, Receiver<ToWorker>, StdUnixStream)> {
        let (inbox, received) = crossbeam_channel::unbounded();
        let (waker, wake_end) = StdUnixStream::pair()?;
        waker.set_nonblocking(true)?;
        let handle = WorkerHandle {
            index,
            inbox,
            waker,
            thread: None,
        };
        Ok((handle, received, wake_end))
    }

    /// Queues a message and wakes the worker. Fails only when the worker has exited.
    pub fn send(&mut self, message: ToWorker) -> Result<(), String> {
        use std::io::Write;
        self.inbox
            .send(message)
            .map_err(|_| format!("worker {} has exited", self.index))?;
        // A full socket buffer means wake-ups are already pending; that is fine.
        match self.waker.write(&[1]) {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(format!("worker {} cannot be woken: {error}", self.index)),
        }
    }

    /// Its inbox is gone: the worker thread has ended.
    pub fn has_exited(&self) -> bool {
        self.thread.as_ref().is_some_and(JoinHandle::is_finished)
    }

    pub fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How to start one worker.
pub struct WorkerSpec {
    pub index: usize,
    pub driver: Driver,
    pub core: Option<core_affinity::CoreId>,
    pub snapshot: std::sync::Arc<Snapshot>,
    pub events: Sender<FromWorker>,
    pub access_log: Sender<crate::access_log::LogMessage>,
    /// Where this worker's circuit-breaker changes go (the control thread).
    pub breaker_news: Sender<BreakerNews>,
    /// Where this worker's counts for passive outlier detection go (the control thread).
    pub outcome_reports: Sender<OutcomeReport>,
    pub process_seed: u64,
    /// Total workers in the process.
    pub workers: usize,
    /// This worker's share of the descriptor budget.
    pub limits: WorkerLimits,
}

/// Starts a worker thread. It reports `Ready` or `StartFailed` on `events`.
pub fn spawn(spec: WorkerSpec) -> std::io::Result<WorkerHandle> {
    let (inbox_sender, inbox) = crossbeam_channel::unbounded();
    let (waker, wake_end) = StdUnixStream::pair()?;
    waker.set_nonblocking(true)?;
    wake_end.set_nonblocking(true)?;
    let index = spec.index;
    let thread = std::thread::Builder::new()
        .name(format!("corelb-worker-{index}"))
        .spawn(move || run_thread(spec, inbox, wake_end))?;
    Ok(WorkerHandle {
        index,
        inbox: inbox_sender,
        waker,
        thread: Some(thread),
    })
}

fn run_thread(spec: WorkerSpec, inbox: Receiver<ToWorker>, wake_end: StdUnixStream) {
    if let Some(core) = spec.core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(worker = spec.index, core = core.id, "could not pin worker to its core");
        }
    }
    let events = spec.events.clone();
    let index = spec.index;
    let _stopped = StoppedGuard {
        worker: index,
        events: spec.events.clone(),
    };
    let result = match spec.driver {
        Driver::IoUring => match uring_runtime(true).or_else(|error| {
            // Kernels before 6.1 refuse DEFER_TASKRUN: such a ring still beats epoll.
            tracing::debug!(worker = index, error = %error, "io_uring set-up flags refused; using a plain ring");
            uring_runtime(false)
        }) {
            Ok(mut runtime) => {
                runtime.block_on(worker_main(spec, Driver::IoUring, inbox, wake_end));
                Ok(())
            }
            Err(error) => {
                // io_uring refused on this thread (memlock limit, seccomp): fall back rather than fail.
                tracing::warn!(worker = index, error = %error, "io_uring unavailable; this worker uses epoll");
                run_epoll(spec, inbox, wake_end)
            }
        },
        Driver::Epoll => run_epoll(spec, inbox, wake_end),
    };
    if let Err(error) = result {
        let _ = events.send(FromWorker::StartFailed {
            worker: index,
            error: format!("cannot start event loop: {error}"),
        });
    }
}

/// A worker's io_uring runtime. `tuned`: the ring is only ever used by its worker thread (SINGLE_ISSUER), and
/// completions are processed only when the worker asks for them in `io_uring_enter` (DEFER_TASKRUN) instead of
/// interrupting it whenever a socket becomes ready; measured at 15 % less CPU per proxied request.
fn uring_runtime(tuned: bool) -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let mut setup = io_uring::IoUring::builder();
    if tuned {
        setup.setup_single_issuer().setup_defer_taskrun();
    }
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(RING_ENTRIES)
        .uring_builder(setup)
        .enable_timer()
        .build()
}

fn run_epoll(spec: WorkerSpec, inbox: Receiver<ToWorker>, wake_end: StdUnixStream) -> std::io::Result<()> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    runtime.block_on(worker_main(spec, Driver::Epoll, inbox, wake_end));
    Ok(())
}

async fn worker_main(spec: WorkerSpec, driver: Driver, inbox: Receiver<ToWorker>, wake_end: StdUnixStream) {
    let index = spec.index;
    let mut listeners = Vec::new();
    for (frontend, &address) in spec.snapshot.config.frontends.iter().zip(&spec.snapshot.frontend_addrs) {
        match bind_reuseport(address) {
            Ok(listener) => listeners.push(listener),
            Err(error) => {
                let _ = spec.events.send(FromWorker::StartFailed {
                    worker: index,
                    error: format!("frontend {:?} cannot listen on {address}: {error}", frontend.name),
                });
                return;
            }
        }
    }
    let wake = match UnixStream::from_std(wake_end) {
        Ok(wake) => wake,
        Err(error) => {
            let _ = spec.events.send(FromWorker::StartFailed {
                worker: index,
                error: format!("cannot watch the control inbox: {error}"),
            });
            return;
        }
    };

    let frontend_names: Vec<String> = spec
        .snapshot
        .config
        .frontends
        .iter()
        .map(|frontend| frontend.name.clone())
        .collect();
    let mut metrics = WorkerMetrics::new(index, &frontend_names);
    let generation = Generation::build(
        &spec.snapshot,
        None,
        Place {
            index,
            workers: spec.workers,
        },
        &mut metrics,
    );
    let context = Rc::new(WorkerContext::new(
        index,
        generation,
        metrics,
        Outboxes {
            access_log: spec.access_log.clone(),
            breaker_news: spec.breaker_news.clone(),
            outcome_reports: spec.outcome_reports.clone(),
        },
        spec.process_seed,
        spec.workers,
        spec.limits,
    ));
    let accept_canceller = Canceller::new();
    let listener_fds: Vec<std::os::fd::RawFd> = listeners.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    for (frontend, listener) in listeners.into_iter().enumerate() {
        monoio::spawn(accept_loop(
            Rc::clone(&context),
            listener,
            frontend,
            accept_canceller.handle(),
        ));
    }
    monoio::spawn(Rc::clone(&context.watchdog).run());
    monoio::spawn(sweep_idle_pools(Rc::clone(&context)));
    monoio::spawn(flush_access_log(Rc::clone(&context)));
    monoio::spawn(report_outcomes(Rc::clone(&context)));
    let _ = spec.events.send(FromWorker::Ready { worker: index, driver });

    serve_inbox(&context, &inbox, wake, &spec.events).await;

    // Graceful shutdown: stop listening, close idle connections, let in-flight exchanges finish. Cancelling the
    // accepts alone is not enough: on io_uring a cancelled accept may stay pending, and the listener with it, so
    // new connections would queue until exit and then be reset. shutdown(2) on a listening socket stops it
    // listening at once (new connections are refused) and ends the pending accept, on both drivers.
    context.start_draining();
    for fd in listener_fds {
        // Each descriptor is owned by its accept task's listener, which lives until that task returns; the tasks
        // return only after this loop (they see `draining` on their next turn), so none is closed yet.
        crate::net::sys::shutdown_both(fd);
    }
    let _ = accept_canceller.cancel();
    let grace = context.generation().config.server.shutdown_grace;
    let deadline = Instant::now() + grace;
    while context.active_connections() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if context.active_connections() > 0 {
        tracing::warn!(
            worker = index,
            connections = context.active_connections(),
            "grace period over; closing"
        );
    }
    context.flush_access_log();
}

/// Handles control messages until told to shut down (or the control thread is gone).
async fn serve_inbox(
    context: &WorkerContext,
    inbox: &Receiver<ToWorker>,
    mut wake: UnixStream,
    events: &Sender<FromWorker>,
) {
    let mut buf = vec![0u8; 64];
    loop {
        while let Ok(message) = inbox.try_recv() {
            match message {
                ToWorker::Prepare(snapshot) => {
                    context.prepare(&snapshot);
                    let _ = events.send(FromWorker::Prepared {
                        worker: context.index,
                        version: snapshot.version,
                    });
                }
                ToWorker::Commit { version } => {
                    if context.commit(version) {
                        let _ = events.send(FromWorker::Applied {
                            worker: context.index,
                            version,
                        });
                    }
                }
                ToWorker::Abort { version } => context.abort(version),
                ToWorker::Report(reply) => {
                    let generation = context.generation();
                    let _ = reply.send(WorkerReport {
                        worker: context.index,
                        version: generation.version,
                        health_version: context.health_version(),
                        active_connections: context.active_connections(),
                        backends: generation.backends.iter().map(|backend| backend.report()).collect(),
                    });
                }
                ToWorker::CollectMetrics(reply) => {
                    let _ = reply.send(context.metrics_snapshot());
                }
                ToWorker::RateDemand(reply) => {
                    let demand = context.rate_limit.borrow_mut().take_demand(context.index);
                    let _ = reply.send(demand);
                }
                ToWorker::RateShares(shares) => {
                    context.rate_limit.borrow_mut().apply_shares(&shares, Instant::now());
                }
                ToWorker::Health(table) => context.set_health(table),
                ToWorker::StopTraffic { backend, until } => context.stop_traffic(&backend, until),
                ToWorker::Eject { backend, addr, until } => context.eject(&backend, addr, until),
                ToWorker::TicketKeys(keys) => context.tls.borrow_mut().rotate(keys),
                ToWorker::Shutdown => return,
            }
        }
        let (result, returned) = wake.read(buf).await;
        buf = returned;
        match result {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn accept_loop(
    context: Rc<WorkerContext>,
    listener: TcpListener,
    frontend: usize,
    cancel: monoio::io::CancelHandle,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    // After running out of descriptors, accepts are retried in the handover turn (`descriptors::handover`) until
    // the listen queue is empty, so that no retry takes the descriptor the control plane frees for `ctl`.
    let mut recovering = false;
    loop {
        if context.client_slots.full() {
            // At this worker's share of `server.max_connections`: stop accepting (new connections wait in the
            // listen queue, none is refused) until one of ours closes.
            context.with_metrics(|metrics| metrics.accept_paused());
            if let Some(suppressed) = context.warnings.open(Instant::now()) {
                tracing::warn!(
                    worker = context.index,
                    connections = context.client_slots.held(),
                    suppressed,
                    "at server.max_connections; accepting resumes when a connection closes"
                );
            }
            let slots = &context.client_slots;
            slots.freed.until(|| !slots.full() || context.draining()).await;
            if context.draining() {
                return;
            }
        }
        let accepted = if recovering {
            if context.draining() {
                return;
            }
            match descriptors::accept_after_running_out(&listener) {
                Ok(Some((stream, peer))) => monoio::net::TcpStream::from_std(stream).map(|stream| (stream, peer)),
                Ok(None) => {
                    recovering = false;
                    continue;
                }
                Err(error) => Err(error),
            }
        } else {
            listener.cancelable_accept(cancel.clone()).await
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let slot = context.client_slots.take();
                let _ = stream.set_nodelay(true);
                // Decided per connection: a frontend's TLS settings (or TLS itself) change live.
                let accept = context.tls.borrow().accept(frontend);
                match accept {
                    Accept::Plain => {
                        monoio::spawn(Contained::new(serve_client(
                            Rc::clone(&context),
                            stream.into(),
                            peer,
                            frontend,
                            slot,
                        )));
                    }
                    Accept::Tls(terminate) => {
                        monoio::spawn(Contained::new(serve_tls_client(
                            Rc::clone(&context),
                            stream,
                            peer,
                            frontend,
                            slot,
                            terminate,
                        )));
                    }
                    Accept::Refuse => drop((stream, slot)),
                }
            }
            Err(_) if context.draining() => return,
            Err(error) if error.raw_os_error() == Some(libc::ECANCELED) => return,
            Err(error) => {
                // Out of descriptors (EMFILE/ENFILE) or a transient network error: back off instead of spinning;
                // established connections go on being served meanwhile, and the clients not accepted wait in the
                // listen queue. Out of descriptors, accepting resumes only when one of this worker's own
                // connections closes (or after a second, for descriptors freed elsewhere): retrying on a timer
                // would take the descriptor the control plane frees to accept `ctl` from under it.
                if let Some(suppressed) = context.warnings.open(Instant::now()) {
                    tracing::warn!(worker = context.index, error = %error, suppressed, "accept failed; backing off");
                }
                if out_of_descriptors(&error) {
                    own_connection_closed(&context).await;
                    recovering = true;
                } else {
                    recovering = false;
                    monoio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Waits until one of this worker's client or upstream connections closes, or a second has passed.
async fn own_connection_closed(context: &WorkerContext) {
    let clients = &context.client_slots;
    let upstream = &context.upstream_slots;
    let (held_clients, held_upstream) = (clients.held(), upstream.held());
    let closed = async {
        monoio::select! {
            _ = clients.released.until(|| clients.held() < held_clients) => {},
            _ = upstream.released.until(|| upstream.held() < held_upstream) => {},
        }
    };
    let _ = monoio::time::timeout(OUT_OF_DESCRIPTORS_WAIT, closed).await;
}

/// A connection's task with any panic contained to that connection: the worker and its other connections go on.
/// (monoio does not catch panics in tasks; one would unwind the whole worker thread.)
struct Contained(std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>);

impl Contained {
    fn new(future: impl std::future::Future<Output = ()> + 'static) -> Contained {
        Contained(Box::pin(future))
    }
}

impl std::future::Future for Contained {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                tracing::error!("a connection task panicked; that connection was closed");
                std::task::Poll::Ready(())
            }
        }
    }
}

/// Tells the control thread a worker ended, however it ended (also while unwinding from a panic).
struct StoppedGuard {
    worker: usize,
    events: Sender<FromWorker>,
}

impl Drop for StoppedGuard {
    fn drop(&mut self) {
        let _ = self.events.send(FromWorker::Stopped { worker: self.worker });
    }
}

/// Hands the access log buffer to the writer thread every `FLUSH_INTERVAL`, so quiet periods still get logged.
async fn flush_access_log(context: Rc<WorkerContext>) {
    while !context.draining() {
        monoio::time::sleep(crate::access_log::FLUSH_INTERVAL).await;
        context.flush_access_log();
    }
}

/// Every `shard::outcomes::REPORT_INTERVAL`: tells the control thread what the backends answered, for passive
/// outlier detection (see `WorkerContext::report_outcomes`), and refreshes the dynamic weights from it.
async fn report_outcomes(context: Rc<WorkerContext>) {
    let mut last = Instant::now();
    while !context.draining() {
        monoio::time::sleep(crate::shard::outcomes::REPORT_INTERVAL).await;
        context.report_outcomes();
        let now = Instant::now();
        context.refresh_dynamic_weights(now.saturating_duration_since(last), now);
        last = now;
    }
}

/// Once a second: closes upstream connections idle past their timeout, and gives memory back after a burst.
async fn sweep_idle_pools(context: Rc<WorkerContext>) {
    let mut burst = memory::BurstTrim::default();
    loop {
        monoio::time::sleep(POOL_SWEEP_INTERVAL).await;
        if context.draining() {
            return;
        }
        if burst.observe(context.take_peak_connections(), context.active_connections()) {
            let started = Instant::now();
            memory::trim();
            tracing::debug!(
                worker = context.index,
                took_us = started.elapsed().as_micros() as u64,
                "heap trimmed after a burst"
            );
        }
        let generation = context.generation();
        let now = Instant::now();
        for backend in &generation.backends {
            backend.evict_idle(now, generation.config.upstream.idle_timeout);
        }
    }
}
