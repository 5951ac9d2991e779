//! Passive outlier detection on real backends over real sockets: the failure-ratio rule, the cap on ejections, and
//! active checks ending an ejection early. Every wait is for a condition (a state in `ctl backends`, a count at the
//! backend), never for a guessed duration; ejections outlast the requests a test sends during them by far, and
//! the test proves they did by reading the same ejection back afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::time::{Duration, Instant};

use common::{backend_when, config_for, metric_sum, Backend, Client, Corelb, Response};
use serde_json::{json, Value};

/// `[outlier_detection]` with no jitter, so ejection times are exact.
fn detection(extra: &str) -> String {
    format!("[outlier_detection]\nenabled = true\njitter = 0.0\n{extra}\n")
}

fn ejected(entry: &Value) -> bool {
    entry["outlier"]["ejected"] == true
}

/// Sends GETs on fresh connections (so both workers see them) until `done` holds of the backends in
/// `ctl backends`; at most 2,000.
fn load_until(corelb: &Corelb, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for sent in 0..2000 {
        let _ = Client::connect(corelb.addr).get("/");
        if sent % 10 == 9 {
            let reply = corelb.control(json!({"cmd": "backends"}));
            let backends = reply["result"]["backends"].as_array().unwrap().clone();
            if done(&backends) {
                return backends;
            }
        }
    }
    panic!("2,000 requests and never saw {what}");
}

/// Backend `id`'s entry in a `ctl backends` list.
fn entry<'a>(backends: &'a [Value], id: &str) -> &'a Value {
    backends.iter().find(|entry| entry["id"] == id).unwrap()
}

fn switch_errors(backend: &Backend, rate: f64, status: u16) {
    let path = format!("/control/errors?rate={rate}&status={status}");
    assert_eq!(Client::connect(backend.addr).get(&path).status, 200);
}

#[test]
fn a_backend_failing_half_its_requests_is_ejected_by_the_ratio_rule_and_readmitted_once_it_recovers() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let flaky = Backend::start_with("flaky", &["--error-rate", "0.5", "--error-status", "503"]);
    // Only the ratio rule: half failing, never two in a row, so the consecutive rule could not fire anyway.
    let rules =
        detection("consecutive_errors = 0\nfailure_ratio = 0.3\nmin_requests = 10\nbase_ejection_time = \"5s\"");
    let corelb = Corelb::start(&config_for(&[(&a, 1), (&b, 1), (&flaky, 1)], 2, "", &rules));
    let id = flaky.id();
    let backends = load_until(&corelb, "the flaky backend ejected on both workers", |backends| {
        let entry = entry(backends, &id);
        ejected(entry) && entry["outlier"]["ejected_on_workers"] == 2
    });
    let entry = entry(&backends, &id);
    assert_eq!(entry["outlier"]["last_reason"], "failure_ratio", "{entry}");
    assert_eq!(entry["outlier"]["ejections"], 1);

    let before = flaky.stats().1;
    for _ in 0..30 {
        let response = Client::connect(corelb.addr).get("/");
        assert_eq!(response.status, 200, "{}", response.text());
        assert_ne!(response.backend_id(), "flaky");
    }
    assert_eq!(flaky.stats().1, before, "no request reached the ejected backend");
    let still = backend_when(&corelb, &id, "listed", |_| true);
    assert!(
        ejected(&still) && still["outlier"]["ejections"] == 1,
        "the same ejection lasted through the requests: {still}"
    );

    switch_errors(&flaky, 0.0, 503);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ejected(&backend_when(&corelb, &id, "listed", |_| true)) {
        assert!(Instant::now() < deadline, "the ejection never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    let served: Vec<Response> = (0..30).map(|_| Client::connect(corelb.addr).get("/")).collect();
    assert!(served.iter().all(|response| response.status == 200));
    assert!(
        served.iter().any(|response| response.backend_id() == "flaky"),
        "readmitted: it serves again"
    );
    let metrics = corelb.scrape();
    let label = format!("backend=\"{id}\",reason=\"failure_ratio\"");
    assert_eq!(
        metric_sum(&metrics, "corelb_outlier_ejections_total", &label),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric_sum(&metrics, "corelb_backend_ejected", ""), 0.0);
    let log = corelb.process.output();
    assert_eq!(
        log.iter()
            .filter(|line| line.contains("outlier ejected") && line.contains(&id))
            .count(),
        1,
        "the ejection is logged once"
    );
}

#[test]
fn with_three_backends_failing_the_cap_keeps_two_in_rotation() {
    let backends: Vec<Backend> = ["x", "y", "z"]
        .iter()
        .map(|id| Backend::start_with(id, &["--error-rate", "1", "--error-status", "502"]))
        .collect();
    let weighted: Vec<(&Backend, u32)> = backends.iter().map(|backend| (backend, 1)).collect();
    // 50 % of three, rounded down, is one.
    let rules = detection("consecutive_errors = 3\nmax_ejection_percent = 50\nbase_ejection_time = \"60s\"");
    let corelb = Corelb::start(&config_for(&weighted, 2, "", &rules));
    load_until(&corelb, "one backend ejected", |backends| backends.iter().any(ejected));
    // Every backend keeps failing: the other two would be ejected but for the cap.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !corelb
        .process
        .output()
        .iter()
        .any(|line| line.contains("outlier not ejected"))
    {
        assert!(Instant::now() < deadline, "the cap was never reported");
        let _ = Client::connect(corelb.addr).get("/");
    }
    for _ in 0..30 {
        let response = Client::connect(corelb.addr).get("/");
        assert_eq!(response.status, 502, "the backends' own answers still reach clients");
    }
    let reply = corelb.control(json!({"cmd": "backends"}));
    let out: Vec<&Value> = reply["result"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| ejected(entry))
        .collect();
    assert_eq!(out.len(), 1, "never more than the cap: {reply}");
    let metrics = corelb.scrape();
    assert_eq!(
        metric_sum(&metrics, "corelb_outlier_ejections_total", ""),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric_sum(&metrics, "corelb_backend_ejected", ""), 1.0);
}

#[test]
fn passing_active_checks_end_an_ejection_long_before_its_time() {
    let steady = Backend::start("steady");
    let broken = Backend::start_with("broken", &["--error-rate", "1", "--error-status", "502"]);
    let checks = "[healthcheck]\nenabled = true\ninterval = \"300ms\"\ntimeout = \"300ms\"\nhealthy_threshold = 2\n";
    let rules = detection("consecutive_errors = 3\nbase_ejection_time = \"300s\"\nmax_ejection_time = \"300s\"");
    let corelb = Corelb::start(&config_for(
        &[(&steady, 1), (&broken, 1)],
        2,
        "",
        &format!("{checks}{rules}"),
    ));
    let id = broken.id();
    // Its /health passes all along: only its requests fail.
    backend_when(&corelb, &id, "checked", |entry| entry["check"] == "healthy");
    load_until(&corelb, "the broken backend ejected", |backends| {
        ejected(entry(backends, &id))
    });
    let ejected_at = Instant::now();
    let deadline = ejected_at + Duration::from_secs(60);
    loop {
        let entry = backend_when(&corelb, &id, "listed", |_| true);
        if !ejected(&entry) && entry["outlier"]["ejected_on_workers"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "passing probes never ended the ejection: {entry}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "a 300 s ejection ended by two passing probes after {:?}",
        ejected_at.elapsed()
    );
    assert!(corelb
        .process
        .output()
        .iter()
        .any(|line| line.contains("outlier ejection over") && line.contains("early=true")));
    let served: Vec<String> = (0..10)
        .map(|_| Client::connect(corelb.addr).get("/").backend_id())
        .collect();
    assert!(
        served.iter().any(|served| served == "broken"),
        "back in rotation: {served:?}"
    );
}
