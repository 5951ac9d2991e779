//! Every request resource has a bound: a body larger than `limits.max_body_bytes` is refused with 413 (before any
//! backend is chosen when its length is declared, cut off when a chunked body grows past it), and a body that
//! trickles in slower than `limits.min_body_rate` after `timeouts.client_body` gets 408 and frees its upstream
//! connection.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::time::{Duration, Instant};

use common::{config_for, Backend, Corelb};

fn corelb_with(backend: &Backend, extra: &str) -> Corelb {
    Corelb::start(&config_for(&[(backend, 1)], 1, "", extra))
}

#[test]
fn a_declared_body_over_the_limit_gets_413_and_never_reaches_a_backend() {
    let backend = Backend::start("a");
    let corelb = corelb_with(&backend, "[limits]\nmax_body_bytes = 1000\n");
    let mut client = corelb.client();
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n");
    let response = client.read_response();
    assert_eq!(response.status, 413, "{}", response.text());
    assert!(response.text().contains("body_too_large"));
    assert_eq!(response.header("Connection"), Some("close"));
    assert_eq!(backend.stats(), (0, 0), "no backend connection was opened");

    // At the limit is fine.
    let mut client = corelb.client();
    let body = vec![b'x'; 1000];
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n");
    client.send(&body);
    assert_eq!(client.read_response().status, 200);
}

#[test]
fn a_chunked_body_that_grows_past_the_limit_is_cut_off_with_413() {
    let backend = Backend::start("a");
    let corelb = corelb_with(&backend, "[limits]\nmax_body_bytes = 1000\n");
    let mut client = corelb.client();
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..3 {
        client.send(format!("190\r\n{}\r\n", "y".repeat(400)).as_bytes());
    }
    client.send(b"0\r\n\r\n");
    let response = client.read_response();
    assert_eq!(response.status, 413, "{}", response.text());
    assert!(client.is_closed_by_peer(Duration::from_secs(10)));
    // The backend saw a request that never completed: it answered nothing, and corelb closed the connection.
    assert_eq!(
        backend.stats().1,
        0,
        "the cut-off request was not answered by the backend"
    );
}

#[test]
fn a_trickling_body_gets_408_once_it_falls_behind_the_minimum_rate() {
    let backend = Backend::start("a");
    let corelb = corelb_with(
        &backend,
        "[timeouts]\nclient_body = \"300ms\"\n[limits]\nmin_body_rate = 1000\n",
    );
    let mut client = corelb.client();
    let started = Instant::now();
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nab");
    // Two bytes earn 2 ms on top of the 300 ms grace; nothing more comes.
    let response = client.read_response();
    let elapsed = started.elapsed();
    assert_eq!(response.status, 408, "{}", response.text());
    assert!(response.text().contains("client_body_timeout"));
    // The watchdog's ticks can end a wait up to a tick early after a stall; well before the grace would be a bug.
    assert!(
        elapsed >= Duration::from_millis(250),
        "cut before its grace: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(30),
        "held for the idle timeout: {elapsed:?}"
    );
}

#[test]
fn a_body_that_keeps_up_the_rate_is_not_cut() {
    let backend = Backend::start("a");
    let corelb = corelb_with(
        &backend,
        "[timeouts]\nclient_body = \"1s\"\n[limits]\nmin_body_rate = 10\n",
    );
    let mut client = corelb.client();
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 400\r\n\r\n");
    // 100 bytes every 100 ms is 1,000 bytes a second, a hundred times the minimum: each 100 bytes earn 10 s.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(100));
        client.send(&[b'z'; 100]);
    }
    let response = client.read_response();
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Holds `count` connections that each send the start of a request and then nothing more.
fn slow_clients<S: std::io::Write>(count: usize, connect: impl Fn() -> S, first_bytes: &[u8]) -> Vec<S> {
    (0..count)
        .map(|_| {
            let mut stream = connect();
            stream.write_all(first_bytes).expect("send the first bytes");
            stream
        })
        .collect()
}

/// How many of `streams` the server has closed (EOF or reset), without blocking.
fn closed_by_server<S: std::io::Read>(streams: &mut [S]) -> usize {
    let mut byte = [0u8; 1];
    streams
        .iter_mut()
        .filter_map(|stream| match stream.read(&mut byte) {
            Ok(0) => Some(()),
            Err(error) if error.kind() != std::io::ErrorKind::WouldBlock => Some(()),
            _ => None,
        })
        .count()
}

#[test]
fn slow_clients_on_the_control_ports_hold_no_threads_and_never_keep_ctl_from_answering() {
    use std::os::unix::net::UnixStream;
    const SLOW: usize = 500;
    let backend = Backend::start("a");
    let corelb = corelb_with(
        &backend,
        "[admin]\nenabled = true\naddress = \"127.0.0.1\"\nport = 0\ntoken = \"s3cret\"\n",
    );
    let threads_before = corelb.process.threads();
    let socket = corelb.socket();
    let mut control = slow_clients(SLOW, || UnixStream::connect(&socket).unwrap(), b"{\"cmd\":");
    let metrics_addr = corelb.metrics_addr();
    let mut metrics = slow_clients(
        SLOW,
        || std::net::TcpStream::connect(metrics_addr).unwrap(),
        b"GET /metr",
    );
    let admin_addr = corelb.admin_addr();
    let mut admin = slow_clients(
        SLOW,
        || std::net::TcpStream::connect(admin_addr).unwrap(),
        b"GET /api/v1/sta",
    );

    // With 1,500 slow clients connected, every port still answers a client that sends its request.
    let started = Instant::now();
    let (code, stdout, stderr) = corelb.ctl(&["status"]);
    let ctl_took = started.elapsed();
    assert_eq!(code, 0, "ctl status: {stdout}{stderr}");
    assert!(stdout.contains("version"), "{stdout}");
    assert!(corelb.scrape().contains("# TYPE corelb_"));
    let mut client = common::Client::connect(admin_addr);
    client.send(b"GET /api/v1/status HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\n\r\n");
    assert_eq!(client.read_response().status, 200);
    eprintln!("ctl status took {ctl_took:?} beside {} slow clients", 3 * SLOW);

    // They cost no threads: one loop serves all three listeners.
    let threads_now = corelb.process.threads();
    assert!(
        threads_now <= threads_before + 1,
        "{threads_now} threads with slow clients held, {threads_before} before"
    );

    // Each listener holds at most its cap; the oldest slow clients were closed to make room.
    control.iter().for_each(|stream| stream.set_nonblocking(true).unwrap());
    metrics
        .iter()
        .chain(&admin)
        .for_each(|stream| stream.set_nonblocking(true).unwrap());
    let at_least = SLOW - 64;
    let evicted =
        |control: &mut [UnixStream], metrics: &mut [std::net::TcpStream], admin: &mut [std::net::TcpStream]| {
            [
                closed_by_server(control),
                closed_by_server(metrics),
                closed_by_server(admin),
            ]
        };
    let closed = evicted(&mut control, &mut metrics, &mut admin);
    assert!(
        closed.iter().all(|&count| count >= at_least),
        "closed per listener (control, metrics, admin): {closed:?}; expected at least {at_least} each"
    );

    // And the ones still held are closed once their request deadline passes.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let closed = evicted(&mut control, &mut metrics, &mut admin);
        if closed == [SLOW; 3] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slow clients still open past their deadline: closed {closed:?} of {SLOW} each"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn memory_taken_by_a_burst_of_connections_is_given_back_when_they_close() {
    const BURST: usize = 3_000;
    let backend = Backend::start("a");
    let corelb = corelb_with(&backend, "");
    assert_eq!(corelb.get("/hello").status, 200);
    let before = corelb.process.rss_kib();
    let mut clients = corelb.clients_with_a_request(BURST);
    for client in &mut clients {
        assert_eq!(client.read_response().status, 200);
    }
    let held = corelb.process.rss_kib();
    assert!(
        held > before + 4_000,
        "{BURST} connections should take some memory: {before} -> {held} KiB"
    );
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(20);
    let halfway = before + (held - before) / 2;
    loop {
        let now = corelb.process.rss_kib();
        if now <= halfway {
            eprintln!("RSS {before} KiB -> {held} KiB with {BURST} connections -> {now} KiB after they closed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RSS stayed at {now} KiB after the burst closed ({before} before, {held} held)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
