//! Cookie-inserted sticky sessions (`[balancer.sticky]`) through the real binary: a client keeps its backend across
//! requests, connections, workers and config changes; a forged, altered or stale cookie is never followed and is
//! replaced; a drained backend's clients move and stick to their new backend; a shared secret file gives every
//! process the same cookies; a sticky backend at capacity is waited for, then left.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{config_for, Backend, Client, Corelb, Response, TempDir};
use serde_json::json;

const STICKY: &str = "[balancer.sticky]\nenabled = true\nttl = \"1h\"\n";

/// `GET /` on a fresh connection, with `cookie` (a `Cookie` field value) when given.
fn get(corelb: &Corelb, cookie: Option<&str>) -> Response {
    let mut client = Client::connect(corelb.addr);
    let cookie = cookie.map_or(String::new(), |cookie| format!("Cookie: {cookie}\r\n"));
    client.send(format!("GET / HTTP/1.1\r\nHost: t\r\n{cookie}\r\n").as_bytes());
    let response = client.read_response();
    assert_eq!(response.status, 200, "{response:?}");
    response
}

/// The `corelb_srv` value a response sets, if it sets one.
fn set_value(response: &Response) -> Option<String> {
    let line = response.header("Set-Cookie")?;
    let value = line.strip_prefix("corelb_srv=")?.split(';').next()?;
    Some(value.to_string())
}

/// Each backend's cookie value, learnt from first requests without a cookie (round-robin reaches each in turn).
fn values_by_backend(corelb: &Corelb, backends: usize) -> HashMap<String, String> {
    let mut values = HashMap::new();
    for _ in 0..backends * 4 {
        let response = get(corelb, None);
        let value = set_value(&response).unwrap_or_else(|| panic!("no cookie set: {response:?}"));
        values.insert(response.backend_id(), value);
    }
    assert_eq!(values.len(), backends, "{values:?}");
    values
}

#[test]
fn a_client_keeps_its_backend_across_requests_connections_workers_and_a_reload() {
    let backends = [Backend::start("a"), Backend::start("b"), Backend::start("c")];
    let weights: Vec<(&Backend, u32)> = backends.iter().map(|backend| (backend, 1)).collect();
    let corelb = Corelb::start(&config_for(&weights, 2, "", STICKY));
    let first = get(&corelb, None);
    let line = first.header("Set-Cookie").unwrap().to_string();
    assert!(
        line.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"),
        "the configured attributes: {line}"
    );
    let value = set_value(&first).unwrap();
    assert_eq!(value.len(), 22, "{value}");
    assert!(!line.contains("127.0.0.1"), "the cookie names no address: {line}");
    let home = first.backend_id();
    let cookie = format!("theme=dark; corelb_srv={value}; lang=en");
    let mut workers = HashSet::new();
    for _ in 0..40 {
        let response = get(&corelb, Some(&cookie));
        assert_eq!(response.backend_id(), home, "{response:?}");
        assert_eq!(
            response.header("Set-Cookie"),
            None,
            "a client holding its cookie is not sent it again"
        );
        workers.insert(response.header("X-Corelb-Worker").unwrap().to_string());
    }
    assert_eq!(workers.len(), 2, "40 connections reached both workers: {workers:?}");
    // A config change that keeps the backend keeps its clients.
    let extra = Backend::start("d");
    let added = corelb.control(json!({"cmd": "backend_add", "url": extra.url()}));
    assert_eq!(added["ok"], true, "{added}");
    let reweighted = corelb.control(json!({"cmd": "backend_set", "backend": backends[0].id(), "weight": 5}));
    assert_eq!(reweighted["ok"], true, "{reweighted}");
    for _ in 0..20 {
        assert_eq!(get(&corelb, Some(&cookie)).backend_id(), home);
    }
    // On one keep-alive connection too.
    let mut client = Client::connect(corelb.addr);
    for _ in 0..10 {
        client.send(format!("GET / HTTP/1.1\r\nHost: t\r\nCookie: corelb_srv={value}\r\n\r\n").as_bytes());
        assert_eq!(client.read_response().backend_id(), home);
    }
}

#[test]
fn a_forged_altered_or_stale_cookie_is_never_followed_and_is_replaced() {
    let backends = [Backend::start("a"), Backend::start("b"), Backend::start("c")];
    let weights: Vec<(&Backend, u32)> = backends.iter().map(|backend| (backend, 1)).collect();
    let corelb = Corelb::start(&config_for(&weights, 1, "", STICKY));
    let values = values_by_backend(&corelb, 3);
    let valid: HashSet<&String> = values.values().collect();
    let target = &values[&backends[0].id];
    let mut altered = target.clone().into_bytes();
    altered[21] = if altered[21] == b'A' { b'B' } else { b'A' };
    let forged = [
        String::from_utf8(altered).unwrap(),
        backends[0].id(),
        backends[0].addr.to_string(),
        "AAAAAAAAAAAAAAAAAAAAAA".to_string(),
        String::new(),
        format!("{target}x"),
    ];
    for value in &forged {
        // Round-robin spreads the fallbacks: if a forgery were followed, backend a would take every one.
        let mut reached = HashSet::new();
        for _ in 0..3 {
            let response = get(&corelb, Some(&format!("corelb_srv={value}")));
            let replaced = set_value(&response).unwrap_or_else(|| panic!("{value:?} was not replaced: {response:?}"));
            assert!(valid.contains(&replaced), "{replaced} is a real value");
            assert_eq!(
                values[&response.backend_id()],
                replaced,
                "the new cookie names the backend that answered"
            );
            reached.insert(response.backend_id());
        }
        assert_eq!(reached.len(), 3, "{value:?} steered the request: {reached:?}");
    }
    // Stale: the backend it named is gone. The client is served elsewhere and given a cookie that sticks.
    let gone = backends[2].id.clone();
    let removed = corelb.control(json!({"cmd": "backend_remove", "backend": backends[2].id()}));
    assert_eq!(removed["ok"], true, "{removed}");
    let response = get(&corelb, Some(&format!("corelb_srv={}", values[&gone])));
    assert_ne!(response.backend_id(), gone);
    let fresh = set_value(&response).unwrap();
    let new_home = response.backend_id();
    for _ in 0..6 {
        assert_eq!(
            get(&corelb, Some(&format!("corelb_srv={fresh}"))).backend_id(),
            new_home
        );
    }
}

#[test]
fn a_drained_backends_clients_move_and_stick_to_their_new_backend() {
    let backends = [Backend::start("a"), Backend::start("b"), Backend::start("c")];
    let weights: Vec<(&Backend, u32)> = backends.iter().map(|backend| (backend, 1)).collect();
    let corelb = Corelb::start(&config_for(&weights, 2, "", STICKY));
    let values = values_by_backend(&corelb, 3);
    let drained = backends[1].id.clone();
    let answer = corelb.control(json!({"cmd": "backend_drain", "backend": backends[1].id()}));
    assert_eq!(answer["ok"], true, "{answer}");
    let moved = get(&corelb, Some(&format!("corelb_srv={}", values[&drained])));
    assert_ne!(moved.backend_id(), drained);
    let value = set_value(&moved).expect("the moved client gets its new backend's cookie");
    assert_eq!(value, values[&moved.backend_id()]);
    for _ in 0..10 {
        let response = get(&corelb, Some(&format!("corelb_srv={value}")));
        assert_eq!(response.backend_id(), moved.backend_id());
        assert_eq!(response.header("Set-Cookie"), None);
    }
}

/// The cookie value a corelb with `config` sets for the first backend (the first request goes there).
fn first_value(config: &str) -> String {
    let corelb = Corelb::start(config);
    set_value(&get(&corelb, None)).unwrap()
}

#[test]
fn processes_sharing_a_secret_file_set_the_same_cookies_and_a_short_one_is_refused() {
    let backend = Backend::start("a");
    let dir = TempDir::new();
    let secret = dir.write(
        "sticky.key",
        "3f1c9a0b7d2e4f6a8b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6\n",
    );
    let shared = format!("{STICKY}secret_file = \"{}\"\n", secret.display());
    let config = config_for(&[(&backend, 1)], 1, "", &shared);
    let one = first_value(&config);
    assert_eq!(first_value(&config), one, "a second process, same secret: same cookie");
    let own = config_for(&[(&backend, 1)], 1, "", STICKY);
    assert_ne!(first_value(&own), one, "without the file, a key of the process's own");

    let short = dir.write("short.key", "too short\n");
    let refused = config.replace(&secret.display().to_string(), &short.display().to_string());
    let path = dir.write("refused.toml", &refused);
    let output = Command::new(env!("CARGO_BIN_EXE_corelb"))
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("balancer.sticky.secret_file") && stderr.contains("holds 9 bytes; at least 32"),
        "{stderr}"
    );
}

#[test]
fn a_sticky_backend_at_capacity_is_waited_for_then_left_with_the_cookie_moved() {
    let capped = Backend::start("capped");
    let other = Backend::start("other");
    let sticky = format!(
        "[[backends]]\nid = \"capped\"\nurl = \"{}\"\nmax_connections = 1\n\n[[backends]]\nid = \"other\"\nurl = \"{}\"\n\n\
         {STICKY}[upstream]\ncapacity_queue_timeout = \"300ms\"\n",
        capped.url(),
        other.url()
    );
    let corelb = Corelb::start(&common::config_from_urls(&[], 1, "", &sticky));
    let values = values_by_backend(&corelb, 2);
    let home = &values["capped"];
    let mut holder = Client::connect(corelb.addr);
    holder.send(format!("GET /hold HTTP/1.1\r\nHost: t\r\nCookie: corelb_srv={home}\r\n\r\n").as_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    while capped.held() == 0 {
        assert!(Instant::now() < deadline, "never held");
        std::thread::sleep(Duration::from_millis(5));
    }
    let asked = Instant::now();
    let moved = get(&corelb, Some(&format!("corelb_srv={home}")));
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "it waited for its own backend first"
    );
    assert_eq!(moved.backend_id(), "other", "{moved:?}");
    assert_eq!(set_value(&moved).as_ref(), Some(&values["other"]));
    capped.release();
    assert_eq!(holder.read_response().backend_id(), "capped");
    assert_eq!(
        get(&corelb, Some(&format!("corelb_srv={home}"))).backend_id(),
        "capped",
        "room again"
    );
}
