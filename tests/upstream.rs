//! The upstream side: keep-alive reuse, the keep-alive race, failing and slow backends.

mod common;

use std::time::{Duration, Instant};

use common::{config_for, config_from_urls, Backend, Client, Corelb, DeadBackend};

#[test]
fn many_requests_over_few_client_connections_open_few_upstream_connections() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    let mut clients: Vec<Client> = (0..4).map(|_| corelb.client()).collect();
    for round in 0..50 {
        for client in &mut clients {
            let response = client.get(&format!("/?round={round}"));
            assert_eq!(response.status, 200);
        }
    }
    let (connections, requests) = backend.stats();
    assert_eq!(requests, 200);
    assert!(
        connections <= 4,
        "200 sequential requests opened {connections} upstream connections"
    );
}

#[test]
fn a_reused_connection_closed_by_the_backend_is_retried_on_a_fresh_one() {
    // The backend drops idle connections after 150ms; corelb keeps them for a minute, so it will pick a dead one.
    let backend = Backend::start_with("a", &["--idle-timeout", "150ms"]);
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    let mut client = corelb.client();
    for _ in 0..5 {
        assert_eq!(client.get("/").status, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (connections, requests) = backend.stats();
    assert_eq!(requests, 5, "every request served exactly once");
    assert!(
        connections >= 5,
        "each request after an idle pause needed a fresh connection ({connections})"
    );
}

#[test]
fn a_dead_backend_is_skipped_and_the_request_served_by_a_live_one() {
    let live = Backend::start("live");
    let dead = DeadBackend::new();
    let config = config_from_urls(&[(dead.url(), 1), (live.url(), 1)], 1, "", "");
    let corelb = Corelb::start(&config);
    let mut client = corelb.client();
    for _ in 0..6 {
        let response = client.get("/");
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.backend_id(), "live");
    }
    assert_eq!(live.stats().1, 6);
}

#[test]
fn only_backend_down_gives_502_naming_the_category() {
    let dead = DeadBackend::new();
    let config = config_from_urls(&[(dead.url(), 1)], 1, "", "");
    let corelb = Corelb::start(&config);
    let mut client = corelb.client();
    let response = client.get("/");
    assert_eq!(response.status, 502);
    assert!(response.text().contains("connect_failed"), "{}", response.text());
    // The client connection survives a bodiless failure.
    assert_eq!(client.get("/").status, 502);
}

#[test]
fn a_backend_that_comes_back_is_used_again() {
    let first = Backend::start("first");
    let port = first.addr.port();
    let other = Backend::start("other");
    let config = config_for(
        &[(&first, 1), (&other, 1)],
        1,
        "",
        "[upstream]\nfail_timeout = \"200ms\"\n",
    );
    drop(first);
    let corelb = Corelb::start(&config);
    let mut client = corelb.client();
    assert_eq!(client.get("/").backend_id(), "other");
    let revived = Backend::start_with("first", &["--port", &port.to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    let ids: Vec<String> = (0..4).map(|_| client.get("/").backend_id()).collect();
    assert!(
        ids.iter().any(|id| id == "first"),
        "revived backend is used again: {ids:?}"
    );
    drop(revived);
}

#[test]
fn slow_backend_gives_504_at_the_timeout() {
    let backend = Backend::start("slow");
    let corelb = Corelb::start(&config_for(
        &[(&backend, 1)],
        1,
        "",
        "[timeouts]\nupstream_response = \"300ms\"\n",
    ));
    let mut client = corelb.client();
    let started = Instant::now();
    let response = client.get("/?delay=3s");
    let elapsed = started.elapsed();
    assert_eq!(response.status, 504);
    assert!(response.text().contains("upstream_timeout"), "{}", response.text());
    assert!(
        elapsed >= Duration::from_millis(300),
        "answered before the timeout: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "waited for the backend instead of timing out: {elapsed:?}"
    );
    // A timed-out connection is never reused: the next request works on a fresh one.
    assert_eq!(client.get("/").status, 200);
}

#[test]
fn backend_sending_garbage_gives_502() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf);
        let _ = stream.write_all(b"NOT HTTP AT ALL\r\n\r\n");
    });
    let config = format!(
        "[server]\nworkers = 1\n[metrics]\nport = 0\n[[frontends]]\naddress = \"127.0.0.1\"\nname = \"web\"\nport = 0\n[[backends]]\nurl = \"http://{addr}\"\n"
    );
    let corelb = Corelb::start(&config);
    let response = corelb.get("/");
    assert_eq!(response.status, 502);
    assert!(response.text().contains("bad_response"), "{}", response.text());
    server.join().unwrap();
}
