//! Upstream connection hygiene: a backend that answers early, answers twice, or sends bytes past a response's end
//! must never hand one client's answer to another. The misbehaving backend here is a raw-socket server with its own
//! few lines of HTTP, so a framing bug in corelb's parser cannot hide on both sides. Every shape is followed by
//! 1,000 requests from 20 clients, each with a unique id the backend echoes; a single answer with another id fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{config_from_urls, metric_sum, Client, Corelb};

/// What the rogue backend does with a request, chosen by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Answers at once, then reads the body as if it were the next request and answers that too.
    Early,
    /// Answers properly, then sends a second, unsolicited response.
    Extra,
    /// Answers a HEAD with a head and then a "body" that is a whole response.
    HeadWithBody,
    /// A chunked response followed by a whole response after the last chunk.
    AfterLastChunk,
    /// An honest echo of the request's id.
    Echo,
}

/// The stray answer every misbehaviour sends: a whole response with an id no client uses.
const STRAY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Id: stray\r\n\r\nstray";

/// How long after its answer the rogue sends a stray that is not sent `together` with it.
const STRAY_DELAY: Duration = Duration::from_millis(20);

/// A raw-socket backend that misbehaves on request, and counts the misbehaviours it finished.
struct Rogue {
    addr: SocketAddr,
    done: Arc<(Mutex<u64>, Condvar)>,
}

impl Rogue {
    fn start() -> Rogue {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let done = Arc::new((Mutex::new(0u64), Condvar::new()));
        let shared = Arc::clone(&done);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let done = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &done));
            }
        });
        Rogue { addr, done }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (condition, not time) until `count` misbehaviours have been carried out to the end: the stray bytes
    /// are on the wire, or the connection that would have carried them is closed.
    fn wait_misbehaved(&self, count: u64) {
        let (lock, ready) = &*self.done;
        let guard = lock.lock().unwrap();
        let (guard, timeout) = ready
            .wait_timeout_while(guard, Duration::from_secs(20), |done| *done < count)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "rogue finished {} of {count} misbehaviours",
            *guard
        );
    }
}

fn misbehaved(done: &(Mutex<u64>, Condvar)) {
    *done.0.lock().unwrap() += 1;
    done.1.notify_all();
}

/// One request as the rogue reads it: just enough HTTP for what the tests send.
struct RogueRequest {
    method: String,
    path: String,
    id: String,
    content_length: usize,
}

/// Reads one request head from `stream` (leftover bytes stay in `buf`); `None` at EOF.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RogueRequest> {
    let end = loop {
        if let Some(position) = buf.windows(4).position(|window| window == b"\r\n\r\n") {
            break position + 4;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(count) => buf.extend_from_slice(&chunk[..count]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let mut request = RogueRequest {
        method,
        path,
        id: String::new(),
        content_length: 0,
    };
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                request.content_length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("x-id") {
                request.id = value.to_string();
            }
        }
    }
    Some(request)
}

/// Reads `count` body bytes, from `buf` first; false at EOF.
fn read_body(stream: &mut TcpStream, buf: &mut Vec<u8>, count: usize) -> bool {
    while buf.len() < count {
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(read) => buf.extend_from_slice(&chunk[..read]),
        }
    }
    buf.drain(..count);
    true
}

fn echo(id: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Id: {id}\r\n\r\n{id}",
        id.len()
    )
    .into_bytes()
}

fn shape_of(path: &str) -> Shape {
    match path.split('?').next().unwrap_or(path) {
        "/early" => Shape::Early,
        "/extra" => Shape::Extra,
        "/head-body" => Shape::HeadWithBody,
        "/after-last-chunk" => Shape::AfterLastChunk,
        _ => Shape::Echo,
    }
}

fn serve(mut stream: TcpStream, done: &(Mutex<u64>, Condvar)) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    while let Some(request) = read_head(&mut stream, &mut buf) {
        // `?together`: the stray goes out in the same write as the answer, so it arrives with it.
        let together = request.path.contains("together");
        let answer = match shape_of(&request.path) {
            Shape::Early => {
                if stream.write_all(&echo("early")).is_err() {
                    return misbehaved(done);
                }
                // The body, read as if it were the next request, gets its own answer.
                if !read_body(&mut stream, &mut buf, request.content_length) {
                    return misbehaved(done);
                }
                let _ = stream.write_all(STRAY);
                misbehaved(done);
                continue;
            }
            Shape::Extra => echo(&request.id),
            Shape::HeadWithBody => {
                assert_eq!(request.method, "HEAD");
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Id: head\r\n\r\n".to_vec()
            }
            Shape::AfterLastChunk => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Id: chunked\r\n\r\n\
                5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            Shape::Echo => {
                if !read_body(&mut stream, &mut buf, request.content_length) {
                    return;
                }
                if stream.write_all(&echo(&request.id)).is_err() {
                    return;
                }
                continue;
            }
        };
        let sent = if together {
            stream.write_all(&[answer.as_slice(), STRAY].concat())
        } else {
            // Later, so that corelb has finished the exchange and pooled the connection by the time the stray
            // arrives: the shape of a backend whose second answer is late. The test waits for the stray to have
            // been sent, not for this pause.
            stream.write_all(&answer).and_then(|()| {
                std::thread::sleep(STRAY_DELAY);
                stream.write_all(STRAY)
            })
        };
        misbehaved(done);
        if sent.is_err() {
            return;
        }
    }
    // A connection corelb closed before the misbehaviour ended counts as carried out.
}

fn corelb_for(rogue: &Rogue) -> Corelb {
    Corelb::start(&config_from_urls(&[(rogue.url(), 1)], 1, "", ""))
}

/// 20 clients, `per_client` keep-alive requests each, every one with its own id: returns the answers that were
/// not 200 with that id.
fn unrelated_clients(corelb: &Corelb, round: usize, per_client: usize) -> Vec<String> {
    let threads: Vec<_> = (0..20)
        .map(|client_index| {
            let addr = corelb.addr;
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut wrong = Vec::new();
                for request in 0..per_client {
                    let id = format!("r{round}-c{client_index}-{request}");
                    client.send(format!("GET /echo HTTP/1.1\r\nHost: t\r\nX-Id: {id}\r\n\r\n").as_bytes());
                    let response = client.read_response();
                    let seen = response.header("X-Id").unwrap_or("-").to_string();
                    if response.status != 200 || seen != id || response.body != id.as_bytes() {
                        wrong.push(format!("{id} got {} {seen} {:?}", response.status, response.text()));
                    }
                }
                wrong
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|thread| thread.join().expect("client thread"))
        .collect()
}

/// Five rounds of: one misbehaving exchange (by `trigger`), a wait until the rogue has finished misbehaving, and
/// 200 unrelated requests. Asserts that not one of the 1,000 got an answer meant for another request.
fn no_answer_reaches_the_wrong_client(shape: &str, trigger: impl Fn(&Corelb)) -> String {
    let rogue = Rogue::start();
    let corelb = corelb_for(&rogue);
    for round in 0..5 {
        trigger(&corelb);
        rogue.wait_misbehaved(round as u64 + 1);
        let wrong = unrelated_clients(&corelb, round, 10);
        assert!(
            wrong.is_empty(),
            "{shape}: {} of 200 requests in round {round} got another answer: {wrong:?}",
            wrong.len()
        );
    }
    let metrics = corelb.scrape();
    println!(
        "{shape}: 0 mismatched of 1000; upstream connections discarded: {}",
        metric_sum(&metrics, "corelb_upstream_connections_discarded_total", "")
    );
    metrics
}

fn post(path: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nX-Id: trigger\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The body the early-answering backend reads as a request of its own.
const BODY_LIKE_A_REQUEST: &str = "GET /echo HTTP/1.1\r\nHost: t\r\nX-Id: stray\r\n\r\n";

#[test]
fn an_early_answer_to_a_post_whose_body_was_sent_is_never_reused() {
    no_answer_reaches_the_wrong_client("early answer, body sent", |corelb| {
        let mut client = corelb.client();
        client.send(&post("/early", "", BODY_LIKE_A_REQUEST));
        let response = client.read_response();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("X-Id"), Some("early"));
    });
}

#[test]
fn an_early_answer_is_relayed_at_once_while_the_client_still_holds_its_body() {
    let metrics = no_answer_reaches_the_wrong_client("early answer, body withheld", |corelb| {
        let mut client = corelb.client();
        // The head only: the body would follow the answer, if the client still wanted to send it.
        client.send(b"POST /early HTTP/1.1\r\nHost: t\r\nX-Id: trigger\r\nContent-Length: 100000\r\n\r\n");
        let response = client.read_response();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("X-Id"), Some("early"));
        assert_eq!(
            response.header("Connection"),
            Some("close"),
            "the client's connection cannot carry another request: its body is still unread"
        );
        client.send(&[b'x'; 1000]);
        assert!(
            client.is_closed_by_peer(Duration::from_secs(10)),
            "closed after the linger"
        );
    });
    assert!(
        metric_sum(
            &metrics,
            "corelb_upstream_connections_discarded_total",
            "early_response"
        ) >= 5.0,
        "each early answer closed its upstream connection"
    );
}

#[test]
fn an_early_answer_to_expect_100_continue_is_never_reused() {
    no_answer_reaches_the_wrong_client("early answer, Expect: 100-continue", |corelb| {
        let mut client = corelb.client();
        client.send(
            format!(
                "POST /early HTTP/1.1\r\nHost: t\r\nX-Id: trigger\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                BODY_LIKE_A_REQUEST.len()
            )
            .as_bytes(),
        );
        assert_eq!(client.read_response().status, 100);
        client.send(BODY_LIKE_A_REQUEST.as_bytes());
        let response = client.read_response();
        assert_eq!(response.header("X-Id"), Some("early"));
    });
}

#[test]
fn an_early_answer_to_expect_100_continue_before_the_body_closes_both_sides() {
    no_answer_reaches_the_wrong_client("early answer, Expect: 100-continue, body withheld", |corelb| {
        let mut client = corelb.client();
        client.send(
            b"POST /early HTTP/1.1\r\nHost: t\r\nX-Id: trigger\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
        );
        assert_eq!(client.read_response().status, 100);
        let response = client.read_response();
        assert_eq!(response.header("X-Id"), Some("early"));
        assert_eq!(response.header("Connection"), Some("close"));
    });
}

#[test]
fn an_unsolicited_second_response_is_never_handed_to_the_next_request() {
    no_answer_reaches_the_wrong_client("unsolicited second response", |corelb| {
        let response = corelb.client().get_with_id("/extra", "trigger");
        assert_eq!(response.header("X-Id"), Some("trigger"));
    });
}

#[test]
fn a_second_response_in_the_same_packet_closes_the_connection() {
    let metrics = no_answer_reaches_the_wrong_client("second response in the same write", |corelb| {
        let response = corelb.client().get_with_id("/extra?together", "trigger");
        assert_eq!(response.header("X-Id"), Some("trigger"));
    });
    assert!(
        metric_sum(
            &metrics,
            "corelb_upstream_connections_discarded_total",
            "bytes_after_response"
        ) >= 1.0
    );
}

#[test]
fn a_body_after_a_head_response_is_never_read_as_the_next_answer() {
    no_answer_reaches_the_wrong_client("body after a HEAD response", |corelb| {
        let mut client = corelb.client();
        client.send(b"HEAD /head-body HTTP/1.1\r\nHost: t\r\nX-Id: trigger\r\n\r\n");
        let response = client.read_response_to(true);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("X-Id"), Some("head"));
    });
}

#[test]
fn bytes_after_the_last_chunk_are_never_read_as_the_next_answer() {
    for path in ["/after-last-chunk", "/after-last-chunk?together"] {
        no_answer_reaches_the_wrong_client(&format!("bytes after the last chunk ({path})"), |corelb| {
            let response = corelb.client().get_with_id(path, "trigger");
            assert_eq!(response.status, 200);
            assert_eq!(response.body, b"hello");
        });
    }
}
