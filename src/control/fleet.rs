//! The control thread's end of every worker: one message to all, one scatter/gather with a deadline that says who
//! did not answer (Sozu's gathering task), and the two-phase change (monolake's prepare → commit | abort): every
//! worker builds the next generation beside its current one, and only when all have does any install it, so a worker
//! that fails or is too slow leaves every worker on the old version, never a split.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::shard::Snapshot;
use crate::worker::{FromWorker, ToWorker, WorkerHandle};

/// Why a change did not reach every worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("worker {0} has exited")]
    Unreachable(usize),
    #[error("worker {0} has stopped")]
    Stopped(usize),
    #[error("workers {missing:?} did not prepare the change in time; every worker stays on the running version")]
    PrepareTimedOut { missing: Vec<usize> },
    #[error("workers {missing:?} did not confirm the change in time")]
    CommitTimedOut { missing: Vec<usize> },
}

/// An answer that names the worker it came from.
pub trait FromOneWorker {
    fn worker(&self) -> usize;
}

impl FromOneWorker for crate::worker::WorkerReport {
    fn worker(&self) -> usize {
        self.worker
    }
}

impl FromOneWorker for crate::metrics::WorkerMetrics {
    fn worker(&self) -> usize {
        self.worker
    }
}

impl FromOneWorker for crate::ratelimit::RateDemand {
    fn worker(&self) -> usize {
        self.worker
    }
}

/// What one question to every worker brought back.
#[derive(Debug)]
pub struct Gathered<T> {
    /// The answers, in worker order.
    pub answers: Vec<T>,
    /// Workers that did not answer in time (or could not be asked).
    pub missing: Vec<usize>,
}

impl<T> Gathered<T> {
    /// Every worker answered.
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// How a wait for every worker ended early.
enum Waited {
    Stopped(usize),
    TimedOut(Vec<usize>),
}

pub struct Fleet {
    workers: Vec<WorkerHandle>,
}

impl Fleet {
    pub fn new(workers: Vec<WorkerHandle>) -> Fleet {
        Fleet { workers }
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// Sends each worker its own message (`message(index)`); stops at the first worker that has exited.
    pub fn send_each(&mut self, mut message: impl FnMut(usize) -> ToWorker) -> Result<(), String> {
        for (index, worker) in self.workers.iter_mut().enumerate() {
            worker.send(message(index))?;
        }
        Ok(())
    }

    /// Asks every worker `ask(reply_to)` and gathers the answers until `timeout` has passed.
    pub fn gather<T: FromOneWorker>(&mut self, ask: impl Fn(Sender<T>) -> ToWorker, timeout: Duration) -> Gathered<T> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let mut asked = vec![false; self.workers.len()];
        for (index, worker) in self.workers.iter_mut().enumerate() {
            asked[index] = worker.send(ask(sender.clone())).is_ok();
        }
        drop(sender);
        let deadline = Instant::now() + timeout;
        let expected = asked.iter().filter(|asked| **asked).count();
        let mut answers: Vec<T> = Vec::with_capacity(expected);
        while answers.len() < expected {
            match receiver.recv_deadline(deadline) {
                Ok(answer) => answers.push(answer),
                Err(_) => break,
            }
        }
        answers.sort_by_key(FromOneWorker::worker);
        let missing = (0..self.workers.len())
            .filter(|index| !answers.iter().any(|answer| answer.worker() == *index))
            .collect();
        Gathered { answers, missing }
    }

    /// Applies `snapshot` on every worker in two phases within `timeout` each: all prepare, then all commit. If
    /// any worker does not prepare in time, every worker is told to abort and none has changed.
    pub fn apply(
        &mut self,
        events: &Receiver<FromWorker>,
        snapshot: &Arc<Snapshot>,
        timeout: Duration,
    ) -> Result<(), ApplyError> {
        let version = snapshot.version;
        let prepared = self
            .send_each(|_| ToWorker::Prepare(Arc::clone(snapshot)))
            .map_err(|_| ApplyError::Unreachable(self.first_exited()))
            .and_then(|()| {
                self.await_every(events, timeout, |event| match event {
                    FromWorker::Prepared { worker, version: seen } if *seen == version => Some(*worker),
                    _ => None,
                })
                .map_err(|waited| match waited {
                    Waited::Stopped(worker) => ApplyError::Stopped(worker),
                    Waited::TimedOut(missing) => ApplyError::PrepareTimedOut { missing },
                })
            });
        if let Err(error) = prepared {
            for worker in &mut self.workers {
                let _ = worker.send(ToWorker::Abort { version });
            }
            return Err(error);
        }
        self.send_each(|_| ToWorker::Commit { version })
            .map_err(|_| ApplyError::Unreachable(self.first_exited()))?;
        self.await_every(events, timeout, |event| match event {
            FromWorker::Applied { worker, version: seen } if *seen == version => Some(*worker),
            _ => None,
        })
        .map_err(|waited| match waited {
            Waited::Stopped(worker) => ApplyError::Stopped(worker),
            Waited::TimedOut(missing) => ApplyError::CommitTimedOut { missing },
        })
    }

    /// Waits until `answered` has named every worker, or one stops, or `timeout` passes.
    fn await_every(
        &self,
        events: &Receiver<FromWorker>,
        timeout: Duration,
        answered: impl Fn(&FromWorker) -> Option<usize>,
    ) -> Result<(), Waited> {
        let deadline = Instant::now() + timeout;
        let mut done = vec![false; self.workers.len()];
        while done.iter().any(|done| !done) {
            match events.recv_deadline(deadline) {
                Ok(FromWorker::Stopped { worker }) => return Err(Waited::Stopped(worker)),
                Ok(event) => {
                    if let Some(slot) = answered(&event).and_then(|worker| done.get_mut(worker)) {
                        *slot = true;
                    }
                }
                Err(_) => {
                    let missing = (0..done.len()).filter(|worker| !done[*worker]).collect();
                    return Err(Waited::TimedOut(missing));
                }
            }
        }
        Ok(())
    }

    /// The first worker whose inbox is gone (for an error message).
    fn first_exited(&mut self) -> usize {
        self.workers
            .iter()
            .position(WorkerHandle::has_exited)
            .unwrap_or_default()
    }

    /// Tells every worker to shut down and waits for each thread to end.
    pub fn stop(&mut self) {
        for worker in &mut self.workers {
            let _ = worker.send(ToWorker::Shutdown);
        }
        for worker in &mut self.workers {
            worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A stand-in worker on its own thread: answers `Prepare` (unless `prepares` is false), `Commit` and `Abort` as
    /// a worker would, and reports every message it received when its inbox closes.
    struct StandIn {
        thread: std::thread::JoinHandle<Vec<String>>,
        _wake_end: UnixStream,
    }

    fn stand_in(index: usize, prepares: bool, events: Sender<FromWorker>) -> (WorkerHandle, StandIn) {
        let (handle, inbox, wake_end) = WorkerHandle::detached(index).unwrap();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for message in inbox {
                match message {
                    ToWorker::Prepare(snapshot) => {
                        seen.push(format!("prepare {}", snapshot.version));
                        if prepares {
                            let _ = events.send(FromWorker::Prepared {
                                worker: index,
                                version: snapshot.version,
                            });
                        }
                    }
                    ToWorker::Commit { version } => {
                        seen.push(format!("commit {version}"));
                        let _ = events.send(FromWorker::Applied { worker: index, version });
                    }
                    ToWorker::Abort { version } => seen.push(format!("abort {version}")),
                    _ => {}
                }
            }
            seen
        });
        (
            handle,
            StandIn {
                thread,
                _wake_end: wake_end,
            },
        )
    }

    fn snapshot(version: u64) -> Arc<Snapshot> {
        let config = crate::config::parse_config(
            "[[frontends]]\nname = \"web\"\naddress = \"127.0.0.1\"\nport = 0\n\n[[backends]]\nurl = \"http://127.0.0.1:9\"\n",
        )
        .unwrap();
        Arc::new(Snapshot {
            version,
            config: Arc::new(config),
            backend_addrs: vec!["127.0.0.1:9".parse().unwrap()],
            frontend_addrs: vec!["127.0.0.1:1".parse().unwrap()],
            sticky_cookies: Vec::new(),
            tls: Vec::new(),
            ticket_keys: None,
            upstream_tls: None,
        })
    }

    fn run(prepares: &[bool]) -> (Result<(), ApplyError>, Vec<Vec<String>>) {
        let (events, received) = crossbeam_channel::unbounded();
        let (handles, stand_ins): (Vec<_>, Vec<_>) = prepares
            .iter()
            .enumerate()
            .map(|(index, prepares)| stand_in(index, *prepares, events.clone()))
            .unzip();
        let mut fleet = Fleet::new(handles);
        let result = fleet.apply(&received, &snapshot(7), Duration::from_millis(300));
        drop(fleet);
        let seen = stand_ins
            .into_iter()
            .map(|stand_in| stand_in.thread.join().unwrap())
            .collect();
        (result, seen)
    }

    #[test]
    fn a_change_every_worker_prepares_is_committed_everywhere() {
        let (result, seen) = run(&[true, true]);
        assert_eq!(result, Ok(()));
        for worker in seen {
            assert_eq!(worker, ["prepare 7", "commit 7"]);
        }
    }

    #[test]
    fn a_worker_that_does_not_prepare_leaves_every_worker_on_the_old_version() {
        let (result, seen) = run(&[true, false, true]);
        assert_eq!(result, Err(ApplyError::PrepareTimedOut { missing: vec![1] }));
        for worker in seen {
            assert_eq!(worker, ["prepare 7", "abort 7"], "no worker may commit");
        }
    }
}
