//! Starting the control plane: the descriptor budget, the frontends' ports, the operator listeners, the access-log
//! writer and every worker, waiting until all of them listen.

use super::sticky::{cookie_values, file_key, StickyKey};
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crossbeam_channel::Receiver;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

use super::breakers::Breakers;
use super::change::Changes;
use super::checks::Checks;
use super::command::Source;
use super::ejections::Ejections;
use super::fleet::Fleet;
use super::history::{History, VersionRecord};
use super::jobs::Jobs;
use super::resolve::resolve_backends;
use super::tls::{load_terminations, load_upstream, CertificateWatch, TicketRotation};
use super::{listeners, socket, Control, StartError};
use crate::config::{Config, IoDriverChoice, Workers};
use crate::net::descriptors::{raise_nofile_limit, DescriptorBudget};
use crate::net::listener::{reserve_port, PortReservation};
use crate::worker::{self, Driver, FromWorker, Snapshot, WorkerLimits, WorkerSpec};

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
    /// Starts every worker on `config`, the control socket and (when enabled) the admin API, and waits until all
    /// of them listen.
    pub fn start(
        config_path: &Path,
        config: Config,
        driver_override: Option<IoDriverChoice>,
    ) -> Result<Control, StartError> {
        let driver = choose_driver(driver_override.unwrap_or(config.server.io_driver))?;
        let budget = descriptor_budget(&config)?;
        let backend_addrs = resolve_backends(&config)?;
        // Frontends on port 0 get a concrete port that every worker then shares.
        let mut reservations: Vec<PortReservation> = Vec::new();
        let mut frontend_addrs = Vec::new();
        for frontend in &config.frontends {
            if frontend.listen.port() == 0 {
                let reservation = reserve_port(frontend.listen).map_err(|source| StartError::Listen {
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
        let sticky_key = StickyKey::random()?;
        let file_key = file_key(&config).transpose()?;
        let tls = load_terminations(&config)?
            .into_iter()
            .map(|tls| tls.map(Arc::new))
            .collect();
        let upstream_tls = load_upstream(&config)?.map(Arc::new);
        let tickets = TicketRotation::start(&config)?;
        let cert_watch = CertificateWatch::start(&config);
        let config = Arc::new(config);
        let snapshot = Arc::new(Snapshot {
            version: 1,
            sticky_cookies: cookie_values(&config, file_key.as_ref(), &sticky_key),
            config: Arc::clone(&config),
            backend_addrs,
            frontend_addrs,
            tls,
            ticket_keys: tickets.keys.clone(),
            upstream_tls,
        });

        let (request_sender, requests) = crossbeam_channel::unbounded();
        listeners::serve(bind_listeners(&config)?, request_sender.clone())?;
        let access_log = crate::access_log::start_writer(config.access_log.path.clone()).map_err(|source| {
            StartError::AccessLog {
                path: config.access_log.path.clone().unwrap_or_default(),
                source,
            }
        })?;
        let process_seed = crate::shard::request_id::process_seed();

        let count = worker_count(config.server.workers);
        if let Some((path, reason)) = crate::config::capacity_below_workers(&config, count) {
            return Err(StartError::Capacity { path, reason });
        }
        let cores = if config.server.pin_workers {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let (event_sender, events) = crossbeam_channel::unbounded();
        let (breaker_news_sender, breaker_news) = crossbeam_channel::unbounded();
        let (outcome_sender, outcome_reports) = crossbeam_channel::unbounded();
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            workers.push(worker::spawn(WorkerSpec {
                index,
                driver,
                core,
                snapshot: Arc::clone(&snapshot),
                events: event_sender.clone(),
                access_log: access_log.clone(),
                breaker_news: breaker_news_sender.clone(),
                outcome_reports: outcome_sender.clone(),
                process_seed,
                workers: count,
                limits: WorkerLimits {
                    clients: DescriptorBudget::share(budget.clients, count),
                    upstream: DescriptorBudget::share(budget.upstream, count),
                },
            })?);
        }
        let mut history = History::new(config.control.history);
        history.push(VersionRecord {
            version: 1,
            applied_at: SystemTime::now(),
            source: Source::File.describe(),
            summary: "initial config".to_string(),
            config: Arc::clone(&config),
        });
        let mut control = Control {
            config_path: config_path.to_path_buf(),
            config,
            snapshot,
            history,
            fleet: Fleet::new(workers),
            drivers: vec![driver; count],
            events,
            started: Instant::now(),
            rollout: None,
            requests,
            request_sender,
            access_log,
            last_reload: (true, SystemTime::now()),
            last_rebalance: Instant::now(),
            worker_lost: false,
            next_version: 2,
            budget,
            jobs: Jobs::default(),
            changes: Changes::default(),
            breaker_news,
            breakers: Breakers::default(),
            checks: Checks::start(),
            ejections: Ejections::new(outcome_reports, process_seed),
            sticky_key,
            tickets,
            cert_watch,
        };
        let mut ready = 0;
        while ready < count {
            match control.events.recv() {
                Ok(FromWorker::Ready { worker, driver }) => {
                    control.drivers[worker] = driver;
                    ready += 1;
                }
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
        let (config, snapshot) = (Arc::clone(&control.config), Arc::clone(&control.snapshot));
        control.checks.follow(
            &config,
            &snapshot.backend_addrs,
            snapshot.upstream_tls.as_ref(),
            &mut control.fleet,
        );
        let listening: Vec<String> = control
            .config
            .frontends
            .iter()
            .zip(&control.snapshot.frontend_addrs)
            .map(|(frontend, address)| format!("{}={address}", frontend.name))
            .collect();
        let epoll_workers = control
            .drivers
            .iter()
            .filter(|driver| **driver == Driver::Epoll)
            .count();
        tracing::info!(
            workers = count,
            driver = if epoll_workers == 0 { "io_uring" } else if epoll_workers == count { "epoll" } else { "mixed" },
            backends = control.config.backends.len(),
            listening = %listening.join(","),
            max_connections = control.budget.clients,
            control_socket = %control.config.control.socket.display(),
            "corelb ready"
        );
        Ok(control)
    }
}

/// Raises the descriptor limit and shares it out; a configured `max_connections` it cannot honour is kept, with a
/// warning, since the operator may know better (the accept and connect paths cope with running out).
fn descriptor_budget(config: &Config) -> Result<DescriptorBudget, StartError> {
    let limit = raise_nofile_limit()?;
    let budget = DescriptorBudget::plan(limit, config.server.max_connections);
    if !budget.fits() {
        tracing::warn!(
            max_connections = budget.clients,
            limit,
            "server.max_connections needs more descriptors than RLIMIT_NOFILE allows; past the limit clients wait \
             to be accepted and new upstream connections get 503 (raise the limit, e.g. LimitNOFILE= in systemd)"
        );
    }
    Ok(budget)
}

/// Binds the control socket, the admin API and the metrics listener, as the config asks.
fn bind_listeners(config: &Config) -> Result<listeners::Listeners, StartError> {
    let control = socket::bind(&config.control.socket).map_err(|source| StartError::ControlSocket {
        path: config.control.socket.clone(),
        source,
    })?;
    let bind_tcp = |address: std::net::SocketAddr, name: &str| -> std::io::Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind(address)?;
        tracing::info!(address = %listener.local_addr()?, "{name} listening");
        Ok(listener)
    };
    let admin = if config.admin.enabled {
        let listener = bind_tcp(config.admin.listen, "admin API").map_err(|source| StartError::Admin {
            address: config.admin.listen,
            source,
        })?;
        Some((listener, config.admin.token.clone()))
    } else {
        None
    };
    let metrics = if config.metrics.enabled {
        let address = std::net::SocketAddr::new(config.metrics.address, config.metrics.port);
        Some(bind_tcp(address, "metrics").map_err(|source| StartError::Metrics { address, source })?)
    } else {
        None
    };
    Ok(listeners::Listeners {
        control,
        metrics,
        admin,
    })
}

/// Delivers SIGHUP, SIGTERM and SIGINT as channel messages.
pub(super) fn signal_channel() -> std::io::Result<Receiver<i32>> {
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR1])?;
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
