//! Socket timeouts, kept by each worker's watchdog: idle keep-alive connections, clients that stop reading,
//! backends that stop reading, and graceful shutdown ending idle waits. Run on io_uring and again on epoll (make test).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{config_for, config_from_urls, Backend, Corelb};

const SHORT: &str = "[timeouts]\nclient_idle = \"300ms\"\nupstream_response = \"300ms\"\n";

#[test]
fn an_idle_keep_alive_connection_is_closed_after_client_idle() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", SHORT));
    let mut client = corelb.client();
    assert_eq!(client.get("/").status, 200);
    let idle_since = Instant::now();
    assert!(
        client.is_closed_by_peer(Duration::from_secs(5)),
        "the idle connection was kept open"
    );
    let waited = idle_since.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "closed before the idle timeout: {waited:?}"
    );
    // A connection in use is not cut: requests spaced below the timeout keep it alive.
    let mut busy = corelb.client();
    for _ in 0..5 {
        assert_eq!(busy.get("/").status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_client_that_stops_reading_is_cut_and_the_worker_keeps_serving() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", SHORT));
    let mut stalled = corelb.client();
    let length: u64 = 512 * 1024 * 1024;
    stalled.send(format!("GET /bytes?n={length} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    // Not reading: the proxy's write to this client stalls once the socket buffers are full.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(corelb.get("/").status, 200, "the worker serves others meanwhile");
    let mut received = 0u64;
    let mut chunk = vec![0u8; 256 * 1024];
    stalled.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        match stalled.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => received += read as u64,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(error) => panic!("the stalled connection was neither closed nor reset: {error}"),
        }
    }
    assert!(
        received < length,
        "the stalled response was cut, not delivered ({received} bytes)"
    );
    assert_eq!(corelb.get("/").status, 200);
}

#[test]
fn a_backend_that_stops_reading_the_body_gives_504() {
    // Accepts, then never reads: the proxy's upload to it stalls.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(4));
        drop(stream);
    });
    let corelb = Corelb::start(&config_from_urls(&[(format!("http://{addr}"), 1)], 1, "", SHORT));
    let mut client = corelb.client();
    let length = 64 * 1024 * 1024;
    let mut writer = client.stream.try_clone().unwrap();
    let uploader = std::thread::spawn(move || {
        let head = format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n");
        let _ = writer.write_all(head.as_bytes());
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..(length / block.len()) {
            if writer.write_all(&block).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let response = client.read_response();
    assert_eq!(response.status, 504, "{}", response.text());
    assert!(response.text().contains("upstream_timeout"), "{}", response.text());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "timed out by the backend closing, not by corelb"
    );
    drop(client);
    let _ = uploader.join();
    let _ = holder.join();
}

#[test]
fn sigterm_closes_idle_keep_alive_connections_at_once() {
    let backend = Backend::start("a");
    let mut corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    let mut idle = corelb.client();
    assert_eq!(idle.get("/").status, 200);
    let signalled = Instant::now();
    corelb.process.signal(libc::SIGTERM);
    assert!(
        idle.is_closed_by_peer(Duration::from_secs(3)),
        "the idle connection was kept open"
    );
    let status = corelb.process.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    // The default idle timeout is far longer: the wait was ended by the shutdown, not by the timeout.
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?}",
        signalled.elapsed()
    );
}

#[test]
fn a_stalled_head_gets_its_408_sent_whole_then_the_connection_is_drained_and_closed() {
    let backend = Backend::start("a");
    let extra = "[timeouts]\nclient_header = \"300ms\"\n\n[access_log]\nenabled = true\n";
    let mut corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", extra));
    let mut client = corelb.client();
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\n");
    assert_eq!(client.read_response().status, 408);
    // The client keeps sending after the timeout shut the proxy's read side: the proxy drops those bytes and
    // closes once the client is done, rather than resetting the connection under the reply.
    client.send(b"X-Late: 1\r\n\r\n");
    client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let closing = Instant::now();
    assert!(client.is_closed_by_peer(Duration::from_secs(5)));
    assert!(
        closing.elapsed() < Duration::from_millis(1500),
        "closed when the client finished, not after the whole linger time"
    );
    // The reply's write succeeded and is logged with its size (a read timeout does not fail later writes).
    let line = corelb.process.wait_for_line("\"status\":408", Duration::from_secs(5));
    assert!(!line.contains("\"bytes_sent\":0,"), "{line}");
}
