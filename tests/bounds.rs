//! Every request resource has a bound: a body larger than `limits.max_body_bytes` is refused with 413 (before any
//! backend is chosen when its length is declared, cut off when a chunked body grows past it), and a body that
//! trickles in slower than `limits.min_body_rate` after `timeouts.client_body` gets 408 and frees its upstream
//! connection.

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
