//! Bodies stream through the proxy without being held: 1 GiB each way with the proxy's peak memory bounded, and
//! chunked bodies in both directions.

mod common;

use std::io::Write;

use common::{config_for, pattern_byte, Backend, Corelb};

const GIB: u64 = 1 << 30;
/// Peak RSS allowed for the proxy after moving gigabytes: buffers are per connection, never per body.
const MAX_RSS_KIB: u64 = 64 * 1024;

fn body_length_in(text: &str) -> u64 {
    let start = text.find("\"body_length\":").expect("body_length") + "\"body_length\":".len();
    text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
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
