//! The control thread's end of every worker: one message to all, and one scatter/gather with a deadline that says
//! who did not answer (Sozu's gathering task), instead of a hand-copied loop per question.

use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::worker::{ToWorker, WorkerHandle};

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
