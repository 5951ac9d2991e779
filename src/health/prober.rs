//! The prober thread: one for the whole process, with its own event loop, probing every checked backend
//! concurrently (one task per backend), never on a worker and never on the control loop. The control thread sends
//! it the targets after every config change; it sends back only flips of a backend's health (`HealthNews`), which
//! the control thread turns into a versioned health table for the workers. Counters for metrics sit behind a
//! mutex the control thread reads when scraped: neither side is the request path.
//!
//! The rollout's proof that its new backends answer is a one-off probe on the same thread and with the same
//! probe (`ProberCommand::ProbeOnce`): every target at once, the first failure in target order reported through
//! the caller's reply.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::probe::{probe, probe_request, ProbeTls};
use super::tracker::{first_wait, next_wait, Jitter, Tracker};
use crate::config::CheckSettings;
pub use crate::metrics::CheckCounts;

/// How often the prober looks for new targets from the control thread.
const COMMAND_POLL: Duration = Duration::from_millis(20);

/// One backend to check.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub id: String,
    pub addr: SocketAddr,
    /// Set for an `https://` backend.
    pub tls: Option<ProbeTls>,
    pub settings: CheckSettings,
}

/// A backend to probe once, apart from the periodic checks (a rollout's new backend): `GET path` with `Host`,
/// passing on a 2xx within `timeout`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeTarget {
    pub id: String,
    pub address: SocketAddr,
    /// Set for an `https://` backend.
    pub tls: Option<ProbeTls>,
    /// The `Host` header: the backend's authority.
    pub host: String,
    pub path: String,
    pub timeout: Duration,
}

/// Where a one-off probe's result goes: `Err` names the first target that failed, and why.
pub type ProbeReply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// What the control thread tells the prober.
pub enum ProberCommand {
    /// Check exactly these backends from now on (an empty list stops every check).
    Targets(Vec<Target>),
    /// Probe these backends once, all at once, and answer through the reply.
    ProbeOnce(Vec<ProbeTarget>, ProbeReply),
    Stop,
}

/// A backend's checked health flipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthNews {
    pub backend: String,
    pub addr: SocketAddr,
    pub healthy: bool,
    /// Why the last probe failed, when it did.
    pub reason: Option<String>,
}

/// Every checked backend's counters, for metrics.
pub type Figures = Arc<Mutex<BTreeMap<String, CheckCounts>>>;

/// The control thread's end of the prober.
pub struct Prober {
    commands: Sender<ProberCommand>,
    thread: Option<JoinHandle<()>>,
    pub figures: Figures,
}

impl Prober {
    /// Starts the prober thread; flips are sent on `news`.
    pub fn spawn(news: Sender<HealthNews>) -> std::io::Result<Prober> {
        let (commands, inbox) = crossbeam_channel::unbounded();
        let figures: Figures = Arc::default();
        let shared = Arc::clone(&figures);
        let thread = std::thread::Builder::new()
            .name("corelb-prober".into())
            .spawn(move || run(inbox, news, shared))?;
        Ok(Prober {
            commands,
            thread: Some(thread),
            figures,
        })
    }

    /// Checks exactly `targets` from now on.
    pub fn set_targets(&self, targets: Vec<Target>) {
        let _ = self.commands.send(ProberCommand::Targets(targets));
    }

    /// Probes `targets` once; `reply` gets the result (never called if the prober has stopped).
    pub fn probe_once(&self, targets: Vec<ProbeTarget>, reply: ProbeReply) {
        let _ = self.commands.send(ProberCommand::ProbeOnce(targets, reply));
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.commands.send(ProberCommand::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(inbox: Receiver<ProberCommand>, news: Sender<HealthNews>, figures: Figures) {
    let runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build();
    let mut runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "the health prober cannot start its event loop; backends are not checked");
            return;
        }
    };
    runtime.block_on(async move {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_nanos() as u64);
        let prober = Rc::new(Probing {
            watched: RefCell::new(HashMap::new()),
            jitter: RefCell::new(Jitter::new(seed)),
            news,
            figures,
        });
        loop {
            match inbox.try_recv() {
                Ok(ProberCommand::Targets(targets)) => prober.set_targets(targets),
                Ok(ProberCommand::ProbeOnce(targets, reply)) => {
                    monoio::spawn(probe_once(targets, reply));
                }
                Ok(ProberCommand::Stop) | Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    prober.set_targets(Vec::new());
                    return;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => monoio::time::sleep(COMMAND_POLL).await,
            }
        }
    });
}

/// The prober thread's state.
struct Probing {
    watched: RefCell<HashMap<String, Rc<Watched>>>,
    jitter: RefCell<Jitter>,
    news: Sender<HealthNews>,
    figures: Figures,
}

/// One backend being checked; its task runs while `alive`.
struct Watched {
    target: RefCell<Target>,
    tracker: Cell<Tracker>,
    alive: Cell<bool>,
}

impl Probing {
    fn set_targets(self: &Rc<Self>, targets: Vec<Target>) {
        let mut watched = self.watched.borrow_mut();
        let mut kept = HashMap::with_capacity(targets.len());
        let count = targets.len().max(1);
        for (index, target) in targets.into_iter().enumerate() {
            let same = match watched.remove(&target.id) {
                Some(existing) if existing.target.borrow().addr == target.addr => Some(existing),
                Some(moved) => {
                    // A new address is a new backend: its old checks stop, and its health starts over.
                    moved.alive.set(false);
                    None
                }
                None => None,
            };
            let entry = match same {
                Some(existing) => {
                    *existing.target.borrow_mut() = target;
                    existing
                }
                None => {
                    let entry = Rc::new(Watched {
                        target: RefCell::new(target),
                        tracker: Cell::new(Tracker::default()),
                        alive: Cell::new(true),
                    });
                    // First probes spread evenly over the first interval, in target order.
                    let spread = index as f64 / count as f64;
                    monoio::spawn(watch(Rc::clone(self), Rc::clone(&entry), spread));
                    entry
                }
            };
            let id = entry.target.borrow().id.clone();
            kept.insert(id, entry);
        }
        for gone in watched.values() {
            gone.alive.set(false);
        }
        *watched = kept;
        let mut figures = self.figures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        figures.retain(|id, _| watched.contains_key(id));
    }

    fn count(&self, id: &str, update: impl FnOnce(&mut CheckCounts)) {
        let mut figures = self.figures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let counts = figures.entry(id.to_string()).or_insert_with(|| CheckCounts {
            healthy: true,
            ..CheckCounts::default()
        });
        update(counts);
    }
}

/// Probes every target at once and replies with the first failure in target order, or success.
async fn probe_once(targets: Vec<ProbeTarget>, reply: ProbeReply) {
    let probes: Vec<_> = targets
        .into_iter()
        .map(|target| {
            monoio::spawn(async move {
                let request = probe_request("GET", &target.path, &target.host);
                probe(target.address, target.tls.as_ref(), request, target.timeout, (200, 299))
                    .await
                    .map(drop)
                    .map_err(|error| format!("new backend {}: {error}", target.id))
            })
        })
        .collect();
    let mut result = Ok(());
    for probe in probes {
        let outcome = probe.await;
        if result.is_ok() {
            result = outcome;
        }
    }
    reply(result);
}

/// Probes one backend until it is no longer a target.
async fn watch(prober: Rc<Probing>, entry: Rc<Watched>, spread: f64) {
    let first = first_wait(entry.target.borrow().settings.interval, spread);
    monoio::time::sleep(first).await;
    while entry.alive.get() {
        let started = Instant::now();
        let target = entry.target.borrow().clone();
        let settings = &target.settings;
        let request = probe_request(&settings.method, &settings.path, &settings.host);
        let timeout = settings.timeout.min(settings.interval);
        let result = probe(
            target.addr,
            target.tls.as_ref(),
            request,
            timeout,
            settings.expected_status,
        )
        .await;
        if !entry.alive.get() {
            return;
        }
        let mut tracker = entry.tracker.get();
        let flip = tracker.observe(result.is_ok(), settings.healthy_threshold, settings.unhealthy_threshold);
        entry.tracker.set(tracker);
        prober.count(&target.id, |counts| {
            match &result {
                Ok(_) => {
                    counts.passed += 1;
                    counts.passed_in_a_row += 1;
                }
                Err(error) => {
                    *counts.failed.entry(error.label()).or_insert(0) += 1;
                    counts.passed_in_a_row = 0;
                }
            }
            counts.healthy = tracker.healthy();
            match flip {
                Some(true) => counts.became_healthy += 1,
                Some(false) => counts.became_unhealthy += 1,
                None => {}
            }
        });
        if let Some(healthy) = flip {
            let reason = result.as_ref().err().map(ToString::to_string);
            if healthy {
                tracing::info!(backend = %target.id, "health check: backend healthy again");
            } else {
                tracing::warn!(
                    backend = %target.id,
                    reason = reason.as_deref().unwrap_or(""),
                    failures = settings.unhealthy_threshold,
                    "health check: backend unhealthy; no new requests go to it"
                );
            }
            let _ = prober.news.send(HealthNews {
                backend: target.id.clone(),
                addr: target.addr,
                healthy,
                reason,
            });
        }
        let wait = next_wait(
            settings.interval,
            settings.jitter,
            prober.jitter.borrow_mut().fraction(),
        );
        monoio::time::sleep(wait.saturating_sub(started.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// A listener that answers each of `count` connections with `status` once it has read the request.
    fn answering(status: &'static str, count: usize) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            for _ in 0..count {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        (address, thread)
    }

    fn target(id: &str, address: SocketAddr) -> ProbeTarget {
        ProbeTarget {
            id: id.into(),
            address,
            tls: None,
            host: address.to_string(),
            path: "/health".into(),
            timeout: Duration::from_secs(10),
        }
    }

    fn probe_once_and_wait(prober: &Prober, targets: Vec<ProbeTarget>) -> Result<(), String> {
        let (sender, result) = crossbeam_channel::bounded(1);
        prober.probe_once(
            targets,
            Box::new(move |outcome| {
                let _ = sender.send(outcome);
            }),
        );
        result.recv_timeout(Duration::from_secs(30)).expect("a reply")
    }

    #[test]
    fn a_one_off_probe_passes_on_2xx_and_names_the_first_backend_that_failed() {
        let (news, _flips) = crossbeam_channel::unbounded();
        let prober = Prober::spawn(news).unwrap();
        let (good, good_thread) = answering("200 OK", 2);
        let (bad, bad_thread) = answering("503 Service Unavailable", 1);
        assert_eq!(probe_once_and_wait(&prober, vec![target("b1", good)]), Ok(()));
        let failed = probe_once_and_wait(&prober, vec![target("b1", good), target("b2", bad)]).unwrap_err();
        assert!(failed.starts_with("new backend b2:"), "{failed}");
        assert!(failed.contains("503"), "{failed}");
        good_thread.join().unwrap();
        bad_thread.join().unwrap();
    }
}
