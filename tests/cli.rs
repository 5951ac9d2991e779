//! The command line: `corelb check` on good and bad files, `corelb run` refusing a bad file, `--help` everywhere,
//! SIGHUP reloads, and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::process::Command;
use std::time::Duration;

use common::{config_for, Backend, Corelb, Process, TempDir, CORELB};

fn check(contents: &str) -> (i32, String, String) {
    let dir = TempDir::new();
    let path = dir.write("check.toml", contents);
    let output = Command::new(CORELB).arg("check").arg("-c").arg(&path).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const GOOD: &str = "[[frontends]]\nport = 8080\n[[backends]]\nurl = \"http://127.0.0.1:9001\"\n";

#[test]
fn check_accepts_a_good_file_and_the_repository_config() {
    let (code, stdout, stderr) = check(GOOD);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok (1 frontend(s), 1 backend(s)"), "{stdout}");
    let repository_config = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    // Its HTTPS frontend names the development certificate, which the project's script makes when missing.
    let made = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev-certs.sh"))
        .status()
        .unwrap();
    assert!(made.success());
    let output = Command::new(CORELB)
        .args(["check", "-c", repository_config])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn check_reports_every_error_kind_at_once_with_exit_2() {
    let bad = "[server]\nworkers = \"many\"\n\
        [[frontends]]\nport = 8080\n[[frontends]]\nname = \"frontend0\"\nport = 8080\n\
        [[backends]]\nurl = \"http://127.0.0.1:9001\"\nweight = 0\n\
        [[backends]]\nurl = 7\n\
        [[backends]]\nurl = \"http://127.0.0.1:9003\"\ncolour = \"red\"\n\
        [timeouts]\nconnect = \"soon\"\n\
        [balancer]\nalgorithm = \"fastest\"\n\
        [ratelimit]\nallow = [\"10.0.0.0/8\", \"nonsense\", \"10.0.0.0/99\"]\n";
    let (code, _, stderr) = check(bad);
    assert_eq!(code, 2);
    for expected in [
        "server.workers: must be \"auto\" or a number between 1 and 1024, got \"many\"",
        "frontends[1].name: duplicate frontend name \"frontend0\"",
        "frontends[1].port: port 8080 is already used by frontends[0].port",
        "backends[0].weight: must be between 1 and 1000, got 0",
        "backends[1].url: expected a string, got integer 7",
        "backends[2].colour: unknown key",
        "timeouts.connect: expected a number before the unit in \"soon\"",
        "balancer.algorithm: must be one of",
        // Every bad entry of a list, not only the first.
        "ratelimit.allow[1]: \"nonsense\" is not an IP network",
        "ratelimit.allow[2]: \"10.0.0.0/99\": prefix length must be 0..=32",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

#[test]
fn check_refuses_syntax_errors_missing_files_and_empty_configs() {
    let (code, _, stderr) = check("[[frontends]\nport = 1\n");
    assert_eq!(code, 2);
    assert!(stderr.contains("TOML syntax error"), "{stderr}");
    let (code, _, stderr) = check("");
    assert_eq!(code, 2);
    assert!(stderr.contains("frontends: at least one"), "{stderr}");
    let output = Command::new(CORELB)
        .args(["check", "-c", "/nonexistent/corelb.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read /nonexistent/corelb.toml"));
}

#[test]
fn run_with_a_bad_file_exits_2_with_the_message() {
    let dir = TempDir::new();
    let path = dir.write(
        "bad.toml",
        "[[frontends]]\nport = 0\n[[backends]]\nurl = \"http://127.0.0.1:1\"\nweight = 5000\n",
    );
    let output = Command::new(CORELB).arg("run").arg("-c").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("backends[0].weight: must be between 1 and 1000, got 5000"),
        "{stderr}"
    );
    // No subcommand means run.
    let output = Command::new(CORELB).arg("-c").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn help_is_available_on_every_subcommand() {
    for args in [&["--help"][..], &["run", "--help"], &["check", "--help"]] {
        let output = Command::new(CORELB).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("Usage"), "{args:?}");
    }
    let output = Command::new(CORELB).arg("frobnicate").output().unwrap();
    assert_eq!(output.status.code(), Some(2), "unknown subcommand is a usage error");
}

#[test]
fn run_refuses_a_port_already_taken() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = TempDir::new();
    let path = dir.write(
        "taken.toml",
        &format!("[server]\nworkers = 1\n[metrics]\nport = 0\n[[frontends]]\naddress = \"127.0.0.1\"\nport = {port}\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n"),
    );
    let output = Command::new(CORELB).arg("run").arg("-c").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot listen on"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn sighup_reloads_the_file_and_a_broken_file_keeps_the_running_config() {
    let first = Backend::start("first");
    let second = Backend::start("second");
    let mut corelb = Corelb::start(&config_for(&[(&first, 1)], 2, "", ""));
    assert_eq!(corelb.get("/").backend_id(), "first");

    let path = corelb.dir.0.join("corelb.toml");
    std::fs::write(&path, config_for(&[(&second, 1)], 2, "", "")).unwrap();
    corelb.process.signal(libc::SIGHUP);
    corelb
        .process
        .wait_for_line("config applied on every worker", Duration::from_secs(10));
    for _ in 0..10 {
        assert_eq!(
            corelb.get("/").backend_id(),
            "second",
            "every worker uses the new backend set"
        );
    }

    std::fs::write(&path, "[[frontends]]\nport = \"x\"\n").unwrap();
    corelb.process.signal(libc::SIGHUP);
    let refusal = corelb.process.wait_for_line("reload refused", Duration::from_secs(10));
    assert!(refusal.contains("frontends[0].port"), "{refusal}");
    assert_eq!(corelb.get("/").backend_id(), "second", "old config keeps serving");
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let backend = Backend::start("slow");
    let mut corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    let addr = corelb.addr;
    let in_flight = std::thread::spawn(move || {
        let mut client = common::Client::connect(addr);
        client.get("/?delay=700ms")
    });
    wait_until_upstream_connection_open(&corelb);
    corelb.process.signal(libc::SIGTERM);
    let response = in_flight.join().unwrap();
    assert_eq!(response.status, 200, "the in-flight request completed");
    assert_eq!(
        response.header("Connection"),
        Some("close"),
        "and was told the connection closes"
    );
    let status = corelb.process.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(std::net::TcpStream::connect(addr).is_err(), "no longer listening");
}

#[test]
fn epoll_can_be_forced() {
    let backend = Backend::start("a");
    let dir = TempDir::new();
    let path = dir.write(
        "epoll.toml",
        &config_for(&[(&backend, 1)], 1, "io_driver = \"epoll\"", ""),
    );
    let mut command = Command::new(CORELB);
    command.arg("run").arg("-c").arg(&path);
    let mut process = Process::spawn("corelb-epoll", &mut command);
    let ready = process.wait_for_line("corelb ready", Duration::from_secs(10));
    assert!(ready.contains("driver=\"epoll\""), "{ready}");
}

#[test]
fn run_refuses_a_control_socket_path_that_names_another_file_and_leaves_it_alone() {
    let dir = TempDir::new();
    let path = dir.write(
        "self.toml",
        "[server]\nworkers = 1\n[metrics]\nport = 0\n[control]\nsocket = \"self.toml\"\n\
         [[frontends]]\naddress = \"127.0.0.1\"\nport = 0\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n",
    );
    let before = std::fs::read(&path).unwrap();
    let output = Command::new(CORELB).arg("run").arg("-c").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file named by control.socket is untouched"
    );
}

#[test]
fn ctl_into_a_closed_pipe_exits_quietly() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    // `ctl status | head -0`: the reader is gone before ctl prints.
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' ctl --socket '{}' status | head -c 0; exit 0",
            CORELB,
            corelb.socket().display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
}

#[test]
fn sigterm_closes_the_listeners_at_once_while_in_flight_requests_finish() {
    let backend = Backend::start("slow");
    let mut corelb = Corelb::start(&config_for(&[(&backend, 1)], 2, "", ""));
    let addr = corelb.addr;
    let in_flight = std::thread::spawn(move || common::Client::connect(addr).get("/?delay=3s"));
    wait_until_upstream_connection_open(&corelb);
    corelb.process.signal(libc::SIGTERM);
    // New connections are refused while the slow request is still being served, not queued until exit.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match std::net::TcpStream::connect(addr) {
            Err(error) => {
                assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused, "{error}");
                break;
            }
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "still accepting connections 2 s after SIGTERM"
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !in_flight.is_finished(),
        "refused while the in-flight request was still running"
    );
    assert_eq!(in_flight.join().unwrap().status, 200, "the in-flight request completed");
    assert_eq!(corelb.process.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// Waits until a request is in flight: its upstream connection is open (a condition, not a pause).
fn wait_until_upstream_connection_open(corelb: &Corelb) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while common::metric_sum(&corelb.scrape(), "corelb_upstream_connections_open", "") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request never went upstream"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ctl_reload_of_a_broken_file_reports_its_errors_and_exit_1() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 1, "", ""));
    let path = corelb.dir.0.join("corelb.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    // Broken elsewhere; the socket is still found from the same file (`-c`, no `--socket`).
    std::fs::write(&path, good.replace("weight = 1", "weight = 0")).unwrap();
    let output = Command::new(CORELB)
        .args(["ctl", "-c"])
        .arg(&path)
        .arg("reload")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("weight"), "the config error is reported: {stderr}");
    assert!(!stderr.contains("cannot reach"), "{stderr}");
    assert_eq!(corelb.get("/").status, 200, "the running config stays");
}
