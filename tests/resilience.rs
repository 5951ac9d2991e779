//! Resilience against failing backends: the circuit breaker on real backends, over real sockets. Every wait is for
//! a condition (a state in `ctl backends`, a count at the backend), never for a guessed duration.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::time::{Duration, Instant};

use common::{config_for, metric_sum, Backend, Client, Corelb};
use serde_json::{json, Value};

/// Polls `ctl backends` until `condition` holds of backend `id` (10 s at most); returns its entry.
fn backend_when(corelb: &Corelb, id: &str, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = corelb.control(json!({"cmd": "backends"}));
        assert_eq!(reply["ok"], true, "{reply}");
        let backends = reply["result"]["backends"].as_array().unwrap();
        let entry = backends.iter().find(|entry| entry["id"] == id).unwrap().clone();
        if condition(&entry) {
            return entry;
        }
        assert!(Instant::now() < deadline, "never saw {what}: {entry}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

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
