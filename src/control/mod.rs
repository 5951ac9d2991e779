//! The control thread: owns the authoritative config, starts the workers, turns each applied config into a
//! [`Snapshot`] broadcast to every worker, and handles signals (SIGHUP reloads, SIGTERM/SIGINT drain and stop).
//! It is the only place that does blocking work such as DNS and file reads; workers never do.

mod resolve;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::config::{load_config, Config, IoDriverChoice, Workers};
use crate::net::listener::{reserve_port, PortReservation};
use crate::worker::{self, Driver, FromWorker, Snapshot, ToWorker, WorkerHandle, WorkerSpec};
pub use resolve::{resolve_backends, ResolveError};

/// Why corelb could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("frontend {name:?} cannot use {address}: {source}")]
    Listen {
        name: String,
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("io_uring was required (server.io_driver = \"io_uring\") but this kernel refuses it")]
    IoUringUnavailable,
    #[error("worker {worker} failed to start: {error}")]
    Worker { worker: usize, error: String },
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// The running control plane.
pub struct Control {
    config_path: PathBuf,
    config: Arc<Config>,
    snapshot: Arc<Snapshot>,
    workers: Vec<WorkerHandle>,
    events: Receiver<FromWorker>,
}

/// Chooses the driver for every worker: io_uring when allowed, epoll otherwise (said once, here).
fn choose_driver(choice: IoDriverChoice) -> Result<Driver, StartError> {
    let available = monoio::utils::detect_uring();
    match choice {
        IoDriverChoice::Epoll => Ok(Driver::Epoll),
        IoDriverChoice::IoUring if available => Ok(Driver::IoUring),
        IoDriverChoice::IoUring => Err(StartError::IoUringUnavailable),
        IoDriverChoice::Auto if available => Ok(Driver::IoUring),
        IoDriverChoice::Auto => {
            tracing::warn!("io_uring is not available here (old kernel, seccomp or memlock limits); using epoll");
            Ok(Driver::Epoll)
        }
    }
}

fn worker_count(workers: Workers) -> usize {
    match workers {
        Workers::Count(count) => count,
        Workers::Auto => std::thread::available_parallelism().map_or(1, usize::from),
    }
}

impl Control {
    /// Starts every worker on `config` and waits until all of them listen.
    pub fn start(
        config_path: &Path,
        config: Config,
        driver_override: Option<IoDriverChoice>,
    ) -> Result<Control, StartError> {
        let driver = choose_driver(driver_override.unwrap_or(config.server.io_driver))?;
        let backend_addrs = resolve_backends(&config)?;
        // Frontends on port 0 get a concrete port that every worker then shares.
        let mut reservations: Vec<PortReservation> = Vec::new();
        let mut frontend_addrs = Vec::new();
        for frontend in &config.frontends {
            if frontend.listen.port() == 0 {
                let reservation =
                    reserve_port(frontend.listen).map_err(|source| StartError::Listen {
                        name: frontend.name.clone(),
                        address: frontend.listen,
                        source,
                    })?;
                frontend_addrs.push(reservation.address);
                reservations.push(reservation);
            } else {
                frontend_addrs.push(frontend.listen);
            }
        }
        let config = Arc::new(config);
        let snapshot = Arc::new(Snapshot {
            version: 1,
            config: Arc::clone(&config),
            backend_addrs,
            frontend_addrs,
        });

        let count = worker_count(config.server.workers);
        let cores = if config.server.pin_workers {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let (event_sender, events) = crossbeam_channel::unbounded();
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            workers.push(worker::spawn(WorkerSpec {
                index,
                driver,
                core,
                snapshot: Arc::clone(&snapshot),
                events: event_sender.clone(),
            })?);
        }
        let mut control = Control {
            config_path: config_path.to_path_buf(),
            config,
            snapshot,
            workers,
            events,
        };
        let mut drivers = Vec::with_capacity(count);
        while drivers.len() < count {
            match control.events.recv() {
                Ok(FromWorker::Ready { driver, .. }) => drivers.push(driver),
                Ok(FromWorker::StartFailed { worker, error }) => {
                    control.stop_workers();
                    return Err(StartError::Worker { worker, error });
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(StartError::Worker {
                        worker: 0,
                        error: "all workers exited".into(),
                    })
                }
            }
        }
        drop(reservations);
        let listening: Vec<String> = control
            .config
            .frontends
            .iter()
            .zip(&control.snapshot.frontend_addrs)
            .map(|(frontend, address)| format!("{}={address}", frontend.name))
            .collect();
        let epoll_workers = drivers
            .iter()
            .filter(|driver| **driver == Driver::Epoll)
            .count();
        tracing::info!(
            workers = count,
            driver = if epoll_workers == 0 { "io_uring" } else if epoll_workers == count { "epoll" } else { "mixed" },
            backends = control.config.backends.len(),
            listening = %listening.join(","),
            "corelb ready"
        );
        Ok(control)
    }

    /// The frontend addresses actually listened on.
    pub fn frontend_addrs(&self) -> &[std::net::SocketAddr] {
        &self.snapshot.frontend_addrs
    }

    /// Runs until SIGTERM or SIGINT, then drains and stops every worker.
    pub fn run(mut self) -> Result<(), StartError> {
        let signals = signal_channel()?;
        loop {
            select! {
                recv(signals) -> signal => match signal {
                    Ok(SIGHUP) => self.reload_from_file(),
                    Ok(_) | Err(_) => break,
                },
                recv(self.events) -> event => match event {
                    Ok(FromWorker::Stopped { worker }) => {
                        tracing::error!(worker, "worker stopped unexpectedly; shutting down");
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
            }
        }
        tracing::info!(grace = ?self.config.server.shutdown_grace, "shutting down: draining connections");
        self.stop_workers();
        tracing::info!("corelb stopped");
        Ok(())
    }

    /// Re-reads the config file and applies it, or keeps the running config and says why not.
    fn reload_from_file(&mut self) {
        let config = match load_config(&self.config_path) {
            Ok(config) => config,
            Err(error) => {
                // One line per event: log collectors split on newlines.
                let error = error.to_string().replace('\n', "; ");
                tracing::error!(error = %error, "reload refused; the running config stays");
                return;
            }
        };
        if config.frontends != self.config.frontends || config.server != self.config.server {
            tracing::warn!(
                "reload: changes to [server] and [[frontends]] need a restart and were not applied"
            );
        }
        let backend_addrs = match resolve_backends(&config) {
            Ok(addrs) => addrs,
            Err(error) => {
                tracing::error!(error = %error, "reload refused; the running config stays");
                return;
            }
        };
        let mut config = config;
        config.server = self.config.server.clone();
        config.frontends = self.config.frontends.clone();
        let config = Arc::new(config);
        let snapshot = Arc::new(Snapshot {
            version: self.snapshot.version + 1,
            config: Arc::clone(&config),
            backend_addrs,
            frontend_addrs: self.snapshot.frontend_addrs.clone(),
        });
        let started = Instant::now();
        for worker in &mut self.workers {
            if let Err(error) = worker.send(ToWorker::Apply(Arc::clone(&snapshot))) {
                tracing::error!(error = %error, "reload could not reach a worker");
            }
        }
        let mut applied = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while applied < self.workers.len() {
            match self.events.recv_deadline(deadline) {
                Ok(FromWorker::Applied { version, .. }) if version == snapshot.version => {
                    applied += 1
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        tracing::info!(
            version = snapshot.version,
            workers_applied = applied,
            elapsed = ?started.elapsed(),
            "config reloaded"
        );
        self.config = config;
        self.snapshot = snapshot;
    }

    fn stop_workers(&mut self) {
        for worker in &mut self.workers {
            let _ = worker.send(ToWorker::Shutdown);
        }
        for worker in &mut self.workers {
            worker.join();
        }
    }
}

/// Delivers SIGHUP, SIGTERM and SIGINT as channel messages.
fn signal_channel() -> std::io::Result<Receiver<i32>> {
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let (sender, receiver) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("corelb-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if sender.send(signal).is_err() {
                    return;
                }
            }
        })?;
    Ok(receiver)
}
