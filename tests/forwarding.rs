//! Forwarding semantics (RFC 9110/9112) through the real binary: hop-by-hop fields, forwarding fields, HTTP/1.0
//! clients, `Connection: close` from either side, pipelining, and malformed requests refused before any backend
//! sees them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::time::Duration;

use common::{config_for, Backend, Client, Corelb};

fn echo_headers(response: &common::Response) -> Vec<(String, String)> {
    // The echo body lists headers as ["Name","value"] pairs; pull them out without a JSON dependency.
    let text = response.text();
    let start = text.find("\"headers\":[").expect("headers in echo") + "\"headers\":[".len();
    let end = text[start..].find("],\"body_length\"").expect("end of headers") + start;
    text[start..end]
        .split("],[")
        .map(|pair| {
            let pair = pair.trim_matches(|c| c == '[' || c == ']');
            let (name, value) = pair.split_once("\",\"").expect("pair");
            (name.trim_matches('"').to_string(), value.trim_matches('"').to_string())
        })
        .collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
        .collect()
}

fn single_backend() -> (Backend, Corelb) {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    (backend, corelb)
}

#[test]
fn hop_by_hop_fields_are_removed_and_forwarding_fields_set() {
    let (_backend, corelb) = single_backend();
    let mut client = corelb.client();
    client.send(
        b"GET /echo HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Private\r\nX-Private: secret\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: websocket\r\nProxy-Authorization: Basic eA==\r\n\
          Proxy: http://evil\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nVia: 1.0 edge\r\n\
          Accept: text/plain\r\n\r\n",
    );
    let response = client.read_response();
    assert_eq!(response.status, 200);
    let seen = echo_headers(&response);
    for removed in [
        "Connection",
        "X-Private",
        "Keep-Alive",
        "TE",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy",
    ] {
        assert!(header(&seen, removed).is_empty(), "{removed} was forwarded: {seen:?}");
    }
    assert_eq!(header(&seen, "Host"), ["shop.example"], "Host is kept");
    assert_eq!(header(&seen, "Accept"), ["text/plain"]);
    assert_eq!(header(&seen, "X-Forwarded-For"), ["203.0.113.7, 127.0.0.1"], "appended");
    assert_eq!(header(&seen, "X-Forwarded-Proto"), ["http"]);
    assert_eq!(header(&seen, "X-Forwarded-Host"), ["shop.example"]);
    assert_eq!(header(&seen, "Via"), ["1.0 edge, 1.1 corelb"]);
    assert_eq!(response.header("Via"), Some("1.1 corelb"), "Via on the response too");
}

#[test]
fn http10_clients_are_served_and_closed_unless_keep_alive() {
    let (_backend, corelb) = single_backend();
    let mut client = corelb.client();
    client.send(b"GET /bytes?n=1000&chunked=1 HTTP/1.0\r\n\r\n");
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert!(!response.chunked, "no chunked coding for an HTTP/1.0 client");
    assert_eq!(response.body.len(), 1000);
    assert!(
        client.is_closed_by_peer(Duration::from_secs(5)),
        "closed after the response"
    );

    let mut client = corelb.client();
    for _ in 0..3 {
        client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let response = client.read_response();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("Connection"), Some("keep-alive"));
    }
}

#[test]
fn client_connection_close_is_honoured() {
    let (_backend, corelb) = single_backend();
    let mut client = corelb.client();
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(client.is_closed_by_peer(Duration::from_secs(5)));
}

#[test]
fn backend_connection_close_is_honoured_and_client_stays_connected() {
    let (backend, corelb) = single_backend();
    let mut client = corelb.client();
    for _ in 0..3 {
        let response = client.get("/close");
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("Connection"),
            None,
            "the backend's close is not the client's"
        );
    }
    assert_eq!(client.get("/").status, 200);
    let (connections, _) = backend.stats();
    assert!(
        connections >= 4,
        "a closed upstream connection is never reused ({connections} opened)"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (_backend, corelb) = single_backend();
    let mut client = corelb.client();
    let mut burst = Vec::new();
    for index in 0..10 {
        burst.extend_from_slice(format!("GET /echo?n={index} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
    burst.extend_from_slice(b"POST /echo?n=10 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    client.send(&burst);
    for index in 0..=10 {
        let response = client.read_response();
        assert_eq!(response.status, 200);
        assert!(
            response.text().contains(&format!("\"path\":\"/echo?n={index}\"")),
            "{index}: {}",
            response.text()
        );
    }
}

#[test]
fn malformed_requests_get_the_right_status_and_never_reach_a_backend() {
    let (backend, corelb) = single_backend();
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "x".repeat(9000));
    let huge_header = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "y".repeat(17000));
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n".to_vec(),
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n  folded\r\n\r\n".to_vec(), 400),
        (b"GET\x01 / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n".to_vec(), 505),
        // A space inside the target, or garbage where the version goes, is a malformed line, not a version.
        (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        (b"GET / garbage\r\nHost: a\r\n\r\n".to_vec(), 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(),
            501,
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n".to_vec(), 417),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n".to_vec(), 405),
        (long_target.into_bytes(), 414),
        (huge_header.into_bytes(), 431),
    ];
    for (request, status) in cases {
        let mut client = corelb.client();
        client.send(&request);
        let response = client.read_response();
        assert_eq!(
            response.status,
            status,
            "for {:?}",
            String::from_utf8_lossy(&request[..request.len().min(80)])
        );
        assert!(
            response.text().contains(&status.to_string()),
            "body names the status: {}",
            response.text()
        );
        assert!(
            client.is_closed_by_peer(Duration::from_secs(5)),
            "connection closed after a refused request"
        );
    }
    assert_eq!(
        backend.stats(),
        (0, 0),
        "no refused request opened a backend connection"
    );
}

#[test]
fn malformed_chunked_body_is_refused_with_400() {
    let (_backend, corelb) = single_backend();
    let mut client = corelb.client();
    client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n");
    let response = client.read_response();
    assert_eq!(response.status, 400);
    assert!(response.text().contains("bad_request_body"), "{}", response.text());
}

#[test]
fn expect_continue_is_answered_by_the_proxy() {
    let (_backend, corelb) = single_backend();
    let mut client = corelb.client();
    client.send(b"PUT /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    let interim = client.read_response();
    assert_eq!(interim.status, 100);
    client.send(b"data");
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert!(response.text().contains("\"body_length\":4"), "{}", response.text());
    assert!(
        !response.text().contains("Expect"),
        "Expect not forwarded: {}",
        response.text()
    );
}

#[test]
fn head_requests_keep_content_length_without_a_body() {
    let (_backend, corelb) = single_backend();
    let mut client = corelb.client();
    client.send(b"HEAD /bytes?n=5000 HTTP/1.1\r\nHost: a\r\n\r\n");
    let response = client.read_response_to(true);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Content-Length"), Some("5000"));
    // The connection is still in sync: the next response is the next request's.
    let next = client.get("/echo");
    assert!(next.text().contains("\"method\":\"GET\""));
}

#[test]
fn absolute_form_target_is_sent_in_origin_form() {
    let (_backend, corelb) = single_backend();
    let mut client = corelb.client();
    client.send(b"GET http://Site.example:8080/echo?x=1 HTTP/1.1\r\nHost: ignored\r\n\r\n");
    let response = client.read_response();
    assert!(
        response.text().contains("\"path\":\"/echo?x=1\""),
        "{}",
        response.text()
    );
    assert_eq!(header(&echo_headers(&response), "Host"), ["Site.example:8080"]);
}

#[test]
fn a_client_may_send_a_request_in_tiny_pieces() {
    let (_backend, corelb) = single_backend();
    let mut client = Client::connect(corelb.addr);
    for byte in b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n" {
        client.send(&[*byte]);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(client.read_response().status, 200);
}
