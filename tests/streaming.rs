//! Bodies stream through the proxy without being held: 1 GiB each way with the proxy's peak memory bounded, and
//! chunked bodies in both directions. Large bodies are spliced (`corelb_spliced_bytes_total` says how much); the
//! same bodies pass byte for byte with splicing off, and bodies that end at the backend's close pass whole.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::{config_for, config_from_urls, json_number, metric_sum, pattern_byte, Backend, Corelb};

const GIB: u64 = 1 << 30;
/// Peak RSS allowed for the proxy after moving gigabytes: buffers are per connection, never per body.
const MAX_RSS_KIB: u64 = 64 * 1024;

fn body_length_in(text: &str) -> u64 {
    json_number(text, "\"body_length\":")
}

fn check_pattern(offset: &mut u64, data: &[u8]) {
    for (index, byte) in data.iter().enumerate() {
        let position = *offset + index as u64;
        assert_eq!(*byte, pattern_byte(position), "body corrupted at byte {position}");
    }
    *offset += data.len() as u64;
}

fn upload(client: &mut common::Client, length: u64, chunked: bool) {
    let block: Vec<u8> = (0..64 * 1024u64).map(pattern_byte).collect();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {length}")
    };
    client.send(format!("POST /echo HTTP/1.1\r\nHost: a\r\n{framing}\r\n\r\n").as_bytes());
    let mut remaining = length;
    while remaining > 0 {
        let take = remaining.min(block.len() as u64) as usize;
        if chunked {
            client.stream.write_all(format!("{take:x}\r\n").as_bytes()).unwrap();
            client.stream.write_all(&block[..take]).unwrap();
            client.stream.write_all(b"\r\n").unwrap();
        } else {
            client.stream.write_all(&block[..take]).unwrap();
        }
        remaining -= take as u64;
    }
    if chunked {
        client.stream.write_all(b"0\r\n\r\n").unwrap();
    }
}

#[test]
fn one_gib_each_way_with_flat_proxy_memory() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    let mut client = corelb.client();

    client.send(format!("GET /bytes?n={GIB} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    let mut offset = 0u64;
    let (response, length) = client.read_response_streaming(false, &mut |data| check_pattern(&mut offset, data), false);
    assert_eq!(response.status, 200);
    assert_eq!(length, GIB, "download length");

    upload(&mut client, GIB, false);
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(
        body_length_in(&response.text()),
        GIB,
        "upload length seen by the backend"
    );

    let peak = corelb.process.peak_rss_kib();
    assert!(peak < MAX_RSS_KIB, "proxy peak RSS {peak} KiB after 2 GiB moved");
}

#[test]
fn chunked_bodies_stream_both_ways() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    let mut client = corelb.client();
    let length = 256u64 << 20;

    client.send(format!("GET /bytes?n={length}&chunked=1 HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    let mut offset = 0u64;
    let (response, received) =
        client.read_response_streaming(false, &mut |data| check_pattern(&mut offset, data), false);
    assert_eq!(response.status, 200);
    assert!(response.chunked, "an HTTP/1.1 client gets the chunked body chunked");
    assert_eq!(received, length);

    upload(&mut client, length, true);
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(body_length_in(&response.text()), length);

    // The connection is still usable after both.
    assert_eq!(client.get("/").status, 200);
    let peak = corelb.process.peak_rss_kib();
    assert!(peak < MAX_RSS_KIB, "proxy peak RSS {peak} KiB");
}

#[test]
fn every_body_size_passes_without_stalling() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    let mut client = corelb.client();
    for size in [0u64, 1, 1024, 16 * 1024, 64 * 1024 + 1, 256 * 1024, 1 << 20] {
        for chunked in [false, true] {
            let path = format!("/bytes?n={size}&chunked={}", u8::from(chunked));
            let response = client.get(&path);
            assert_eq!(response.status, 200);
            assert_eq!(response.body.len() as u64, size, "{path}");
            let mut offset = 0;
            check_pattern(&mut offset, &response.body);
        }
    }
}

const MIB: u64 = 1 << 20;

fn spliced_bytes(corelb: &Corelb) -> f64 {
    metric_sum(&corelb.scrape(), "corelb_spliced_bytes_total", "")
}

/// Downloads and uploads of 1 MiB between small requests on one keep-alive connection: every byte arrives, and
/// the connections that carried spliced bodies keep serving ordinary requests.
fn large_and_small_requests_interleave(corelb: &Corelb, backend: &Backend) {
    let mut client = corelb.client();
    for _ in 0..3 {
        client.send(format!("GET /bytes?n={MIB} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        let mut offset = 0u64;
        let (response, length) =
            client.read_response_streaming(false, &mut |data| check_pattern(&mut offset, data), false);
        assert_eq!((response.status, length), (200, MIB));
        assert_eq!(client.get("/").status, 200);

        upload(&mut client, MIB, false);
        let response = client.read_response();
        assert_eq!(response.status, 200);
        assert_eq!(body_length_in(&response.text()), MIB);
        assert_eq!(client.get("/").status, 200);
    }
    let (connections, requests) = backend.stats();
    assert_eq!(requests, 12);
    assert_eq!(connections, 1, "one upstream connection carried every request");
}

#[test]
fn large_bodies_are_spliced_and_connections_stay_reusable() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    large_and_small_requests_interleave(&corelb, &backend);
    // Six bodies of 1 MiB; only the bytes that arrived with a head (at most one read each) are copied.
    let spliced = spliced_bytes(&corelb);
    assert!(spliced >= (6 * MIB - 6 * 64 * 1024) as f64, "spliced {spliced} bytes");
    assert!(spliced <= (6 * MIB) as f64, "spliced {spliced} bytes");
}

#[test]
fn with_splicing_off_bodies_are_copied() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "splice_bodies = false", ""));
    large_and_small_requests_interleave(&corelb, &backend);
    assert_eq!(spliced_bytes(&corelb), 0.0);
}

/// A backend that answers each connection's first request with `length` pattern bytes and no framing, then closes.
fn close_delimited_backend(length: u64, connections: usize) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
                .unwrap();
            let block: Vec<u8> = (0..64 * 1024u64).map(pattern_byte).collect();
            let mut sent = 0u64;
            while sent < length {
                let take = (length - sent).min(block.len() as u64) as usize;
                stream.write_all(&block[..take]).unwrap();
                sent += take as u64;
            }
        }
    });
    (url, server)
}

#[test]
fn a_body_that_ends_at_the_backends_close_arrives_whole() {
    let length = 8 * MIB;
    let (url, server) = close_delimited_backend(length, 2);
    let corelb = Corelb::start(&config_from_urls(&[(url, 1)], 1, "", ""));

    // An HTTP/1.0 client gets it as it came, until close (spliced).
    let mut old = corelb.client();
    old.send(b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n");
    let mut offset = 0u64;
    let (response, received) = old.read_response_streaming(false, &mut |data| check_pattern(&mut offset, data), false);
    assert_eq!((response.status, received), (200, length));
    assert!(response.header("Content-Length").is_none() && !response.chunked);

    // An HTTP/1.1 client gets it chunked, so its connection survives.
    let mut new = corelb.client();
    new.send(b"GET /new HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut offset = 0u64;
    let (response, received) = new.read_response_streaming(false, &mut |data| check_pattern(&mut offset, data), false);
    assert_eq!((response.status, received), (200, length));
    assert!(response.chunked);
    server.join().unwrap();
    let spliced = spliced_bytes(&corelb);
    assert!(
        spliced >= (length - 64 * 1024) as f64,
        "the HTTP/1.0 body was spliced ({spliced} bytes)"
    );
}
