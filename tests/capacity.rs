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
    // Released as they arrive, the waiting requests take the freed connections; none is refused. Done when the
    // backend has seen all ten and holds none.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, seen) = backend.stats();
        let held = backend.held();
        if seen == 10 && held == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{seen} of 10 reached the backend, {held} held"
        );
        if held > 0 {
            backend.release();
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
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
    let asked = Instant::now();
    let waited = corelb.get("/");
    assert!(
        asked.elapsed() >= Duration::from_millis(200),
        "answered before the wait ran out"
    );
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
        // Then eight more: half from the address whose request the capped backend holds (the hashing algorithms
        // map it there again, so they must walk on), half from new ones.
        for extra in 0..8 {
            let address = if extra % 2 == 0 {
                format!("127.0.0.{}", from - 1)
            } else {
                format!("127.0.0.{}", from + extra)
            };
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
fn a_reload_that_raises_the_limit_lets_a_waiting_request_through() {
    let backend = Backend::start("capped");
    let corelb = Corelb::start(&config(
        &[(&backend, Some(1))],
        1,
        "[upstream]\ncapacity_queue_timeout = \"30s\"\n",
    ));
    let mut first = holding(&corelb);
    wait_for("one held", || backend.held() == 1);
    let mut second = holding(&corelb);
    wait_for("the second queued", || queued(&corelb) == 1);
    let path = corelb.dir.0.join("corelb.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("max_connections = 1", "max_connections = 2")).unwrap();
    let (code, stdout, stderr) = corelb.ctl(&["reload"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("max_connections 1 -> 2"), "{stdout}");
    wait_for("the queued request to reach the backend", || backend.held() == 2);
    assert_eq!(queued(&corelb), 0);
    backend.release();
    assert_eq!(first.read_response().status, 200);
    assert_eq!(second.read_response().status, 200);
}

#[test]
fn a_lowered_limit_closes_the_idle_connections_past_it() {
    let backend = Backend::start("capped");
    let corelb = Corelb::start(&config(
        &[(&backend, Some(4))],
        1,
        "[upstream]\ncapacity_queue_timeout = \"30s\"\n",
    ));
    let mut clients: Vec<Client> = (0..4).map(|_| holding(&corelb)).collect();
    wait_for("four held", || backend.held() == 4);
    backend.release();
    for client in &mut clients {
        assert_eq!(client.read_response().status, 200);
    }
    wait_for("four idle connections in corelb's pool", || {
        backend.open_connections().0 == 4
    });
    let path = corelb.dir.0.join("corelb.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("max_connections = 4", "max_connections = 2")).unwrap();
    let (code, stdout, stderr) = corelb.ctl(&["reload"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    wait_for("the idle connections past the new limit to close", || {
        backend.open_connections().0 == 2
    });
    let (_, served_before) = backend.stats();
    let mut again: Vec<Client> = (0..3).map(|_| holding(&corelb)).collect();
    wait_for("two held under the new limit", || backend.held() == 2);
    assert_eq!(backend.open_connections().0, 2);
    backend.release();
    // The third request is held once it has arrived (the backend counts a request before it holds it); then one
    // held means the first two are answered. Counting held requests alone would also see one of the first two
    // not yet let go.
    wait_for("the third request held, the first two answered", || {
        backend.stats().1 == served_before + 3 && backend.held() == 1
    });
    backend.release();
    for client in &mut again {
        assert_eq!(client.read_response().status, 200);
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
