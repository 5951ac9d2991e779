//! Resilience against failing backends: the circuit breaker on real backends, over real sockets. Every wait is for
//! a condition (a state in `ctl backends`, a count at the backend), never for a guessed duration.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::time::{Duration, Instant};

use common::{backend_when, config_for, metric_sum, Backend, Client, Corelb};
use serde_json::{json, Value};

fn breaker(threshold: u32, timeout: &str, max_half_open: u32) -> String {
    format!(
        "[circuitbreaker]\nenabled = true\nthreshold = {threshold}\ntimeout = \"{timeout}\"\n\
         max_half_open = {max_half_open}\nfailure_statuses = [500, 503]\n"
    )
}

#[test]
fn the_workers_breakers_open_together_after_threshold_failures_in_total() {
    let backend = Backend::start("flaky");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 2, "", &breaker(4, "60s", 1)));
    let before = backend.stats().1;
    let mut workers_seen = std::collections::BTreeSet::new();
    for failure in 1..=4u64 {
        // A new connection each time, so SO_REUSEPORT spreads the failures over both workers.
        let response = Client::connect(corelb.addr).get("/?status=503");
        assert_eq!(response.status, 503, "{}", response.text());
        workers_seen.insert(response.header("x-corelb-worker").unwrap_or("?").to_string());
        // The failure is counted on the worker that saw it (and reported to the control thread).
        backend_when(&corelb, &backend.id(), "the failure counted", |entry| {
            entry["circuit"]["consecutive_failures"] == failure || entry["circuit"]["state"] == "open"
        });
    }
    let entry = backend_when(&corelb, &backend.id(), "the breaker open on both workers", |entry| {
        entry["circuit"]["state"] == "open"
    });
    assert_eq!(entry["circuit"]["by_worker"], json!(["open", "open"]));
    assert_eq!(
        backend.stats().1 - before,
        4,
        "exactly the threshold of failures reached the backend"
    );

    for _ in 0..20 {
        let response = Client::connect(corelb.addr).get("/");
        assert_eq!(response.status, 503, "the circuit is open: {}", response.text());
    }
    assert_eq!(
        backend.stats().1 - before,
        4,
        "no request passed an open breaker, on either worker (failures landed on workers {workers_seen:?})"
    );
    let metrics = corelb.scrape();
    assert_eq!(
        metric_sum(&metrics, "corelb_errors_total", "category=\"circuit_open\""),
        20.0
    );
    assert_eq!(
        metric_sum(&metrics, "corelb_backend_circuit_state", "state=\"open\""),
        2.0,
        "{metrics}"
    );
    assert_eq!(metric_sum(&metrics, "corelb_backend_circuit_trips_total", ""), 2.0);
    assert!(corelb
        .process
        .output()
        .iter()
        .any(|line| line.contains("circuit breaker open") && line.contains(&backend.id())));
}

#[test]
fn half_open_lets_exactly_max_half_open_trials_through_and_a_success_closes_the_breaker() {
    let backend = Backend::start("recovering");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", &breaker(1, "300ms", 2)));
    assert_eq!(corelb.get("/?status=503").status, 503);
    backend_when(&corelb, &backend.id(), "the breaker open", |entry| {
        entry["circuit"]["state"] == "open"
    });
    let before = backend.stats().1;
    // The open time is measured on the monotonic clock: once this much has passed, the next request is a trial.
    std::thread::sleep(Duration::from_millis(300));

    let mut trials: Vec<Client> = (0..2).map(|_| Client::connect(corelb.addr)).collect();
    for trial in &mut trials {
        trial.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.held() < 2 {
        assert!(Instant::now() < deadline, "the two trials never reached the backend");
        std::thread::sleep(Duration::from_millis(5));
    }
    backend_when(&corelb, &backend.id(), "half-open", |entry| {
        entry["circuit"]["state"] == "half_open"
    });
    let refused = Client::connect(corelb.addr).get("/");
    assert_eq!(refused.status, 503, "a third request while two trials run is refused");

    backend.release();
    for trial in &mut trials {
        assert_eq!(trial.read_response().status, 200);
    }
    backend_when(&corelb, &backend.id(), "the breaker closed", |entry| {
        entry["circuit"]["state"] == "closed"
    });
    assert_eq!(corelb.get("/").status, 200);
    assert_eq!(
        backend.stats().1 - before,
        3,
        "two trials and one request after closing"
    );
}

#[test]
fn an_open_breaker_sends_traffic_to_the_other_backends_without_trying_the_failing_one() {
    let failing = Backend::start_with("failing", &["--error-rate", "1"]);
    let healthy = Backend::start("healthy");
    let corelb = Corelb::start(&config_for(
        &[(&failing, 1), (&healthy, 1)],
        1,
        "",
        &breaker(2, "60s", 1),
    ));
    // Round-robin over two: these four requests give the failing backend its two failures (500s).
    for _ in 0..4 {
        corelb.get("/");
    }
    backend_when(&corelb, &failing.id(), "the breaker open", |entry| {
        entry["circuit"]["state"] == "open"
    });
    let before = failing.stats().1;
    for _ in 0..10 {
        let response = corelb.get("/");
        assert_eq!(response.status, 200);
        assert_eq!(response.backend_id(), "healthy");
    }
    assert_eq!(failing.stats().1, before, "the open breaker kept every request away");
}

/// Checks every 500 ms with a 500 ms budget: a loaded machine answering a probe late must not flip a healthy
/// backend, so the budget is far above a loopback answer's time.
fn checks(extra: &str) -> String {
    format!(
        "[healthcheck]\nenabled = true\ninterval = \"500ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 2\n\
         unhealthy_threshold = 2\n{extra}\n"
    )
}

fn switch_health(backend: &Backend, healthy: bool) {
    let path = if healthy {
        "/control/health/ok"
    } else {
        "/control/health/fail"
    };
    assert_eq!(Client::connect(backend.addr).get(path).status, 200);
}

#[test]
fn a_backend_failing_its_checks_leaves_every_worker_and_comes_back_after_the_healthy_threshold() {
    let steady = Backend::start("steady");
    let sick = Backend::start("sick");
    let corelb = Corelb::start(&config_for(&[(&steady, 1), (&sick, 1)], 2, "", &checks("")));
    backend_when(&corelb, &sick.id(), "checked", |entry| entry["check"] == "healthy");

    let switched = Instant::now();
    switch_health(&sick, false);
    backend_when(&corelb, &sick.id(), "unhealthy on both workers", |entry| {
        entry["check"] == "unhealthy" && entry["unhealthy_on_workers"] == 2
    });
    eprintln!(
        "out of rotation on both workers {:?} after the switch",
        switched.elapsed()
    );
    let before = sick.stats().1;
    for _ in 0..20 {
        let response = Client::connect(corelb.addr).get("/");
        assert_eq!(response.status, 200);
        assert_eq!(response.backend_id(), "steady");
    }
    assert_eq!(sick.stats().1, before, "no request reached the unhealthy backend");

    switch_health(&sick, true);
    backend_when(&corelb, &sick.id(), "healthy on both workers", |entry| {
        entry["check"] == "healthy" && entry["unhealthy_on_workers"] == 0
    });
    let served: Vec<String> = (0..10).map(|_| corelb.client().get("/").backend_id()).collect();
    assert!(served.iter().any(|id| id == "sick"), "back in rotation: {served:?}");
    let metrics = corelb.scrape();
    let id = sick.id();
    let to_unhealthy = format!("backend=\"{id}\",to=\"unhealthy\"");
    assert_eq!(
        metric_sum(&metrics, "corelb_health_transitions_total", &to_unhealthy),
        1.0
    );
    let failed = format!("backend=\"{id}\",result=\"unexpected_status\"");
    assert!(
        metric_sum(&metrics, "corelb_health_checks_total", &failed) >= 2.0,
        "{metrics}"
    );
    let log = corelb.process.output();
    assert_eq!(
        log.iter()
            .filter(|line| line.contains("backend unhealthy") && line.contains(&id))
            .count(),
        1,
        "the flip is logged once"
    );
}

#[test]
fn with_every_backend_unhealthy_fail_open_spreads_requests_and_fail_closed_refuses_them() {
    for (mode, expected) in [("fail_open", 200), ("fail_closed", 503)] {
        let a = Backend::start("a");
        let b = Backend::start("b");
        let extra = checks(&format!("panic_mode = \"{mode}\""));
        let corelb = Corelb::start(&config_for(&[(&a, 1), (&b, 1)], 1, "", &extra));
        switch_health(&a, false);
        switch_health(&b, false);
        for backend in [&a, &b] {
            backend_when(&corelb, &backend.id(), "unhealthy", |entry| {
                entry["unhealthy_on_workers"] == 1
            });
        }
        let statuses: Vec<u16> = (0..6).map(|_| corelb.get("/").status).collect();
        assert!(
            statuses.iter().all(|status| *status == expected),
            "{mode}: {statuses:?}"
        );
        let metrics = corelb.scrape();
        if mode == "fail_open" {
            assert_eq!(metric_sum(&metrics, "corelb_panic_routed_requests_total", ""), 6.0);
            assert!(a.stats().1 > 0 && b.stats().1 > 0, "spread over both");
        } else {
            let refused = metric_sum(&metrics, "corelb_errors_total", "category=\"no_healthy_backend\"");
            assert_eq!(refused, 6.0);
            assert_eq!(a.stats().1 + b.stats().1, 0);
        }
    }
}

/// The prober's own CPU time so far, from /proc (utime + stime, in clock ticks of 10 ms).
fn prober_cpu_ticks(pid: u32) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let task = task.ok()?.path();
        let name = std::fs::read_to_string(task.join("comm")).ok()?;
        if name.trim() == "corelb-prober" {
            let stat = std::fs::read_to_string(task.join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            return Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?);
        }
    }
    None
}

#[test]
fn one_prober_keeps_up_with_a_thousand_backends_at_a_one_second_interval() {
    let backend = Backend::start("many");
    let mut extra = String::from("[healthcheck]\nenabled = true\ninterval = \"1s\"\ntimeout = \"1s\"\n");
    let mut backends = String::new();
    for index in 0..1000 {
        backends.push_str(&format!(
            "[[backends]]\nid = \"b{index}\"\nurl = \"{}\"\n\n",
            backend.url()
        ));
    }
    extra.push_str(&backends);
    let config = config_for(&[], 1, "", &extra);
    let corelb = Corelb::start(&config);
    let started = Instant::now();
    let cpu_before = prober_cpu_ticks(corelb.process.pid()).expect("a corelb-prober thread");
    // Two full rounds: every backend probed at least twice.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = corelb.scrape();
        let probed_twice = metrics
            .lines()
            .filter(|line| line.starts_with("corelb_health_checks_total{") && line.contains("result=\"ok\""))
            .filter(|line| line.rsplit(' ').next().and_then(|value| value.parse::<f64>().ok()) >= Some(2.0))
            .count();
        if probed_twice == 1000 {
            break;
        }
        assert!(Instant::now() < deadline, "the prober fell behind");
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = started.elapsed();
    let cpu = prober_cpu_ticks(corelb.process.pid()).unwrap() - cpu_before;
    eprintln!(
        "1,000 backends, 1 s interval: every one probed twice in {elapsed:?}; prober CPU {} ms ({:.1} % of a core)",
        cpu * 10,
        cpu as f64 * 10.0 / elapsed.as_millis() as f64 * 100.0
    );
    assert!(corelb.get("/").status == 200);
}

fn retries(extra: &str) -> String {
    format!("[retries]\nbackoff = \"1ms\"\nbackoff_max = \"2ms\"\n{extra}\n")
}

#[test]
fn a_try_that_times_out_goes_to_another_backend_and_the_deadline_ends_the_request() {
    let slow = Backend::start_with("slow", &["--latency", "3s"]);
    let fast = Backend::start("fast");
    let extra = format!("[timeouts]\nper_try = \"1s\"\nrequest = \"20s\"\n{}", retries(""));
    let corelb = Corelb::start(&config_for(&[(&slow, 1), (&fast, 1)], 1, "", &extra));
    for _ in 0..4 {
        let response = corelb.get("/");
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.backend_id(), "fast");
    }
    let metrics = corelb.scrape();
    assert!(
        metric_sum(&metrics, "corelb_retries_total", "reason=\"per_try_timeout\"") >= 2.0,
        "{metrics}"
    );

    // A POST may have been acted on: it is not sent again after a timeout.
    let mut client = corelb.client();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
        let response = client.read_response();
        statuses.push(response.status);
        if response.status != 200 {
            client = corelb.client();
        }
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 504], "one POST went to the slow backend and timed out");
    let timed_out = format!("backend=\"{}\",category=\"upstream_timeout\"", slow.id());
    assert_eq!(
        metric_sum(&corelb.scrape(), "corelb_errors_total", &timed_out),
        1.0,
        "the failure is counted for the backend, by category"
    );

    // Both slow and a deadline shorter than their latency: the deadline answers, not the backend.
    let deadline = format!(
        "[[frontends]]\nname = \"strict\"\naddress = \"127.0.0.1\"\nport = 0\nrequest_timeout = \"300ms\"\n\
         per_try_timeout = \"1s\"\n{}",
        retries("")
    );
    let only_slow = Corelb::start(&config_for(&[(&slow, 1)], 1, "", &deadline));
    let strict = only_slow.frontend_addr("strict");
    let response = Client::connect(strict).get("/");
    assert_eq!(response.status, 504);
    assert!(response.text().contains("request_timeout"), "{}", response.text());
}

#[test]
fn a_status_listed_in_on_status_sends_an_idempotent_request_elsewhere() {
    let failing = Backend::start_with("failing", &["--error-rate", "1"]);
    let healthy = Backend::start("healthy");
    let extra = retries("on_status = [500]");
    let corelb = Corelb::start(&config_for(&[(&failing, 1), (&healthy, 1)], 1, "", &extra));
    for _ in 0..6 {
        let response = corelb.get("/");
        assert_eq!(response.status, 200);
        assert_eq!(response.backend_id(), "healthy");
    }
    let failed_tries = failing.stats().1;
    assert!(failed_tries >= 1, "round-robin sent GETs to the failing backend first");
    let retried = metric_sum(&corelb.scrape(), "corelb_retries_total", "reason=\"status\"");
    assert_eq!(
        retried, failed_tries as f64,
        "each 500 was retried elsewhere, none reached the client"
    );
    let mut posts = Vec::new();
    for _ in 0..2 {
        let mut client = corelb.client();
        client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
        posts.push(client.read_response().status);
    }
    posts.sort_unstable();
    assert_eq!(posts, [200, 500], "a POST's 500 reaches the client: it is not retried");
}

#[test]
fn with_every_backend_failing_the_budget_keeps_attempts_within_a_fifth_more_than_requests() {
    let a = Backend::start_with("a", &["--error-rate", "1"]);
    let b = Backend::start_with("b", &["--error-rate", "1"]);
    let extra = retries("on_status = [500]\nbudget_ratio = 0.2\nbudget_min_per_second = 1.0\nbudget_window = \"60s\"");
    let corelb = Corelb::start(&config_for(&[(&a, 1), (&b, 1)], 1, "", &extra));
    let requests = 300u64;
    let mut client = corelb.client();
    for _ in 0..requests {
        assert_eq!(client.get("/").status, 500);
    }
    let attempts = a.stats().1 + b.stats().1;
    let ratio = attempts as f64 / requests as f64;
    eprintln!("full outage: {attempts} upstream attempts for {requests} requests (ratio {ratio:.3})");
    // 0.2 per request plus the reserve of 1 a second over the 60 s window.
    assert!(attempts <= requests + requests / 5 + 60, "amplification {ratio}");
    assert!(attempts > requests, "retries were made while the budget lasted");
    let metrics = corelb.scrape();
    assert!(metric_sum(&metrics, "corelb_retries_total", "reason=\"budget_exhausted\"") > 0.0);
}

/// What one hung-backend run saw.
struct HungRun {
    failures: Vec<String>,
    /// From SIGSTOP until every worker had stopped sending to the hung backend (by `ctl backends`).
    routed_around: Duration,
    /// From SIGSTOP until the first 100 ms in which the clients completed at least 90 % of the GETs they did per
    /// 100 ms before it.
    recovered: Option<Duration>,
    baseline_per_second: f64,
    slowest: Duration,
    gets: usize,
    /// GETs completed in each 100 ms after SIGSTOP.
    curve: Vec<usize>,
}

/// Eight keep-alive clients on three backends; one is stopped with SIGSTOP (a wedged process: its socket accepts,
/// nothing answers) a second into the load, and the load goes on for two seconds after corelb has routed around
/// it. `passive` is the config that must notice (breaker or outlier detection), `routed` the `ctl backends` state
/// that shows it did. The clients stop by themselves after 20,000 GETs each at most.
fn hung_backend_run(passive: &str, routed: impl Fn(&Value) -> bool) -> HungRun {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let hung = Backend::start("hung");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let extra = format!("[timeouts]\nper_try = \"1s\"\n{}{passive}", retries(""));
    let corelb = Corelb::start(&config_for(&[(&hung, 1), (&b, 1), (&c, 1)], 2, "", &extra));
    let done = Arc::new(AtomicUsize::new(0));
    let (stopped, finish) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let start = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, done) = (corelb.addr, Arc::clone(&done));
            let (stopped, finish) = (Arc::clone(&stopped), Arc::clone(&finish));
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut failures = Vec::new();
                let mut slowest_after_stop = Duration::ZERO;
                let mut completed = Vec::new();
                while !finish.load(Ordering::SeqCst) && completed.len() < 20_000 {
                    let started = Instant::now();
                    let response = client.get("/");
                    if stopped.load(Ordering::SeqCst) {
                        slowest_after_stop = slowest_after_stop.max(started.elapsed());
                    }
                    if response.status != 200 {
                        failures.push(format!("{} {}", response.status, response.text().trim()));
                        client = Client::connect(addr);
                    }
                    completed.push(start.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                (failures, slowest_after_stop, completed)
            })
        })
        .collect();
    while done.load(Ordering::Relaxed) < 400 {
        std::thread::yield_now();
    }
    let baseline_from = start.elapsed();
    // A measurement, not a wait for a condition: the rate before the stop is what recovery is compared with.
    std::thread::sleep(Duration::from_secs(1));
    let stopped_at = start.elapsed();
    hung.process.signal(libc::SIGSTOP);
    stopped.store(true, Ordering::SeqCst);
    backend_when(&corelb, &hung.id(), "the hung backend routed around", &routed);
    let routed_around = start.elapsed() - stopped_at;
    std::thread::sleep(Duration::from_secs(2));
    finish.store(true, Ordering::SeqCst);
    let mut run = HungRun {
        failures: Vec::new(),
        routed_around,
        recovered: None,
        baseline_per_second: 0.0,
        slowest: Duration::ZERO,
        gets: 0,
        curve: Vec::new(),
    };
    let mut completions = Vec::new();
    for client in clients {
        let (seen, slow, completed) = client.join().expect("client thread");
        run.failures.extend(seen);
        run.slowest = run.slowest.max(slow);
        completions.extend(completed);
    }
    hung.process.signal(libc::SIGCONT);
    run.gets = completions.len();
    let baseline = completions
        .iter()
        .filter(|at| (baseline_from..stopped_at).contains(at))
        .count() as f64
        / (stopped_at - baseline_from).as_secs_f64();
    run.baseline_per_second = baseline;
    let bucket = Duration::from_millis(100);
    let end = completions.iter().max().copied().unwrap_or(stopped_at);
    let mut from = stopped_at;
    while from + bucket <= end {
        let count = completions
            .iter()
            .filter(|at| (from..from + bucket).contains(at))
            .count();
        if run.recovered.is_none() && count as f64 >= 0.9 * baseline * bucket.as_secs_f64() {
            run.recovered = Some(from + bucket - stopped_at);
        }
        run.curve.push(count);
        from += bucket;
    }
    run
}

fn report_hung(label: &str, run: &HungRun) {
    eprintln!(
        "hung backend, {label}: routed around on both workers {:?} after SIGSTOP; throughput back to >= 90 % of \
         {:.0} GET/s {:?} after it; slowest GET after it {:?}; {} of {} GETs failed; GETs per 100 ms after it: {:?}",
        run.routed_around,
        run.baseline_per_second,
        run.recovered,
        run.slowest,
        run.failures.len(),
        run.gets,
        run.curve
    );
}

#[test]
fn a_hung_backend_is_routed_around_by_the_breakers_and_no_get_fails() {
    let run = hung_backend_run(&breaker(3, "60s", 1), |entry| entry["circuit"]["state"] == "open");
    report_hung("circuit breaker", &run);
    assert!(run.failures.is_empty(), "GETs failed: {:?}", run.failures);
}

#[test]
fn a_hung_backend_is_ejected_by_outlier_detection_with_active_checks_off_and_no_get_fails() {
    let detection = "[outlier_detection]\nenabled = true\nconsecutive_errors = 3\nbase_ejection_time = \"60s\"\n";
    let run = hung_backend_run(detection, |entry| {
        entry["outlier"]["ejected"] == true && entry["outlier"]["ejected_on_workers"] == 2
    });
    report_hung("outlier detection", &run);
    assert!(run.failures.is_empty(), "GETs failed: {:?}", run.failures);
}

#[test]
fn a_backend_added_to_a_running_service_ramps_up_while_the_first_ones_take_their_full_share() {
    let first = Backend::start("first");
    let joining = Backend::start("joining");
    let corelb = Corelb::start(&config_for(&[(&first, 1)], 1, "", "[upstream]\nslow_start = \"1h\"\n"));
    let added = corelb.control(json!({"cmd": "backend_add", "url": joining.url(), "id": "joining"}));
    assert_eq!(added["ok"], true, "{added}");
    let entry = backend_when(&corelb, "joining", "in the pool", |entry| entry["share"].is_number());
    assert_eq!(entry["share"], 0.1, "a tenth of its turns at first: {entry}");
    let mut client = corelb.client();
    let mut served = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..200 {
        *served.entry(client.get("/").backend_id()).or_default() += 1;
    }
    // At its full share it would serve 100 of 200. An hour's ramp has barely begun, so it takes a tenth of the
    // turns it is offered (round-robin offers it the next turn again after each it declines): about 20.
    let joined = served.get("joining").copied().unwrap_or(0);
    assert!(
        (15..=25).contains(&joined),
        "the joining backend served {joined} of 200: {served:?}"
    );
    let entry = backend_when(&corelb, &first.id(), "listed", |_| true);
    assert_eq!(
        entry["share"], 1.0,
        "a backend of the first config takes its full share at once"
    );
}
