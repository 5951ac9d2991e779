//! Observability through the real binary: exact merged metrics over two workers, the Prometheus exposition checked
//! by promtool, access log lines, request ids, the log level changed at runtime, and corelb's own /health.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{config_for, config_from_urls, metric_sum as sum, Backend, Client, Corelb, DeadBackend};

#[test]
fn merged_totals_are_exact_over_two_workers() {
    let backends = [Backend::start("a"), Backend::start("b")];
    let corelb = Corelb::start(&config_for(&[(&backends[0], 1), (&backends[1], 1)], 2, "", ""));
    let connections = 40;
    let per_connection = 25;
    let mut workers_seen = std::collections::HashSet::new();
    for _ in 0..connections {
        let mut client = corelb.client();
        for _ in 0..per_connection {
            let response = client.get("/");
            assert_eq!(response.status, 200);
            workers_seen.insert(response.header("X-Corelb-Worker").unwrap().to_string());
        }
    }
    // Refused and failed requests are counted too, under backend "none".
    let mut bad = corelb.client();
    bad.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(bad.read_response().status, 400);
    let total = connections * per_connection + 1;

    let text = corelb.scrape();
    assert_eq!(workers_seen.len(), 2, "both workers served");
    assert_eq!(sum(&text, "corelb_requests_total", ""), total as f64, "{text}");
    // The refused head never parsed, so its method is the bounded "OTHER".
    assert_eq!(
        sum(
            &text,
            "corelb_requests_total",
            "backend=\"none\",method=\"OTHER\",status_class=\"4xx\""
        ),
        1.0
    );
    assert_eq!(sum(&text, "corelb_worker_requests_total", ""), total as f64);
    assert_eq!(sum(&text, "corelb_request_duration_seconds_count", ""), total as f64);
    assert_eq!(
        sum(&text, "corelb_upstream_response_seconds_count", ""),
        (total - 1) as f64
    );
    assert_eq!(
        sum(&text, "corelb_request_duration_seconds_bucket", "le=\"+Inf\""),
        total as f64
    );
    assert_eq!(
        sum(&text, "corelb_client_connections_total", ""),
        (connections + 1) as f64
    );
    assert_eq!(sum(&text, "corelb_errors_total", "category=\"bad_request\""), 1.0);
    let new = sum(&text, "corelb_upstream_connections_total", "kind=\"new\"");
    let reused = sum(&text, "corelb_upstream_connections_total", "kind=\"reused\"");
    assert_eq!(new + reused, (total - 1) as f64);
    assert!(reused > new * 10.0, "keep-alive pool hits: new {new}, reused {reused}");
    for family in [
        "corelb_requests_total",
        "corelb_request_duration_seconds",
        "corelb_upstream_response_seconds",
        "corelb_received_bytes_total",
        "corelb_sent_bytes_total",
        "corelb_client_connections_active",
        "corelb_client_connections_total",
        "corelb_upstream_connections_total",
        "corelb_upstream_connections_idle",
        "corelb_upstream_connections_open",
        "corelb_errors_total",
        "corelb_backend_up",
        "corelb_backend_weight",
        "corelb_backend_effective_weight",
        "corelb_config_version",
        "corelb_config_last_reload_successful",
        "corelb_config_last_reload_timestamp_seconds",
        "corelb_worker_requests_total",
        "corelb_build_info",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "family {family} missing:\n{text}"
        );
    }
    assert!(!text.contains("127.0.0.1\""), "no client addresses in labels");
}

#[test]
fn exposition_passes_promtool() {
    let backend = Backend::start("a");
    let dead = DeadBackend::new();
    let corelb = Corelb::start(&config_from_urls(&[(backend.url(), 1), (dead.url(), 1)], 2, "", ""));
    for _ in 0..20 {
        corelb.get("/");
    }
    let text = corelb.scrape();
    assert!(
        sum(&text, "corelb_retries_total", "reason=\"connect_failed\"") >= 1.0,
        "{text}"
    );
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by scripts/install-test-tools.sh (make test runs it)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn access_log_lines_are_json_with_every_field_and_reopen_on_sigusr1() {
    let backend = Backend::start("a");
    let dir = common::TempDir::new();
    let log = dir.0.join("access.log");
    let extra = format!("[access_log]\nenabled = true\npath = \"{}\"\n", log.display());
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 2, "", &extra));
    let mut client = corelb.client();
    client.send(b"GET /echo?q=1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: trace-42\r\nUser-Agent: tester\r\n\r\n");
    let echoed = client.read_response();
    assert_eq!(
        echoed.header("X-Request-Id"),
        Some("trace-42"),
        "a well-formed id is kept"
    );
    assert!(
        echoed.text().contains("[\"X-Request-Id\",\"trace-42\"]"),
        "and forwarded: {}",
        echoed.text()
    );
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: bad id!\r\n\r\n");
    let replaced = client.read_response();
    let generated = replaced.header("X-Request-Id").unwrap().to_string();
    assert_ne!(generated, "bad id!", "a malformed id is replaced");
    let mut bad = corelb.client();
    bad.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(bad.read_response().status, 400);

    let lines = wait_for_lines(&log, 3);
    let entries: Vec<serde_json::Value> = lines.iter().map(|line| serde_json::from_str(line).unwrap()).collect();
    let first = entries
        .iter()
        .find(|entry| entry["request_id"] == "trace-42")
        .expect("traced request logged");
    for key in [
        "time",
        "client",
        "client_port",
        "frontend",
        "method",
        "path",
        "version",
        "status",
        "bytes_sent",
        "bytes_received",
        "duration_seconds",
        "upstream_seconds",
        "backend",
        "worker",
        "error",
        "request_id",
    ] {
        assert!(first.get(key).is_some(), "{key} missing in {first}");
    }
    assert_eq!(first["path"], "/echo?q=1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["backend"], backend.addr.to_string());
    assert!(first["upstream_seconds"].as_f64().unwrap() > 0.0);
    assert!(entries.iter().any(|entry| entry["request_id"] == generated.as_str()));
    let refused = entries
        .iter()
        .find(|entry| entry["status"] == 400)
        .expect("refused request logged");
    assert_eq!(refused["error"], "bad_request");

    // logrotate: move the file away, SIGUSR1, and the next lines go to a fresh file.
    let rotated = dir.0.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    corelb.process.signal(libc::SIGUSR1);
    corelb.process.clone_output_wait("reopening the access log");
    corelb.get("/after-rotation");
    let fresh = wait_for_lines(&log, 1);
    assert!(fresh.iter().any(|line| line.contains("/after-rotation")), "{fresh:?}");
}

fn wait_for_lines(path: &std::path::Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "only {} access log lines in {}",
            lines.len(),
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn log_level_changes_at_runtime() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", "[logging]\nlevel = \"info\"\n"));
    let refuse = || {
        let mut client = corelb.client();
        client.send(b"GET / HTTP/1.1\r\n\r\n");
        client.read_response();
    };
    refuse();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !corelb
            .process
            .output()
            .iter()
            .any(|line| line.contains("refused request")),
        "debug is off at info"
    );
    let (code, out, _) = corelb.ctl(&["log-level", "debug"]);
    assert_eq!((code, out.trim()), (0, "log level: debug"));
    refuse();
    corelb.process.clone_output_wait("refused request");
}

#[test]
fn health_answers_on_frontends_and_the_metrics_port() {
    let live = Backend::start("live");
    let dead = DeadBackend::new();
    let corelb = Corelb::start(&config_from_urls(&[(live.url(), 1), (dead.url(), 1)], 1, "", ""));
    let response = corelb.get("/health");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("X-Backend-Id"),
        None,
        "answered by corelb, not a backend"
    );
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(
        (body["healthy_backends"].as_u64(), body["backends"].as_u64()),
        (Some(2), Some(2))
    );
    corelb.get("/");
    corelb.get("/");
    let body: serde_json::Value = serde_json::from_slice(&corelb.get("/health").body).unwrap();
    assert_eq!(
        body["healthy_backends"], 1,
        "the dead backend is marked down after a failed connect"
    );
    let from_metrics_port = Client::connect(corelb.metrics_addr()).get("/health");
    assert_eq!(from_metrics_port.status, 200);

    let gone = DeadBackend::new();
    let only_dead = Corelb::start(&config_from_urls(&[(gone.url(), 1)], 1, "", ""));
    assert_eq!(only_dead.get("/").status, 502);
    assert_eq!(only_dead.get("/health").status, 503);
    assert_eq!(Client::connect(only_dead.metrics_addr()).get("/health").status, 503);

    let passthrough = Corelb::start(&config_for(
        &[(&live, 1)],
        1,
        "",
        "[health_endpoint]\nenabled = false\n",
    ));
    assert_eq!(
        passthrough.get("/health").backend_id(),
        "live",
        "turned off: the path goes to a backend"
    );
}

#[test]
fn ctl_metrics_summarises_the_merged_figures() {
    let backends = [Backend::start("a"), Backend::start("b")];
    let corelb = Corelb::start(&config_for(&[(&backends[0], 1), (&backends[1], 1)], 2, "", ""));
    let mut client = corelb.client();
    for _ in 0..40 {
        client.get("/");
    }
    let (code, out, err) = corelb.ctl(&["metrics", "--interval", "100ms"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("requests: 40 total"), "{out}");
    let rows: HashMap<String, String> = out
        .lines()
        .filter_map(|line| {
            line.split_once(' ')
                .map(|(id, rest)| (id.to_string(), rest.trim().to_string()))
        })
        .collect();
    assert!(
        rows.get(&backends[0].addr.to_string())
            .is_some_and(|row| row.starts_with("20")),
        "{out}"
    );
    let (_, json_out, _) = corelb.ctl(&["--json", "metrics", "--interval", "100ms"]);
    let reply: serde_json::Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(reply["result"]["requests"], 40);
    assert!(reply["result"]["p99_seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn health_reports_tell_the_truth_after_the_skip_window_and_removed_backends_leave_no_gauges() {
    let live = Backend::start("live");
    let dead = DeadBackend::new();
    let corelb = Corelb::start(&config_from_urls(
        &[(live.url(), 1), (dead.url(), 1)],
        1,
        "",
        "[upstream]\nfail_timeout = \"100ms\"\n",
    ));
    for _ in 0..4 {
        assert_eq!(corelb.get("/").status, 200);
    }
    // Past the skip window the worker would try the dead backend again, but it has not answered since: down.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let dead_id = dead.addr.to_string();
    let (_, backends, _) = corelb.ctl(&["backends"]);
    let row = backends
        .lines()
        .find(|line| line.contains(&dead_id))
        .expect("dead backend row");
    assert!(row.contains("down"), "{backends}");
    let health = common::Client::connect(corelb.metrics_addr()).get("/health");
    assert!(health.text().contains("\"healthy_backends\":1"), "{}", health.text());
    let text = corelb.scrape();
    assert_eq!(sum(&text, "corelb_backend_up", &dead_id), 0.0, "{text}");
    assert_eq!(sum(&text, "corelb_backend_up", &live.addr.to_string()), 1.0, "{text}");

    let (code, _, err) = corelb.ctl(&["backend", "remove", &dead_id]);
    assert_eq!(code, 0, "{err}");
    let text = corelb.scrape();
    for gauge in [
        "corelb_backend_up{",
        "corelb_upstream_connections_open{",
        "corelb_backend_weight{",
        "corelb_backend_effective_weight{",
    ] {
        assert!(
            !text
                .lines()
                .any(|line| line.starts_with(gauge) && line.contains(&dead_id)),
            "{gauge} of a removed backend: {text}"
        );
    }
}

/// A corelb whose stderr is a one-page pipe that nobody reads: once it is full, any thread that writes stderr
/// itself blocks.
struct UnreadStderr {
    child: std::process::Child,
    _read_end: std::os::fd::OwnedFd,
    dir: common::TempDir,
}

impl Drop for UnreadStderr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_with_unread_stderr(config: &str) -> UnreadStderr {
    use std::os::fd::FromRawFd;
    let dir = common::TempDir::new();
    let path = dir.write("corelb.toml", config);
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new descriptors into `fds`, which the OwnedFds below then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created by pipe and nothing else owns them.
    let (read_end, write_end) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 4096) };
    let child = std::process::Command::new(common::CORELB)
        .args(["run", "-c"])
        .arg(&path)
        .args(["--io-driver", &common::io_driver()])
        .env("CORELB_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(write_end))
        .spawn()
        .expect("start corelb");
    UnreadStderr {
        child,
        _read_end: read_end,
        dir,
    }
}

#[test]
fn a_stderr_nobody_reads_never_stalls_a_worker() {
    use std::io::{BufRead, BufReader, Read, Write};
    let backend = Backend::start("a");
    let corelb = start_with_unread_stderr(&common::config_for(&[(&backend, 1)], 1, "", ""));
    // The frontend's address, from the control socket (stderr cannot be read).
    let socket = corelb.dir.0.join("corelb.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status: serde_json::Value = loop {
        let reply = std::os::unix::net::UnixStream::connect(&socket).and_then(|mut stream| {
            stream.write_all(b"{\"cmd\":\"status\"}\n")?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line)?;
            Ok(line)
        });
        if let Ok(line) = reply {
            break serde_json::from_str(&line).expect("status reply");
        }
        assert!(Instant::now() < deadline, "corelb did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let address: std::net::SocketAddr = status["result"]["frontends"][0]["address"]
        .as_str()
        .expect("frontend address")
        .parse()
        .unwrap();
    // Each malformed request logs a debug line of about 150 bytes: 2,000 of them are far more than the pipe holds.
    for attempt in 0..2_000 {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(b"NOT A REQUEST\r\n\r\n").unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        assert!(
            response.starts_with(b"HTTP/1.1 400"),
            "request {attempt} got {:?} (a worker blocked on stderr?)",
            String::from_utf8_lossy(&response)
        );
    }
    let mut client = common::Client::connect(address);
    assert_eq!(client.get("/hello").status, 200);
}
