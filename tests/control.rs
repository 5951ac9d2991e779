//! The control plane through the real binary: every verb over `corelb ctl` and raw socket lines, its error cases,
//! and live changes under continuous load with zero failed requests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{config_for, Backend, Client, Corelb, TempDir};
use serde_json::json;

fn three() -> [Backend; 3] {
    [Backend::start("a"), Backend::start("b"), Backend::start("c")]
}

fn served_by(corelb: &Corelb, count: usize) -> HashMap<String, usize> {
    let mut client = corelb.client();
    let mut seen = HashMap::new();
    for _ in 0..count {
        *seen.entry(client.get("/").backend_id()).or_insert(0) += 1;
    }
    seen
}

#[test]
fn every_verb_works_through_ctl() {
    let backends = three();
    let corelb = Corelb::start(&config_for(&[(&backends[0], 1), (&backends[1], 1)], 2, "", ""));
    let a = backends[0].addr.to_string();
    let b = backends[1].addr.to_string();

    let (code, out, err) = corelb.ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("config version 1") && out.contains("2 workers") && out.contains(&a),
        "{out}"
    );

    let (code, out, _) = corelb.ctl(&["backend", "add", &backends[2].url(), "--weight", "3"]);
    assert_eq!(code, 0);
    assert!(out.contains("applied version 2 on every worker"), "{out}");
    let c = backends[2].addr.to_string();
    assert!(served_by(&corelb, 30).contains_key("c"), "added backend serves");

    let (code, out, _) = corelb.ctl(&["backend", "set", &c, "--weight", "5"]);
    assert_eq!(code, 0, "{out}");
    let (code, _, _) = corelb.ctl(&["backend", "drain", &a]);
    assert_eq!(code, 0);
    assert!(
        !served_by(&corelb, 20).contains_key("a"),
        "drained backend gets no new requests"
    );
    let (_, out, _) = corelb.ctl(&["backends"]);
    assert!(
        out.lines().any(|line| line.contains(&a) && line.contains("draining")),
        "{out}"
    );

    let (code, _, _) = corelb.ctl(&["backend", "remove", &a]);
    assert_eq!(code, 0);
    let (_, out, _) = corelb.ctl(&["config", "show"]);
    assert!(
        !out.contains(&a) && out.contains(&b) && out.contains("weight = 5"),
        "{out}"
    );

    let (_, out, _) = corelb.ctl(&["versions"]);
    assert!(
        out.contains("5*") && out.contains("initial config") && out.contains("socket (uid"),
        "{out}"
    );
    let (code, out, _) = corelb.ctl(&["rollback"]);
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = corelb.ctl(&["config", "show"]);
    assert!(out.contains(&a), "rollback restored the removed backend: {out}");
    let (code, _, _) = corelb.ctl(&["rollback", "1"]);
    assert_eq!(code, 0);
    let (_, out, _) = corelb.ctl(&["backends"]);
    assert!(!out.contains(&c), "version 1 had no backend c: {out}");

    let dir = TempDir::new();
    let weighted = "[balancer]\nalgorithm = \"weighted_round_robin\"\n";
    let file = dir.write(
        "next.toml",
        &config_for(&[(&backends[1], 2), (&backends[2], 1)], 2, "", weighted),
    );
    let (code, out, _) = corelb.ctl(&["config", "diff", file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("backend {a} removed")) && out.contains(&format!("backend {c} added")),
        "{out}"
    );
    let (code, _, _) = corelb.ctl(&["config", "apply", file.to_str().unwrap()]);
    assert_eq!(code, 0);
    let seen = served_by(&corelb, 30);
    assert_eq!(
        (seen.get("b"), seen.get("c"), seen.get("a")),
        (Some(&20), Some(&10), None),
        "{seen:?}"
    );

    std::fs::write(
        corelb.dir.0.join("corelb.toml"),
        config_for(&[(&backends[0], 1)], 2, "", ""),
    )
    .unwrap();
    let (code, _, _) = corelb.ctl(&["reload"]);
    assert_eq!(code, 0);
    assert_eq!(served_by(&corelb, 5).keys().collect::<Vec<_>>(), ["a"]);

    let (code, out, _) = corelb.ctl(&["log-level", "debug"]);
    assert_eq!((code, out.trim()), (0, "log level: debug"));
    let (code, out, _) = corelb.ctl(&["--json", "status"]);
    assert_eq!(code, 0);
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["result"]["workers"].as_array().unwrap().len(), 2);
}

#[test]
fn refusals_have_a_kind_and_change_nothing() {
    let backends = three();
    let corelb = Corelb::start(&config_for(&[(&backends[0], 1)], 1, "", ""));
    let dir = TempDir::new();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["backend".into(), "remove".into(), "nope".into()],
            "refused (not_found)",
        ),
        (
            vec![
                "backend".into(),
                "set".into(),
                backends[0].addr.to_string(),
                "--weight".into(),
                "0".into(),
            ],
            "weight: must be between 1 and 1000",
        ),
        (
            vec!["backend".into(), "add".into(), "ftp://x".into()],
            "refused (invalid_config)",
        ),
        (
            vec!["backend".into(), "remove".into(), backends[0].addr.to_string()],
            "backends: at least one",
        ),
        (vec!["rollback".into(), "99".into()], "refused (not_found)"),
        (vec!["log-level".into(), "loud".into()], "refused (invalid_request)"),
        // A rollout's whole target set is checked before its first step.
        (
            vec![
                "rollout".into(),
                "--to".into(),
                format!("{},ftp://nowhere", backends[1].url()),
            ],
            "refused (invalid_config)",
        ),
        (
            vec![
                "rollout".into(),
                "--to".into(),
                format!("{},{}", backends[1].url(), backends[1].url()),
            ],
            "listed twice",
        ),
        (
            vec![
                "config".into(),
                "apply".into(),
                dir.write("bad.toml", "[[frontends]\n").display().to_string(),
            ],
            "TOML syntax error",
        ),
        (
            vec![
                "config".into(),
                "apply".into(),
                dir.write("restart.toml", &config_for(&[(&backends[0], 1)], 2, "", ""))
                    .display()
                    .to_string(),
            ],
            "refused (restart_required)",
        ),
        (
            vec![
                "config".into(),
                "apply".into(),
                dir.write(
                    "format.toml",
                    &config_for(&[(&backends[0], 1)], 1, "", "[logging]\nformat = \"json\"\n"),
                )
                .display()
                .to_string(),
            ],
            "logging.format",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = corelb.ctl(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: expected {expected:?} in {err:?}");
    }
    let (_, out, _) = corelb.ctl(&["versions"]);
    assert!(out.contains("1*") && !out.contains("\n2"), "nothing was applied: {out}");

    // Applied, but the reply says a weight does nothing under round_robin.
    let (code, out, err) = corelb.ctl(&["backend", "set", &backends[0].addr.to_string(), "--weight", "5"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("note:") && out.contains("ignores weights"), "{out}");

    let output = std::process::Command::new(common::CORELB)
        .args(["ctl", "--socket", "/nonexistent/corelb.sock", "status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot reach corelb"), "{err}");
}

#[test]
fn raw_socket_lines_malformed_and_oversized() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    let oversized = vec![b'x'; 1024 * 1024 + 100];
    let replies = corelb.control_lines(&[
        br#"{"id": 1, "cmd": "status"}"#,
        b"{not json",
        br#"{"id": "q", "cmd": "teleport"}"#,
        &oversized,
        br#"{"id": 2, "cmd": "backends"}"#,
    ]);
    assert_eq!(replies[0]["id"], 1);
    assert_eq!(replies[0]["ok"], true);
    assert_eq!(replies[1]["error"]["kind"], "invalid_request");
    assert!(replies[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    assert_eq!(replies[2]["id"], "q");
    assert_eq!(replies[2]["error"]["kind"], "invalid_request");
    assert!(
        replies[3]["error"]["message"].as_str().unwrap().contains("exceeds"),
        "{}",
        replies[3]
    );
    assert_eq!(replies[4]["id"], 2, "the connection stays usable");
    assert_eq!(replies[4]["result"]["backends"][0]["id"], backend.addr.to_string());

    // Many clients at once.
    let socket = corelb.socket();
    let clients: Vec<_> = (0..16)
        .map(|index| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader, Write};
                let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
                stream
                    .write_all(format!("{{\"id\": {index}, \"cmd\": \"versions\"}}\n").as_bytes())
                    .unwrap();
                let mut line = String::new();
                BufReader::new(stream).read_line(&mut line).unwrap();
                serde_json::from_str::<serde_json::Value>(&line).unwrap()["id"] == index
            })
        })
        .collect();
    assert!(clients.into_iter().all(|client| client.join().unwrap()));
    let mode = std::fs::metadata(corelb.socket())
        .map(|meta| std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);
}

/// A bounded load on loopback: `threads` keep-alive clients, each request recorded with its send time.
struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(Instant, u16, String)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(corelb: &Corelb, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handles = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let log = Arc::clone(&log);
                let addr = corelb.addr;
                std::thread::spawn(move || {
                    let mut client = Client::connect(addr);
                    let deadline = Instant::now() + Duration::from_secs(60);
                    for _ in 0..200_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            return;
                        }
                        let sent = Instant::now();
                        // A failed exchange is recorded as status 0, not a panic, and the client reconnects.
                        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client.get("/")));
                        let (status, id) = match outcome {
                            Ok(response) => (
                                response.status,
                                response.header("X-Backend-Id").unwrap_or("").to_string(),
                            ),
                            Err(_) => {
                                client = Client::connect(addr);
                                (0, String::new())
                            }
                        };
                        log.lock().unwrap().push((sent, status, id));
                    }
                })
            })
            .collect();
        Load {
            stop,
            log,
            threads: handles,
        }
    }

    fn finish(self) -> Vec<(Instant, u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("load thread");
        }
        Arc::try_unwrap(self.log).unwrap().into_inner().unwrap()
    }
}

#[test]
fn live_changes_under_load_lose_no_request() {
    let backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
        Backend::start("d"),
    ];
    let corelb = Corelb::start(&config_for(&[(&backends[0], 1), (&backends[1], 1)], 2, "", ""));
    let load = Load::start(&corelb, 4);
    std::thread::sleep(Duration::from_millis(200));
    // (removed at, no longer absent from, backend): no request sent in between, 1s after removal, may reach it.
    let mut absences: Vec<(Instant, Instant, &str)> = Vec::new();
    let mut apply_times = Vec::new();
    let mut ctl = |args: &[&str]| {
        let started = Instant::now();
        let (code, out, err) = corelb.ctl(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        apply_times.push(started.elapsed());
        Instant::now()
    };
    ctl(&["backend", "add", &backends[2].url()]);
    ctl(&["backend", "set", &backends[0].addr.to_string(), "--weight", "3"]);
    ctl(&["backend", "drain", &backends[1].addr.to_string()]);
    let removed_b = ctl(&["backend", "remove", &backends[1].addr.to_string()]);
    let dir = TempDir::new();
    for round in 0..20 {
        let weight = 1 + round % 5;
        let file = dir.write(
            "round.toml",
            &config_for(
                &[(&backends[0], weight), (&backends[2], 1), (&backends[3], 1)],
                2,
                "",
                "",
            ),
        );
        ctl(&["config", "apply", file.to_str().unwrap()]);
    }
    // Full rollout from {a, c, d} to {b, d}, then roll back the last version.
    let before_rollout = corelb.control(json!({"cmd": "versions"}))["result"]["current"]
        .as_u64()
        .unwrap()
        .to_string();
    let target = format!("{},{}", backends[1].url(), backends[3].url());
    let rollout_issued = Instant::now();
    ctl(&["rollout", "--to", &target, "--batch", "1", "--interval", "100ms"]);
    absences.push((removed_b, rollout_issued, "b"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = corelb.control(json!({"cmd": "rollout_status"}));
        if reply["result"]["state"] == "done" {
            break;
        }
        assert_ne!(reply["result"]["state"], "paused", "rollout paused: {reply}");
        assert!(Instant::now() < deadline, "rollout did not finish: {reply}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rolled_out = Instant::now();
    std::thread::sleep(Duration::from_millis(1300));
    let rollback_issued = Instant::now();
    let rolled_back = ctl(&["rollback", &before_rollout]);
    absences.push((rolled_out, rollback_issued, "a"));
    absences.push((rolled_out, rollback_issued, "c"));
    std::thread::sleep(Duration::from_millis(500));
    let log = load.finish();

    let failed: Vec<_> = log
        .iter()
        .filter(|(_, status, id)| *status != 200 || id.is_empty())
        .collect();
    assert!(log.len() > 500, "load ran: {} requests", log.len());
    assert_eq!(
        failed.len(),
        0,
        "failed requests under live changes: {:?}",
        &failed[..failed.len().min(5)]
    );
    for (removed_at, back_at, removed) in absences {
        let late = log
            .iter()
            .filter(|(sent, _, id)| *sent > removed_at + Duration::from_secs(1) && *sent < back_at && id == removed)
            .count();
        assert_eq!(
            late, 0,
            "backend {removed} still served requests sent more than 1s after its removal"
        );
    }
    let after_rollback: Vec<&str> = log
        .iter()
        .filter(|(sent, _, _)| *sent > rolled_back + Duration::from_millis(100))
        .map(|(_, _, id)| id.as_str())
        .collect();
    assert!(after_rollback.contains(&"a"), "the rollback restored a's traffic");
    let slowest = apply_times.iter().max().unwrap();
    eprintln!(
        "{} requests, 0 failed; {} changes, slowest ctl round trip {slowest:?}",
        log.len(),
        apply_times.len()
    );
}

#[test]
fn admin_api_runs_the_same_commands() {
    let backends = three();
    let server = "";
    let admin = "[admin]\nenabled = true\naddress = \"127.0.0.1\"\nport = 0\ntoken = \"s3cret\"\n";
    let corelb = Corelb::start(&config_for(&[(&backends[0], 1)], 1, server, admin));
    let addr = corelb.admin_addr();
    let call = |method: &str, path: &str, body: &str, token: Option<&str>| {
        let mut client = Client::connect(addr);
        let auth = token
            .map(|token| format!("Authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        client.send(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let response = client.read_response();
        let value: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        (response.status, value)
    };
    let token = Some("s3cret");
    assert_eq!(call("GET", "/api/v1/backends", "", None).0, 401);
    assert_eq!(call("GET", "/api/v1/backends", "", Some("wrong")).0, 401);
    let (status, body) = call("GET", "/api/v1/backends", "", token);
    assert_eq!((status, body["result"]["backends"].as_array().unwrap().len()), (200, 1));
    let (status, body) = call(
        "POST",
        "/api/v1/backends",
        &json!({"url": backends[1].url(), "weight": 2}).to_string(),
        token,
    );
    assert_eq!(status, 200, "{body}");
    let b = backends[1].addr.to_string();
    let (status, _) = call("PUT", &format!("/api/v1/backends/{b}"), r#"{"weight": 4}"#, token);
    assert_eq!(status, 200);
    assert_eq!(call("PUT", "/api/v1/backends/nope", r#"{"weight": 4}"#, token).0, 404);
    assert_eq!(call("POST", "/api/v1/backends", "{broken", token).0, 400);
    assert_eq!(call("POST", "/api/v1/backends", r#"{"url": "ftp://x"}"#, token).0, 422);
    let (status, body) = call("GET", "/api/v1/config", "", token);
    assert_eq!(status, 200);
    assert!(body["result"]["toml"].as_str().unwrap().contains("weight = 4"));
    let shown = body["result"]["toml"].as_str().unwrap();
    assert!(
        !shown.contains("s3cret") && shown.contains("<redacted>"),
        "the token is never shown: {shown}"
    );
    let (_, out, _) = corelb.ctl(&["config", "show"]);
    assert!(!out.contains("s3cret"), "{out}");
    let (status, _) = call("DELETE", &format!("/api/v1/backends/{b}"), "", token);
    assert_eq!(status, 200);
    let (status, body) = call("GET", "/api/v1/versions", "", token);
    assert_eq!((status, body["result"]["current"].as_u64()), (200, Some(4)));
    let (status, _) = call("POST", "/api/v1/rollback", r#"{"version": 2}"#, token);
    assert_eq!(status, 200);
    assert!(
        served_by(&corelb, 10).contains_key("b"),
        "rollback through the API restored b"
    );
    let new_config = config_for(&[(&backends[2], 1)], 1, server, admin);
    let (status, body) = call("POST", "/api/v1/config", &new_config, token);
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_by(&corelb, 3).keys().collect::<Vec<_>>(), ["c"]);
    assert_eq!(call("GET", "/api/v1/nothing", "", token).0, 404);
}

#[test]
fn admin_api_requires_a_token_on_every_address() {
    for address in ["127.0.0.1", "0.0.0.0"] {
        let dir = TempDir::new();
        let path = dir.write(
            "open.toml",
            &format!(
                "[[frontends]]\nport = 0\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n[admin]\nenabled = true\naddress = \"{address}\"\n"
            ),
        );
        let output = std::process::Command::new(common::CORELB)
            .arg("run")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{address}: {stderr}");
        assert!(
            stderr.contains("admin.token: is required when the admin API is enabled"),
            "{address}: {stderr}"
        );
    }
}

/// Sends one raw control line on a thread of its own and hands back the reply when it comes.
fn control_in_background(corelb: &Corelb, request: serde_json::Value) -> std::thread::JoinHandle<serde_json::Value> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(corelb.socket()).unwrap();
    std::thread::spawn(move || {
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        stream.write_all(format!("{request}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|error| panic!("bad reply {reply:?}: {error}"))
    })
}

/// Polls `status` until `condition` holds of it (10 s at most).
fn status_when(corelb: &Corelb, what: &str, condition: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = corelb.control(json!({"cmd": "status"}));
        assert_eq!(status["ok"], true, "{status}");
        if condition(&status["result"]) {
            return status["result"].clone();
        }
        assert!(Instant::now() < deadline, "never saw {what}: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reads_are_answered_while_a_reload_waits_for_its_file_and_changes_wait_their_turn() {
    use std::io::Write;
    let [a, b, _c] = three();
    let corelb = Corelb::start(&config_for(&[(&a, 1)], 1, "", ""));
    // The config file becomes a FIFO nobody writes yet: reading it blocks until the test writes.
    let path = corelb.dir.0.join("corelb.toml");
    std::fs::remove_file(&path).unwrap();
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");

    let reload = control_in_background(&corelb, json!({"cmd": "reload"}));
    status_when(&corelb, "the reload in flight", |status| {
        status["changes"]["in_flight"] == true
    });
    // A change that arrives meanwhile waits behind it, and is applied to what the reload made.
    let a_id = a.url().trim_start_matches("http://").to_string();
    let drain = control_in_background(&corelb, json!({"cmd": "backend_drain", "backend": a_id}));
    status_when(&corelb, "the drain waiting", |status| status["changes"]["waiting"] == 1);
    // Reads and traffic go on: ctl, /metrics, /health through the admin-less metrics port, and proxying.
    let (code, out, err) = corelb.ctl(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        corelb.scrape().contains("corelb_config_version 1"),
        "metrics answer on the old version"
    );
    assert_eq!(corelb.get("/").status, 200);
    assert!(
        !reload.is_finished(),
        "the reload cannot have ended before its file was written"
    );

    let config = config_for(&[(&a, 1), (&b, 1)], 1, "", "");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let reloaded = reload.join().unwrap();
    assert_eq!(reloaded["ok"], true, "{reloaded}");
    assert_eq!(reloaded["result"]["applied"], true, "{reloaded}");
    let drained = drain.join().unwrap();
    assert_eq!(drained["ok"], true, "{drained}");
    let backends = corelb.control(json!({"cmd": "backends"}));
    assert_eq!(
        backends["result"]["backends"].as_array().unwrap().len(),
        2,
        "{backends}"
    );
    assert_eq!(backends["result"]["backends"][0]["state"], "draining", "{backends}");
    let served = served_by(&corelb, 20);
    assert_eq!(
        served.get("b").copied(),
        Some(20),
        "only the new backend serves: {served:?}"
    );
}

#[test]
fn reads_are_answered_while_a_rollout_probe_waits_for_a_slow_backend() {
    use std::io::{Read, Write};
    let old = Backend::start("old");
    let corelb = Corelb::start(&config_for(&[(&old, 1)], 1, "", "[healthcheck]\ntimeout = \"30s\"\n"));
    // The new backend accepts the probe and answers only when the test says so.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let (accepted_tx, accepted) = std::sync::mpsc::channel();
    let (answer_tx, answer) = std::sync::mpsc::channel::<()>();
    let prober = std::thread::spawn(move || {
        let (mut stream, _) = silent.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request).unwrap();
        accepted_tx
            .send(String::from_utf8_lossy(&request).into_owned())
            .unwrap();
        answer.recv().unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
    });

    let started = corelb.control(json!({"cmd": "rollout_start", "to": [url], "interval": "50ms"}));
    assert_eq!(started["ok"], true, "{started}");
    let probe = accepted
        .recv_timeout(Duration::from_secs(10))
        .expect("the probe reaches the new backend");
    assert!(probe.starts_with("GET /health HTTP/1.1"), "{probe}");
    // While the probe waits: ctl, /metrics and traffic are answered, and the rollout says what it waits for.
    let status = status_when(&corelb, "the probe in flight", |status| {
        status["changes"]["in_flight"] == true
    });
    assert_eq!(
        status["rollout"]["awaiting_health"].as_array().unwrap().len(),
        1,
        "{status}"
    );
    let (code, out, err) = corelb.ctl(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(corelb.scrape().contains("corelb_config_version"));
    assert_eq!(corelb.get("/").backend_id(), "old");

    answer_tx.send(()).unwrap();
    prober.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = corelb.control(json!({"cmd": "rollout_status"}));
        if status["result"]["state"] == "done" {
            let old_id = old.url().trim_start_matches("http://").to_string();
            assert_eq!(status["result"]["removed"][0], old_id.as_str(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "the rollout never finished: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reads_are_answered_while_a_dns_lookup_hangs() {
    // A resolver shim (tests/fixtures/hanging_resolver.c, preloaded) holds every lookup of "hang.test" until the
    // gate file is removed: a lookup that hangs, as a dead DNS server makes one.
    let dir = TempDir::new();
    let shim = dir.0.join("hanging_resolver.so");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hanging_resolver.c");
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("run cc (scripts/install-test-tools.sh installs it)");
    assert!(built.success(), "building the resolver shim failed");
    let gate = dir.write("gate", "held");
    let [a, b, _c] = three();
    let corelb = Corelb::start_with_env(
        &config_for(&[(&a, 1)], 1, "", ""),
        &[
            ("LD_PRELOAD", shim.as_os_str()),
            ("CORELB_TEST_DNS_GATE", gate.as_os_str()),
        ],
    );
    let port = b.url().rsplit(':').next().unwrap().to_string();
    let add = control_in_background(
        &corelb,
        json!({"cmd": "backend_add", "url": format!("http://hang.test:{port}"), "id": "late"}),
    );
    status_when(&corelb, "the lookup in flight", |status| {
        status["changes"]["in_flight"] == true
    });
    let (code, out, err) = corelb.ctl(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(corelb.scrape().contains("corelb_config_version 1"));
    assert_eq!(corelb.get("/").backend_id(), "a");
    assert!(!add.is_finished(), "the add cannot have ended while its lookup is held");

    std::fs::remove_file(&gate).unwrap();
    let added = add.join().unwrap();
    assert_eq!(added["ok"], true, "{added}");
    assert_eq!(added["result"]["applied"], true, "{added}");
    let backends = corelb.control(json!({"cmd": "backends"}));
    let late = &backends["result"]["backends"][1];
    assert_eq!(late["id"], "late", "{backends}");
    assert_eq!(late["address"], format!("127.0.0.1:{port}").as_str(), "{backends}");
}

#[test]
fn backend_tags_show_in_ctl_backends_and_health_detail_and_survive_a_change() {
    let backend = Backend::start("a");
    let config = config_for(&[(&backend, 1)], 1, "", "").replace(
        "weight = 1\n",
        "weight = 1\ntags = { zone = \"eu-1\", rack = \"r3\" }\n",
    );
    let corelb = Corelb::start(&config);
    let tags = json!({"zone": "eu-1", "rack": "r3"});
    let listed = corelb.control(json!({"cmd": "backends"}));
    assert_eq!(listed["result"]["backends"][0]["tags"], tags, "{listed}");
    let health = Client::connect(corelb.metrics_addr()).get("/health");
    let body: serde_json::Value = serde_json::from_str(&health.text()).unwrap();
    assert_eq!(body["detail"][0]["tags"], tags, "{body}");
    assert_eq!(body["detail"][0]["id"], backend.id());

    // Another change to the backend keeps its tags: they are config, carried through every edit.
    let set = corelb.control(json!({"cmd": "backend_set", "backend": backend.id(), "weight": 2}));
    assert_eq!(set["ok"], true, "{set}");
    let listed = corelb.control(json!({"cmd": "backends"}));
    assert_eq!(listed["result"]["backends"][0]["tags"], tags, "{listed}");
    assert_eq!(listed["result"]["backends"][0]["weight"], 2);
}
