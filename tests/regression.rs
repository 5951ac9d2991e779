//! One test per bug found in review, so each stays fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::time::{Duration, Instant};

use common::{config_for, config_from_urls, Backend, Corelb, DeadBackend};
use serde_json::json;

/// A header timeout with pipelined bytes buffered left the read buffer inconsistent, and the next access panicked,
/// taking the whole worker (and every connection on it) down.
#[test]
fn header_timeout_after_pipelined_bytes_keeps_the_worker_alive() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(
        &[(&backend, 1)],
        1,
        "",
        "[timeouts]\nclient_header = \"300ms\"\n",
    ));
    let mut client = corelb.client();
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nG");
    assert_eq!(client.read_response().status, 200);
    assert_eq!(
        client.read_response().status,
        408,
        "the incomplete pipelined head times out"
    );
    for _ in 0..3 {
        assert_eq!(corelb.get("/").status, 200, "the worker still serves");
    }
    assert!(!corelb.process.output().iter().any(|line| line.contains("panicked")));
}

/// An error answering a HEAD request carried a body on a kept-alive connection, desynchronising it.
#[test]
fn error_replies_to_head_have_no_body() {
    let dead = DeadBackend::new();
    let corelb = Corelb::start(&config_from_urls(&[(dead.url(), 1)], 1, "", ""));
    let mut client = corelb.client();
    client.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(client.read_response_to(true).status, 502);
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let next = client.read_response();
    assert_eq!(next.status, 502);
    assert!(
        next.text().starts_with("502 Bad Gateway"),
        "the next response is read in sync: {:?}",
        next.text()
    );
}

/// `GET http://h?q=1` was forwarded as `GET ?q=1`.
#[test]
fn absolute_form_without_a_path_gets_one() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    let mut client = corelb.client();
    client.send(b"GET http://site.example?q=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.backend_id(), "a");
    client.send(b"GET http://site.example/echo?q=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(client.read_response().text().contains("\"path\":\"/echo?q=1\""));
}

/// An explicit `Content-Length: 0` was dropped, and strict servers answer 411 to a POST without one.
#[test]
fn empty_post_keeps_its_content_length() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    let mut client = corelb.client();
    client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    let text = client.read_response().text();
    assert!(text.contains("[\"Content-Length\",\"0\"]"), "{text}");
}

/// A request arriving on a kept-alive connection after a config change used the config from before its wait.
#[test]
fn a_kept_alive_connection_uses_the_config_current_when_its_request_arrives() {
    let first = Backend::start("first");
    let second = Backend::start("second");
    let corelb = Corelb::start(&config_for(&[(&first, 1)], 1, "", ""));
    let mut client = corelb.client();
    assert_eq!(client.get("/").backend_id(), "first");
    let dir = common::TempDir::new();
    let file = dir.write("next.toml", &config_for(&[(&second, 1)], 1, "", ""));
    let (code, _, err) = corelb.ctl(&["config", "apply", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(client.get("/").backend_id(), "second");
}

/// A rollout step that failed had already taken its work off the queue; resuming then drained every old backend.
#[test]
fn a_failed_rollout_step_is_retried_not_skipped() {
    let old = Backend::start("old");
    let corelb = Corelb::start(&config_for(&[(&old, 1)], 1, "", ""));
    let started =
        corelb.control(json!({"cmd": "rollout_start", "to": ["http://unresolvable.invalid:80"], "interval": "50ms"}));
    assert_eq!(started["ok"], true, "{started}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let paused = loop {
        let status = corelb.control(json!({"cmd": "rollout_status"}));
        if status["result"]["state"] == "paused" {
            break status;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        paused["result"]["last_error"]
            .as_str()
            .unwrap()
            .contains("unresolvable"),
        "{paused}"
    );
    assert_eq!(
        paused["result"]["pending_add"][0], "http://unresolvable.invalid:80",
        "the failed step is still pending"
    );
    corelb.control(json!({"cmd": "rollout_resume"}));
    // Resuming clears the last error; the retried step, failing again, sets it anew.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = corelb.control(json!({"cmd": "rollout_status"}));
        if !status["result"]["last_error"].is_null() {
            break status;
        }
        assert!(Instant::now() < deadline, "the resumed step never ended: {status}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status["result"]["state"], "paused", "{status}");
    assert_eq!(
        status["result"]["draining"].as_array().unwrap().len(),
        0,
        "nothing was drained: {status}"
    );
    assert_eq!(corelb.get("/").status, 200, "the old backend still serves");
    assert_eq!(corelb.control(json!({"cmd": "rollout_abort"}))["ok"], true);
    assert_eq!(
        corelb.control(json!({"cmd": "rollout_status"}))["result"]["state"],
        "aborted"
    );
}
