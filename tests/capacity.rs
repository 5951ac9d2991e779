//! Backend capacity (`[[backends]] max_connections`) through the real binary: the example backend counts the
//! connections open to it, so the limit is checked where it matters, across workers; a backend at capacity is
//! skipped by every algorithm; past capacity requests wait in a bounded queue, or are answered 503 at once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::time::{Duration, Instant};

use common::{config_from_urls, metric_sum, Backend, Client, Corelb};

/// A config with `backends` as (backend, its `max_connections` if any) and `extra` TOML after them.
fn config(backends: &[(&Backend, Option<u32>)], workers: usize, extra: &str) -> String {
    let mut listed = String::new();
    for (backend, limit) in backends {
        listed.push_str(&format!(
            "[[backends]]\nid = \"{}\"\nurl = \"{}\"\n",
            backend.id,
            backend.url()
        ));
        if let Some(limit) = limit {
            listed.push_str(&format!("max_connections = {limit}\n"));
        }
        listed.push('\n');
    }
    config_from_urls(&[], workers, "", &format!("{listed}{extra}"))
}

/// Waits (at most 10 s) until `done` holds, saying `what` if it never does.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Requests waiting in corelb's capacity queues, over every worker.
fn queued(corelb: &Corelb) -> u64 {
    metric_sum(&corelb.scrape(), "corelb_capacity_queue_requests", "") as u64
}

/// A client whose `GET /hold` has been sent; its response is read later.
fn holding(corelb: &Corelb) -> Client {
    let mut client = corelb.client();
    client.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    client
}

#[test]
fn connections_across_workers_never_exceed_max_connections_and_the_rest_wait_their_turn() {
    let backend = Backend::start("capped");
    let corelb = Corelb::start(&config(
        &[(&backend, Some(3))],
        2,
        "[upstream]\ncapacity_queue = 64\ncapacity_queue_timeout = \"30s\"\n[timeouts]\nrequest = \"60s\"\n",
    ));
    let mut clients: Vec<Client> = (0..10).map(|_| holding(&corelb)).collect();
    // Every request is either held at the backend or waiting in corelb: only then is the split final.
    wait_for("all 10 requests held or queued", || {
        backend.held() + queued(&corelb) == 10
    });
    let (open, peak) = backend.open_connections();
    println!(
        "10 requests, max_connections = 3 on 2 workers: {open} open at the backend, {} queued",
        queued(&corelb)
    );
    assert!(
        open <= 3 && peak <= 3,
        "{open} open, {peak} at most, over max_connections = 3"
    );
    assert!(open >= 1, "{open} open");
    // Released a round at a time, the waiting requests take the freed connections; none is refused.
    let mut answered = 0;
    while answered < 10 {
        wait_for("a held request", || backend.held() > 0);
        let held = backend.held() as usize;
        backend.release();
        answered += held;
        wait_for("the released requests to leave the queue count", || {
            backend.held() + queued(&corelb) == (10 - answered) as u64 || answered >= 10
        });
    }
    for client in &mut clients {
        let response = client.read_response();
        assert_eq!(response.status, 200, "{response:?}");
    }
    let (_, peak) = backend.open_connections();
    assert!(peak <= 3, "{peak} connections open at once, over max_connections = 3");
}

#[test]
fn with_no_queue_a_request_past_capacity_is_answered_503_at_once_and_a_freed_connection_is_reused() {
    let backend = Backend::start("capped");
    let corelb = Corelb::start(&config(&[(&backend, Some(2))], 1, "[upstream]\ncapacity_queue = 0\n"));
    let mut held: Vec<Client> = (0..2).map(|_| holding(&corelb)).collect();
    wait_for("two held", || backend.held() == 2);
    let refused = corelb.get("/");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.text().contains("backend_at_capacity"), "{}", refused.text());
    backend.release();
    for client in &mut held {
        assert_eq!(client.read_response().status, 200);
    }
    let (connections_before, _) = backend.stats();
    assert_eq!(corelb.get("/").status, 200);
    let (connections_after, _) = backend.stats();
    // The /stats request itself is one connection; the proxied GET took a pooled one.
    assert_eq!(connections_after, connections_before + 1, "a new connection was opened");
    let errors = metric_sum(
        &corelb.scrape(),
        "corelb_errors_total",
        "category=\"backend_at_capacity\"",
    );
    assert_eq!(errors, 1.0);
}

#[test]
fn a_queued_request_is_answered_503_when_its_wait_runs_out() {
    let backend = Backend::start("capped");
    let corelb = Corelb::start(&config(
        &[(&backend, Some(1))],
        1,
        "[upstream]\ncapacity_queue = 4\ncapacity_queue_timeout = \"200ms\"\n",
    ));
    let mut held = holding(&corelb);
    wait_for("one held", || backend.held() == 1);
    let waited = corelb.get("/");
    assert_eq!(waited.status, 503, "{waited:?}");
    assert!(waited.text().contains("backend_at_capacity"), "{}", waited.text());
    assert_eq!(queued(&corelb), 0, "the timed-out request left the queue");
    backend.release();
    assert_eq!(held.read_response().status, 200);
}

#[test]
fn a_backend_at_capacity_is_skipped_by_every_algorithm() {
    for algorithm in [
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "power_of_two",
        "random",
        "least_response_time",
        "consistent_hash",
        "ip_hash",
    ] {
        let capped = Backend::start("capped");
        let open = Backend::start("open");
        let balancer = format!("[balancer]\nalgorithm = \"{algorithm}\"\n");
        let corelb = Corelb::start(&config(&[(&capped, Some(1)), (&open, None)], 1, &balancer));
        // Requests from distinct addresses (for ip_hash; the hashed key otherwise is the client address too) until
        // one is held at the capped backend.
        let mut clients = Vec::new();
        let mut from = 1;
        while capped.held() == 0 {
            assert!(from < 200, "{algorithm}: no request ever reached the capped backend");
            let mut client = Client::connect_from(corelb.addr, format!("127.0.0.{from}").parse().unwrap());
            client.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
            clients.push(client);
            from += 1;
            let sent = clients.len() as u64;
            wait_for("the request to be held", || capped.held() + open.held() == sent);
        }
        // Then eight more, from the addresses already used (whichever mapped to the capped one) and new ones.
        for extra in 0..8 {
            let address = format!("127.0.0.{}", 1 + (from + extra) % 250);
            let mut client = Client::connect_from(corelb.addr, address.parse().unwrap());
            client.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
            clients.push(client);
        }
        let sent = clients.len() as u64;
        wait_for("every request held", || capped.held() + open.held() == sent);
        assert_eq!(
            capped.held(),
            1,
            "{algorithm}: a request went past the capped backend's limit"
        );
        capped.release();
        open.release();
        for client in &mut clients {
            assert_eq!(client.read_response().status, 200, "{algorithm}");
        }
        assert_eq!(capped.open_connections().1, 1, "{algorithm}");
    }
}

#[test]
fn a_limit_below_the_worker_count_is_refused_with_the_field_and_the_reason() {
    let backend = Backend::start("capped");
    let corelb = Corelb::start(&config(&[(&backend, Some(4))], 2, ""));
    let path = corelb.dir.0.join("corelb.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("max_connections = 4", "max_connections = 1")).unwrap();
    let (code, _, stderr) = corelb.ctl(&["reload"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("backends[0].max_connections") && stderr.contains("fewer than the 2 workers"),
        "{stderr}"
    );
    assert_eq!(corelb.get("/").status, 200, "the running config stays");
}
