//! Blocking work the control thread hands off, so that it keeps answering `/metrics`, `/health` and `ctl` while a
//! DNS lookup or a config-file read takes its time. Each job runs on a thread of its own and sends its result back
//! on a channel the control loop selects on, tagged with the job's id. A rollout's health probe is a job too, but
//! run by the prober thread ([`Jobs::elsewhere`]): its result comes back on the same channel.
//!
//! Every job has a deadline. A job past it is given up: the control thread answers the change that waited for it
//! and forgets the id, so the result that may still come is dropped. A thread stuck in a call that never returns
//! (a config path that is a FIFO nobody writes) cannot be killed, so the number of such threads is bounded: past
//! [`MAX_STUCK`], new jobs are refused until one of them ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::resolve::{resolve_backends, ResolveError};
use super::sticky::{file_key, SecretError, StickyKey};
use super::tls::{load_terminations, load_upstream};
use crate::config::{load_config, Config, LoadError};
use crate::tls::termination::{Termination, TerminationError};

/// How many given-up job threads may still be running before new jobs are refused.
pub const MAX_STUCK: usize = 4;

/// A piece of blocking work.
pub enum Work {
    /// Read and check the config file (`reload`, SIGHUP).
    ReadConfig(PathBuf),
    /// Resolve every backend of a candidate config, read its sticky-cookie secret file and its frontends'
    /// certificates; the candidate comes back with all of it ([`Resolved`]).
    Resolve(Box<Config>),
}

impl Work {
    fn describe(&self) -> &'static str {
        match self {
            Work::ReadConfig(_) => "reading the config file",
            Work::Resolve(_) => "resolving the backends",
        }
    }

    fn run(self) -> Finished {
        match self {
            Work::ReadConfig(path) => Finished::ReadConfig(load_config(&path).map(Box::new)),
            Work::Resolve(candidate) => Finished::Resolve(Box::new(Resolved {
                addresses: resolve_backends(&candidate),
                sticky_key: file_key(&candidate),
                tls: load_terminations(&candidate),
                upstream_tls: load_upstream(&candidate),
                candidate,
            })),
        }
    }
}

/// What a job found.
#[derive(Debug)]
pub enum Finished {
    ReadConfig(Result<Box<Config>, LoadError>),
    Resolve(Box<Resolved>),
    /// A rollout's probe of its new backends (run by the prober): `Err` names the first that failed.
    Probe(Result<(), String>),
}

/// A candidate with what its blocking work found.
#[derive(Debug)]
pub struct Resolved {
    pub candidate: Box<Config>,
    /// Its backends' addresses, in order.
    pub addresses: Result<Vec<SocketAddr>, ResolveError>,
    /// When it names a `balancer.sticky.secret_file`, the key read from it.
    pub sticky_key: Option<Result<StickyKey, SecretError>>,
    /// Each frontend's TLS, read and checked.
    pub tls: Result<Vec<Option<Termination>>, TerminationError>,
    /// `[upstream.tls]`, read when a backend is `https://`.
    pub upstream_tls: Result<Option<crate::tls::upstream::UpstreamTls>, crate::tls::upstream::UpstreamTlsError>,
}

/// Why a job could not be started.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0} earlier jobs that were given up are still blocked; try again later")]
    TooManyStuck(usize),
    #[error("cannot start a helper thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// A job's result, as it arrives on [`Jobs::results`].
pub struct Done {
    pub id: u64,
    pub finished: Finished,
}

/// The control thread's helper threads.
pub struct Jobs {
    sender: Sender<Done>,
    results: Receiver<Done>,
    next_id: u64,
    /// Threads of jobs that are running or were given up and have not ended yet.
    threads: Vec<JoinHandle<()>>,
}

impl Default for Jobs {
    fn default() -> Self {
        let (sender, results) = crossbeam_channel::unbounded();
        Jobs {
            sender,
            results,
            next_id: 1,
            threads: Vec::new(),
        }
    }
}

impl Jobs {
    /// Where results arrive.
    pub fn results(&self) -> &Receiver<Done> {
        &self.results
    }

    /// A job done by someone else (the prober): its id, and where to send its [`Done`]. Needs no thread of ours.
    pub fn elsewhere(&mut self, what: &'static str) -> (Job, Sender<Done>) {
        let id = self.next_id;
        self.next_id += 1;
        (Job { id, what }, self.sender.clone())
    }

    /// Starts `work` on a thread of its own and returns the id its result will carry.
    pub fn start(&mut self, work: Work) -> Result<Job, JobError> {
        self.threads.retain(|thread| !thread.is_finished());
        if self.threads.len() >= MAX_STUCK {
            return Err(JobError::TooManyStuck(self.threads.len()));
        }
        let id = self.next_id;
        self.next_id += 1;
        let what = work.describe();
        let sender = self.sender.clone();
        let thread = std::thread::Builder::new().name("corelb-job".into()).spawn(move || {
            let finished = work.run();
            // The control thread may have given this job up, or stopped: nobody to tell.
            let _ = sender.send(Done { id, finished });
        })?;
        self.threads.push(thread);
        Ok(Job { id, what })
    }
}

/// A started job, as the control thread remembers it.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub id: u64,
    /// What it does, for the message when it is given up.
    pub what: &'static str,
}

impl Job {
    pub fn timed_out(&self, after: Duration) -> String {
        format!("gave up {} after {} s; nothing was applied", self.what, after.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn wait(jobs: &Jobs) -> Done {
        jobs.results()
            .recv_timeout(Duration::from_secs(30))
            .expect("a job result")
    }

    #[test]
    fn a_config_file_is_read_and_checked_on_the_helper() {
        let folder = std::env::temp_dir().join(format!("corelb-jobs-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join("bad.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"[server]\nworkers = \"many\"\n")
            .unwrap();
        let mut jobs = Jobs::default();
        let job = jobs.start(Work::ReadConfig(path)).unwrap();
        let done = wait(&jobs);
        assert_eq!(done.id, job.id);
        match done.finished {
            Finished::ReadConfig(Err(error)) => assert!(error.to_string().contains("server.workers"), "{error}"),
            other => panic!("expected a refused config, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(folder);
    }

    #[test]
    fn jobs_that_never_end_are_bounded() {
        // Each of these jobs reads a config path that is a FIFO nobody writes: it stays blocked in open(2), like a
        // given-up job, until a writer comes.
        let folder = std::env::temp_dir().join(format!("corelb-stuck-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let fifo = folder.join("config.toml");
        let _ = std::fs::remove_file(&fifo);
        // mkfifo(1), so that no unsafe call lives outside src/net (tests/layers.rs).
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success(), "mkfifo");
        let mut jobs = Jobs::default();
        let stuck = || Work::ReadConfig(fifo.clone());
        for _ in 0..MAX_STUCK {
            jobs.start(stuck()).unwrap();
        }
        match jobs.start(stuck()) {
            Err(JobError::TooManyStuck(count)) => assert_eq!(count, MAX_STUCK),
            other => panic!("expected a refusal, got {:?}", other.map(|job| job.id)),
        }
        // A writer that opens and closes the FIFO ends every stuck read (each sees an empty file); then jobs start
        // again. Each turn of the loop lets one more reader through, including the one that started last.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let release = || drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
        release();
        loop {
            match jobs.start(stuck()) {
                Ok(_) => break,
                Err(JobError::TooManyStuck(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(error) => panic!("jobs never started again: {error}"),
            }
        }
        release();
        let _ = std::fs::remove_dir_all(folder);
    }
}
