//! Passive outlier detection (Envoy's outlier ejection), decided on the control thread from what every worker saw.
//! Workers only count each backend's answers and gateway errors and send the counts every 100 ms
//! (`shard::outcomes`); here they are added up per backend, and on each tick a backend is ejected when the
//! workers together saw `consecutive_errors` gateway errors in a row, or a failure ratio of `failure_ratio` over
//! `window` with at least `min_requests` requests. The n-th ejection in a row lasts n × `base_ejection_time`
//! (capped at `max_ejection_time`, plus up to `jitter` more); n falls by one for each `window` a backend serves
//! without being ejected. At most `max_ejection_percent` of the backends are out at once, but at least one may
//! be. With active checks on, a backend whose probes pass `healthy_threshold` times after its ejection comes back
//! early. Deciding here rather than on each core means every core ejects the same backend at the same time, and
//! the cap counts the whole process.
//!
//! Pure bookkeeping, fed `(report, now)` and ticked with `now`, unit-tested with time passed in; the control loop
//! sends the orders.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::OutlierConfig;
use crate::shard::OutcomeReport;
use crate::upstream::window::SlidingCounts;

/// Why a backend was ejected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// Gateway errors in a row, over every worker.
    ConsecutiveErrors { errors: u32 },
    /// Failed requests over the window.
    FailureRatio { failures: u64, requests: u64 },
}

impl Reason {
    /// The label in metrics and the log.
    pub fn label(self) -> &'static str {
        match self {
            Reason::ConsecutiveErrors { .. } => "consecutive_errors",
            Reason::FailureRatio { .. } => "failure_ratio",
        }
    }
}

/// What the control thread does after a tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Tell every worker the backend is out until `until`.
    Eject {
        backend: String,
        addr: SocketAddr,
        until: Instant,
        reason: Reason,
        /// Which ejection in a row this is (it sets the duration).
        multiplier: u32,
    },
    /// The ejection ended; `early`: the active checks passed before its time was up (the workers are told), else
    /// its time is up (the workers know already).
    Readmit {
        backend: String,
        addr: SocketAddr,
        early: bool,
    },
    /// The backend should be ejected, but `max_ejection_percent` of the backends are out already. Reported once
    /// per spell.
    Capped { backend: String, reason: Reason },
}

/// What the active checks say of a backend, for ending an ejection early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeWord {
    /// Probes passed so far.
    pub passed: u64,
    /// Probes passed in a row right now.
    pub in_a_row: u32,
    /// Passes that make a backend healthy (`healthcheck.healthy_threshold`).
    pub threshold: u32,
}

/// One backend as outlier detection sees it.
#[derive(Debug)]
struct Watched {
    addr: SocketAddr,
    /// Requests and failures over the window, every worker's added up.
    counts: SlidingCounts,
    /// Each worker's current run of gateway errors.
    runs: Vec<u32>,
    /// The longest run one worker reported since the last tick.
    longest_run: u32,
    ejected_until: Option<Instant>,
    /// Passed probes when it was ejected (active checks on).
    passed_at_ejection: Option<u64>,
    /// Ejections in a row (sets the next duration).
    multiplier: u32,
    /// When it last came back.
    back_since: Option<Instant>,
    /// Ejections so far by reason, for metrics.
    ejections: BTreeMap<&'static str, u64>,
    /// A capped ejection was reported since it last was under the cap.
    capped: bool,
    last_reason: Option<Reason>,
}

impl Watched {
    fn new(addr: SocketAddr, window: Duration, now: Instant) -> Watched {
        Watched {
            addr,
            counts: SlidingCounts::new(window, now),
            runs: Vec::new(),
            longest_run: 0,
            ejected_until: None,
            passed_at_ejection: None,
            multiplier: 0,
            back_since: None,
            ejections: BTreeMap::new(),
            capped: false,
            last_reason: None,
        }
    }

    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// Why it should be ejected now, if it should.
    fn verdict(&self, settings: &OutlierConfig, now: Instant) -> Option<Reason> {
        let run = self.longest_run.max(self.runs.iter().sum());
        if settings.consecutive_errors > 0 && run >= settings.consecutive_errors {
            return Some(Reason::ConsecutiveErrors { errors: run });
        }
        let (requests, failures) = self.counts.sums(now);
        let enough = requests >= u64::from(settings.min_requests) && requests > 0;
        if settings.failure_ratio > 0.0 && enough && failures as f64 >= settings.failure_ratio * requests as f64 {
            return Some(Reason::FailureRatio { failures, requests });
        }
        None
    }

    /// Starts over after an ejection: what the backend did before it says nothing of what it does after.
    fn forget_counts(&mut self) {
        self.counts.clear();
        self.runs.fill(0);
        self.longest_run = 0;
    }
}

/// One backend's outlier state, for `ctl backends` and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierView {
    pub ejected_until: Option<Instant>,
    /// Ejections so far by reason.
    pub ejections: BTreeMap<&'static str, u64>,
    pub last_reason: Option<Reason>,
}

/// Every backend's outlier state.
#[derive(Debug, Default)]
pub struct Outliers {
    backends: HashMap<String, Watched>,
}

impl Outliers {
    /// Adds one worker's counts. Counts for a backend while it is ejected (the fallback when nothing else could
    /// serve) are left out: it is judged on what it does once back.
    pub fn observe(&mut self, report: &OutcomeReport, workers: usize, settings: &OutlierConfig, now: Instant) {
        for entry in &report.backends {
            let watched = self
                .backends
                .entry(entry.backend.clone())
                .or_insert_with(|| Watched::new(entry.addr, settings.window, now));
            if watched.addr != entry.addr {
                // Moved: a new backend.
                *watched = Watched::new(entry.addr, settings.window, now);
            }
            if watched.ejected(now) {
                continue;
            }
            watched.runs.resize(workers.max(report.worker + 1), 0);
            watched.runs[report.worker] = entry.tally.consecutive;
            watched.longest_run = watched.longest_run.max(entry.tally.longest_run);
            watched
                .counts
                .add(now, u64::from(entry.tally.requests), u64::from(entry.tally.failures));
        }
    }

    /// Decides what changes now. `configured`: every backend of the running config; `random`: a fraction in
    /// [0, 1) for the jitter; `probes`: the active checks' word on a backend, when it is checked.
    pub fn tick(
        &mut self,
        configured: &[(String, SocketAddr)],
        settings: &OutlierConfig,
        now: Instant,
        random: f64,
        probes: impl Fn(&str) -> Option<ProbeWord>,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        // Gone from the config (or detection turned off): forgotten, and any ejection ends with it.
        self.backends.retain(|id, watched| {
            let kept = configured
                .iter()
                .any(|(configured, addr)| configured == id && *addr == watched.addr);
            if !kept && watched.ejected(now) {
                decisions.push(Decision::Readmit {
                    backend: id.clone(),
                    addr: watched.addr,
                    early: true,
                });
            }
            kept
        });
        for (id, watched) in &mut self.backends {
            let Some(until) = watched.ejected_until else {
                continue;
            };
            let probed_back = probes(id)
                .zip(watched.passed_at_ejection)
                .is_some_and(|(word, before)| {
                    word.passed >= before + u64::from(word.threshold) && word.in_a_row >= word.threshold
                });
            if now >= until || probed_back {
                watched.ejected_until = None;
                watched.back_since = Some(now);
                watched.forget_counts();
                decisions.push(Decision::Readmit {
                    backend: id.clone(),
                    addr: watched.addr,
                    early: now < until,
                });
            }
        }
        let cap = ejection_cap(configured.len(), settings.max_ejection_percent);
        let mut out = self.backends.values().filter(|watched| watched.ejected(now)).count();
        // In config order, so that which backend the cap leaves in does not depend on hashing.
        for (id, _) in configured {
            let Some(watched) = self.backends.get_mut(id) else {
                continue;
            };
            if watched.ejected(now) {
                continue;
            }
            let verdict = watched.verdict(settings, now);
            watched.longest_run = 0;
            let Some(reason) = verdict else {
                watched.capped = false;
                continue;
            };
            if out >= cap {
                if !std::mem::replace(&mut watched.capped, true) {
                    decisions.push(Decision::Capped {
                        backend: id.clone(),
                        reason,
                    });
                }
                continue;
            }
            out += 1;
            let served = watched
                .back_since
                .map_or(Duration::MAX, |since| now.saturating_duration_since(since));
            let decay = (served.as_nanos() / settings.window.as_nanos().max(1)).min(u128::from(u32::MAX)) as u32;
            watched.multiplier = watched.multiplier.saturating_sub(decay).saturating_add(1);
            let until = now + ejection_time(settings, watched.multiplier, random);
            watched.ejected_until = Some(until);
            watched.passed_at_ejection = probes(id).map(|word| word.passed);
            *watched.ejections.entry(reason.label()).or_insert(0) += 1;
            watched.capped = false;
            watched.last_reason = Some(reason);
            watched.forget_counts();
            decisions.push(Decision::Eject {
                backend: id.clone(),
                addr: watched.addr,
                until,
                reason,
                multiplier: watched.multiplier,
            });
        }
        decisions
    }

    /// A backend's outlier state, when it has one.
    pub fn view(&self, id: &str) -> Option<OutlierView> {
        self.backends.get(id).map(|watched| OutlierView {
            ejected_until: watched.ejected_until,
            ejections: watched.ejections.clone(),
            last_reason: watched.last_reason,
        })
    }
}

/// Backends that may be ejected at once: `percent` of them, rounded down, but at least one (Envoy's rule, so that
/// two or three backends can still lose their bad one); none when `percent` is 0.
pub fn ejection_cap(backends: usize, percent: u32) -> usize {
    if percent == 0 || backends == 0 {
        return 0;
    }
    (backends * percent as usize / 100).max(1)
}

/// How long the `multiplier`-th ejection in a row lasts: the base times the multiplier, capped, plus up to the
/// jitter share more (`random` in [0, 1)).
pub fn ejection_time(settings: &OutlierConfig, multiplier: u32, random: f64) -> Duration {
    let base = settings
        .base_ejection_time
        .saturating_mul(multiplier.max(1))
        .min(settings.max_ejection_time);
    base.mul_f64(1.0 + settings.jitter * random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{BackendTally, Tally};

    fn settings() -> OutlierConfig {
        OutlierConfig {
            enabled: true,
            consecutive_errors: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
            jitter: 0.0,
            failure_statuses: vec![502, 503, 504],
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn configured(count: u16) -> Vec<(String, SocketAddr)> {
        (0..count).map(|index| (format!("b{index}"), addr(index))).collect()
    }

    fn report(worker: usize, backend: u16, tally: Tally) -> OutcomeReport {
        OutcomeReport {
            worker,
            backends: vec![BackendTally {
                backend: format!("b{backend}"),
                addr: addr(backend),
                tally,
            }],
        }
    }

    fn tally(requests: u32, failures: u32, consecutive: u32) -> Tally {
        Tally {
            requests,
            failures,
            consecutive,
            longest_run: consecutive,
        }
    }

    fn ejected(decisions: &[Decision]) -> Vec<String> {
        decisions
            .iter()
            .filter_map(|decision| match decision {
                Decision::Eject { backend, .. } => Some(backend.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn runs_of_gateway_errors_on_two_workers_add_up_to_an_ejection() {
        let (now, backends, settings) = (Instant::now(), configured(3), settings());
        let mut outliers = Outliers::default();
        outliers.observe(&report(0, 0, tally(3, 3, 3)), 2, &settings, now);
        assert!(ejected(&outliers.tick(&backends, &settings, now, 0.0, |_| None)).is_empty());
        outliers.observe(&report(1, 0, tally(2, 2, 2)), 2, &settings, now);
        let decisions = outliers.tick(&backends, &settings, now, 0.0, |_| None);
        assert_eq!(
            decisions,
            [Decision::Eject {
                backend: "b0".into(),
                addr: addr(0),
                until: now + Duration::from_secs(30),
                reason: Reason::ConsecutiveErrors { errors: 5 },
                multiplier: 1,
            }]
        );
        let view = outliers.view("b0").unwrap();
        assert_eq!(view.ejections.get("consecutive_errors"), Some(&1));
        assert_eq!(view.ejected_until, Some(now + Duration::from_secs(30)));
    }

    #[test]
    fn a_run_ended_between_two_reports_still_counts() {
        let (now, backends, settings) = (Instant::now(), configured(2), settings());
        let mut outliers = Outliers::default();
        let ended = Tally {
            requests: 6,
            failures: 5,
            consecutive: 0,
            longest_run: 5,
        };
        outliers.observe(&report(0, 1, ended), 1, &settings, now);
        assert_eq!(
            ejected(&outliers.tick(&backends, &settings, now, 0.0, |_| None)),
            ["b1"]
        );
    }

    #[test]
    fn a_failure_ratio_ejects_only_with_enough_requests_in_the_window() {
        let (start, backends, settings) = (Instant::now(), configured(2), settings());
        let mut outliers = Outliers::default();
        // Half failing, never more than one in a row.
        outliers.observe(&report(0, 0, tally(18, 9, 0)), 1, &settings, start);
        assert!(
            ejected(&outliers.tick(&backends, &settings, start, 0.0, |_| None)).is_empty(),
            "18 requests are too few"
        );
        let later = start + Duration::from_secs(12);
        outliers.observe(&report(0, 0, tally(10, 5, 0)), 1, &settings, later);
        assert!(
            ejected(&outliers.tick(&backends, &settings, later, 0.0, |_| None)).is_empty(),
            "the first 18 have left the window"
        );
        outliers.observe(&report(0, 0, tally(10, 5, 1)), 1, &settings, later);
        let decisions = outliers.tick(&backends, &settings, later, 0.0, |_| None);
        assert!(matches!(
            decisions[..],
            [Decision::Eject {
                reason: Reason::FailureRatio {
                    failures: 10,
                    requests: 20
                },
                ..
            }]
        ));
    }

    #[test]
    fn ejections_grow_while_they_come_in_a_row_and_shrink_with_good_service() {
        let (start, backends, settings) = (Instant::now(), configured(2), settings());
        let mut outliers = Outliers::default();
        let mut now = start;
        let mut durations = Vec::new();
        for _ in 0..12 {
            outliers.observe(&report(0, 0, tally(5, 5, 5)), 1, &settings, now);
            let decisions = outliers.tick(&backends, &settings, now, 0.0, |_| None);
            let until = outliers.view("b0").unwrap().ejected_until.unwrap();
            assert_eq!(ejected(&decisions), ["b0"]);
            durations.push(until.duration_since(now).as_secs());
            now = until;
            let back = outliers.tick(&backends, &settings, now, 0.0, |_| None);
            assert!(matches!(back[..], [Decision::Readmit { early: false, .. }]));
        }
        assert_eq!(durations[..4], [30, 60, 90, 120]);
        assert_eq!(durations[11], 300, "capped at max_ejection_time");
        // Served well for two windows: two steps down, from 12 to 10, so the next is the 11th: 330 s, capped.
        now += Duration::from_secs(20);
        outliers.observe(&report(0, 0, tally(5, 5, 5)), 1, &settings, now);
        let decisions = outliers.tick(&backends, &settings, now, 0.0, |_| None);
        assert!(
            matches!(decisions[..], [Decision::Eject { multiplier: 11, until, .. }] if until == now + Duration::from_secs(300)),
            "{decisions:?}"
        );
        let jittered = ejection_time(
            &OutlierConfig {
                jitter: 0.1,
                ..settings.clone()
            },
            1,
            0.5,
        );
        assert_eq!(jittered, Duration::from_secs_f64(31.5));
    }

    #[test]
    fn never_more_than_the_cap_is_out_but_always_one_may_be() {
        assert_eq!(ejection_cap(2, 50), 1);
        assert_eq!(ejection_cap(3, 10), 1, "at least one");
        assert_eq!(ejection_cap(10, 50), 5);
        assert_eq!(ejection_cap(4, 0), 0, "0 turns ejection off");
        let (now, backends, settings) = (Instant::now(), configured(3), settings());
        let mut outliers = Outliers::default();
        for backend in 0..3 {
            outliers.observe(&report(0, backend, tally(5, 5, 5)), 1, &settings, now);
        }
        let decisions = outliers.tick(&backends, &settings, now, 0.0, |_| None);
        assert_eq!(ejected(&decisions), ["b0"], "one of three at 50 %");
        let capped = decisions
            .iter()
            .filter(|decision| matches!(decision, Decision::Capped { .. }))
            .count();
        assert_eq!(capped, 2);
        outliers.observe(&report(0, 1, tally(5, 5, 5)), 1, &settings, now);
        let again = outliers.tick(&backends, &settings, now, 0.0, |_| None);
        assert!(again.is_empty(), "still capped, and reported once: {again:?}");
    }

    #[test]
    fn passing_probes_end_an_ejection_early() {
        let (now, backends, settings) = (Instant::now(), configured(2), settings());
        let mut outliers = Outliers::default();
        let mut word = ProbeWord {
            passed: 7,
            in_a_row: 7,
            threshold: 2,
        };
        outliers.observe(&report(0, 0, tally(5, 5, 5)), 1, &settings, now);
        outliers.tick(&backends, &settings, now, 0.0, |_| Some(word));
        word.passed = 8;
        let later = now + Duration::from_secs(1);
        assert!(outliers
            .tick(&backends, &settings, later, 0.0, |_| Some(word))
            .is_empty());
        word.passed = 9;
        let back = outliers.tick(&backends, &settings, later, 0.0, |_| Some(word));
        assert_eq!(
            back,
            [Decision::Readmit {
                backend: "b0".into(),
                addr: addr(0),
                early: true
            }]
        );
    }

    #[test]
    fn a_backend_removed_from_the_config_is_forgotten_and_its_ejection_ends() {
        let (now, settings) = (Instant::now(), settings());
        let mut outliers = Outliers::default();
        outliers.observe(&report(0, 0, tally(5, 5, 5)), 1, &settings, now);
        assert_eq!(
            ejected(&outliers.tick(&configured(1), &settings, now, 0.0, |_| None)),
            ["b0"]
        );
        let decisions = outliers.tick(&[], &settings, now, 0.0, |_| None);
        assert!(matches!(decisions[..], [Decision::Readmit { early: true, .. }]));
        assert_eq!(outliers.view("b0"), None);
    }
}
