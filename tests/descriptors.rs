//! Descriptors are budgeted: corelb never holds more client connections than `server.max_connections` (derived
//! from `RLIMIT_NOFILE` when not set), waits rather than refuses past it, and at the descriptor limit itself keeps
//! serving established connections, answers 503 rather than blaming a backend, and keeps `ctl` working.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::time::{Duration, Instant};

use common::{config_for, metric_sum, Backend, Client, Corelb};

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn past_max_connections_new_clients_wait_to_be_accepted_and_are_served_when_others_leave() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "max_connections = 20", ""));
    let mut held = corelb.clients_with_a_request(20);
    for client in &mut held {
        assert_eq!(client.read_response().status, 200);
    }
    let mut waiting = corelb.clients_with_a_request(5);
    wait_for("accepting to pause", Duration::from_secs(10), || {
        metric_sum(&corelb.scrape(), "corelb_accept_paused_total", "") >= 1.0
    });
    let status = corelb.control(serde_json::json!({"cmd": "status"}));
    assert_eq!(status["result"]["descriptors"]["max_connections"], 20, "{status}");
    assert!(
        waiting.iter().all(|client| !client.has_input()),
        "a client past max_connections was served (or closed) while 20 were held"
    );

    // Five leave; the five waiting are accepted and answered, none refused.
    held.truncate(15);
    for client in &mut waiting {
        let response = client.read_response();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    // The held connections still work.
    assert_eq!(held[0].get("/hello").status, 200);
}

#[test]
fn at_the_descriptor_limit_established_clients_are_served_no_backend_is_blamed_and_ctl_answers() {
    let backend = Backend::start("a");
    // A max_connections the limit cannot honour, so corelb runs into the limit itself.
    let config = config_for(&[(&backend, 1)], 1, "max_connections = 1000", "");
    let corelb = Corelb::start_with_nofile(&config, 160);
    assert!(
        corelb
            .process
            .output()
            .iter()
            .any(|line| line.contains("needs more descriptors than RLIMIT_NOFILE allows")),
        "the impossible max_connections was warned about"
    );
    // One client is established before the limit; its request leaves a pooled upstream connection.
    let mut established = corelb.client();
    assert_eq!(established.get("/hello").status, 200);
    let mut clients = corelb.clients_with_a_request(200);
    // Some are accepted and answered (200, or 503 when no descriptor was left for an upstream connection); the
    // rest wait in the listen queue while every descriptor is held.
    wait_for("corelb to run out of descriptors", Duration::from_secs(20), || {
        corelb
            .process
            .output()
            .iter()
            .any(|line| line.contains("accept failed; backing off"))
    });
    let (code, stdout, stderr) = corelb.ctl(&["status"]);
    assert_eq!(code, 0, "ctl at the descriptor limit: {stdout}{stderr}");
    let (code, backends, stderr) = corelb.ctl(&["backends"]);
    assert_eq!(code, 0, "a second ctl at the descriptor limit: {stderr}");
    assert!(backends.contains(" up "), "the backend was not blamed: {backends}");
    // A scrape still works too, and says the backend is up.
    let metrics = corelb.scrape();
    assert_eq!(metric_sum(&metrics, "corelb_backend_up", ""), 1.0, "{metrics}");

    // Every client accepted so far (all but the established one) is answered before the next step, so no request
    // of theirs holds the pooled upstream connection.
    wait_for("every accepted client to be answered", Duration::from_secs(20), || {
        let accepted = metric_sum(&corelb.scrape(), "corelb_client_connections_total", "") - 1.0;
        let answered = clients.iter().filter(|client| client.has_input()).count();
        answered as f64 >= accepted
    });
    let mut statuses = std::collections::BTreeMap::new();
    let mut answered = Vec::new();
    for (index, client) in clients.iter_mut().enumerate() {
        if client.has_input() {
            let response = client.read_response();
            assert!(
                response.status == 200 || (response.status == 503 && response.text().contains("out_of_descriptors")),
                "{} {}",
                response.status,
                response.text()
            );
            *statuses.entry(response.status).or_insert(0) += 1;
            answered.push(index);
        }
    }
    assert!(!answered.is_empty(), "some clients were accepted before the limit");
    // The established connection goes on being served, over the pooled upstream connection.
    let response = established.get("/hello");
    assert_eq!(response.status, 200, "{statuses:?}: {}", response.text());

    // Once the answered clients leave, the ones that waited are accepted and answered.
    let waited: Vec<Client> = clients
        .into_iter()
        .enumerate()
        .filter(|(index, _)| !answered.contains(index))
        .map(|(_, client)| client)
        .collect();
    eprintln!("answered while at the limit: {statuses:?}; waited: {}", waited.len());
    // Each is closed once answered, so the next can be accepted.
    for mut client in waited {
        let response = client.read_response();
        assert!(response.status == 200 || response.status == 503, "{}", response.status);
    }
    let warnings = corelb
        .process
        .output()
        .iter()
        .filter(|line| line.contains("accept failed"))
        .count();
    assert!(
        warnings <= 30,
        "accept failures are logged at most once a second: {warnings} lines"
    );
    assert_eq!(corelb.get("/hello").status, 200);
}

#[test]
fn requests_past_the_upstream_connection_cap_queue_and_are_all_served_on_that_many_connections() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(
        &[(&backend, 1)],
        1,
        "",
        "[upstream]\nmax_connections_per_backend = 3\n[timeouts]\nconnect = \"10s\"\n",
    ));
    // 24 slow requests at once: only 3 may be in flight upstream; the rest wait their turn in corelb.
    let mut clients: Vec<Client> = (0..24)
        .map(|_| {
            let mut client = corelb.client();
            client.send(b"GET /slow?delay=50ms HTTP/1.1\r\nHost: t\r\n\r\n");
            client
        })
        .collect();
    for client in &mut clients {
        let response = client.read_response();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let (connections, requests) = backend.stats();
    assert_eq!(requests, 24);
    assert!(
        connections <= 3,
        "the backend saw {connections} connections; the cap is 3"
    );
}
