//! The upstream side: keep-alive reuse, the keep-alive race, failing and slow backends.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

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
    // The port stays reserved while "first" is down, so no other test's process can be handed it meanwhile (that
    // race once answered this test's requests with resets from a stranger).
    let reserved = DeadBackend::new();
    let first = Backend::start_on("first", &reserved);
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
    let revived = Backend::start_on("first", &reserved);
    // It rests for fail_timeout after its failure, then takes its turns again: ask until it answers, never
    // guessing how long the rest takes on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ids = Vec::new();
    loop {
        let response = client.get("/");
        assert_eq!(response.status, 200, "{}", response.text());
        ids.push(response.backend_id());
        if ids.last().is_some_and(|id| id == "first") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revived backend was never used again: {ids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
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

/// What one client saw while a backend was killed under it.
#[derive(Default)]
struct KillReport {
    sent: usize,
    /// Failed requests sent while the victim was still alive or dying.
    failed_before_reaped: Vec<String>,
    /// Failed requests sent after the victim had exited and been reaped, so none of them could have reached it.
    failed_after_reaped: Vec<String>,
    /// The slowest request sent after the kill: how long routing around the dead backend cost a client.
    slowest_after_kill: Duration,
}

/// Keep-alive load from 8 clients on 3 backends, one of them killed (SIGKILL) once the load is under way.
fn kill_one_backend_under_load(method: &str, per_client: usize) -> KillReport {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let reserved = DeadBackend::new();
    let mut victim = Backend::start_on("victim", &reserved);
    let b = Backend::start("b");
    let c = Backend::start("c");
    let corelb = Corelb::start(&config_from_urls(
        &[(victim.url(), 1), (b.url(), 1), (c.url(), 1)],
        2,
        "",
        "",
    ));
    let done = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let reaped = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let addr = corelb.addr;
            let done = Arc::clone(&done);
            let killed = Arc::clone(&killed);
            let reaped = Arc::clone(&reaped);
            let method = method.to_string();
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut report = KillReport::default();
                for _ in 0..per_client {
                    let after_reaped = reaped.load(Ordering::SeqCst);
                    let after_kill = killed.load(Ordering::SeqCst);
                    let started = std::time::Instant::now();
                    let request = match method.as_str() {
                        "GET" => "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n".to_string(),
                        _ => "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello".to_string(),
                    };
                    client.send(request.as_bytes());
                    let response = client.read_response();
                    if after_kill {
                        report.slowest_after_kill = report.slowest_after_kill.max(started.elapsed());
                    }
                    report.sent += 1;
                    if response.status != 200 {
                        let failure = format!("{} {}", response.status, response.text().trim());
                        match after_reaped {
                            true => report.failed_after_reaped.push(failure),
                            false => report.failed_before_reaped.push(failure),
                        }
                    }
                    if response.header("Connection") == Some("close") {
                        client = Client::connect(addr);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                report
            })
        })
        .collect();
    // Mid-run: every client has pooled connections to the victim on both workers by now.
    let total = 8 * per_client;
    while done.load(Ordering::Relaxed) < total / 3 {
        std::thread::yield_now();
    }
    killed.store(true, Ordering::SeqCst);
    victim.process.signal(libc::SIGKILL);
    victim.process.wait_exit(Duration::from_secs(10));
    // Exited and reaped: every socket it had is closed, and its listener gone (the port stays reserved).
    reaped.store(true, Ordering::SeqCst);
    let mut report = KillReport::default();
    for client in clients {
        let seen = client.join().expect("client thread");
        report.sent += seen.sent;
        report.failed_before_reaped.extend(seen.failed_before_reaped);
        report.failed_after_reaped.extend(seen.failed_after_reaped);
        report.slowest_after_kill = report.slowest_after_kill.max(seen.slowest_after_kill);
    }
    println!(
        "{method}: {} of {total} failed with one of three backends killed mid-run ({} after it was reaped): {:?}; \
         slowest request after the kill {:.1} ms",
        report.failed_before_reaped.len() + report.failed_after_reaped.len(),
        report.failed_after_reaped.len(),
        report.failed_before_reaped,
        report.slowest_after_kill.as_secs_f64() * 1000.0
    );
    drop(reserved);
    report
}

#[test]
fn killing_a_backend_under_keep_alive_load_fails_no_get() {
    let report = kill_one_backend_under_load("GET", 300);
    assert_eq!(report.sent, 2400);
    assert!(
        report.failed_before_reaped.is_empty() && report.failed_after_reaped.is_empty(),
        "GETs failed: {:?} {:?}",
        report.failed_before_reaped,
        report.failed_after_reaped
    );
}

#[test]
fn killing_a_backend_under_load_fails_only_posts_it_may_have_received() {
    // A POST's body is streamed, so one the victim may have read is not sent again. corelb cannot tell a backend
    // that read the request and died from one that died first (a close reaches corelb's socket a little after the
    // process is gone), so the sound assertion is on how they fail: only with the connection lost, never
    // with a request refused or misrouted, and the count is reported.
    let report = kill_one_backend_under_load("POST", 300);
    let failed: Vec<&String> = report
        .failed_before_reaped
        .iter()
        .chain(&report.failed_after_reaped)
        .collect();
    assert!(
        failed
            .iter()
            .all(|failure| failure.contains("upstream_io") || failure.contains("upstream_closed")),
        "{failed:?}"
    );
    assert!(
        failed.len() < report.sent / 10,
        "{} of {} POSTs failed",
        failed.len(),
        report.sent
    );
}
