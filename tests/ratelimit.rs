//! Rate limiting through the real binary with two workers: the process-wide admitted rate under 3x load, spread
//! over cores or all on one; per-client scope; the allow-list; 429 responses; live changes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{config_for, Backend, Client, Corelb, TempDir};

const RATE: u64 = 100;

/// The rate measurements run one at a time: three paced loads at once on a 2-core machine would measure the machine.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn measuring() -> std::sync::MutexGuard<'static, ()> {
    MEASURING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn limited_config(backend: &Backend, extra: &str) -> String {
    config_for(
        &[(backend, 1)],
        2,
        "",
        &format!("[ratelimit]\nenabled = true\nrate = {RATE}.0\nburst = 10\n{extra}"),
    )
}

/// Sends `per_connection_rate` requests per second on each of `connections` keep-alive connections for
/// `duration`, paced; returns (seconds since start at send, status) for every request.
fn paced_load(corelb: &Corelb, connections: usize, per_connection_rate: u64, duration: Duration) -> Vec<(u64, u16)> {
    let start = Instant::now() + Duration::from_millis(50);
    let threads: Vec<_> = (0..connections)
        .map(|index| {
            let addr = corelb.addr;
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let interval = Duration::from_secs_f64(1.0 / per_connection_rate as f64);
                // Stagger the connections so requests arrive evenly.
                let mut next = start + interval.mul_f64(index as f64 / connections as f64);
                let mut seen = Vec::new();
                // A little past the duration, so the last whole second is complete.
                while next < start + duration + Duration::from_millis(200) {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    let sent = Instant::now();
                    let status = client.get("/").status;
                    seen.push((sent.saturating_duration_since(start).as_secs(), status));
                    next += interval;
                }
                seen
            })
        })
        .collect();
    threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect()
}

fn admitted_per_second(log: &[(u64, u16)]) -> BTreeMap<u64, (u64, u64)> {
    let mut seconds = BTreeMap::new();
    for &(second, status) in log {
        let entry = seconds.entry(second).or_insert((0, 0));
        match status {
            200 => entry.0 += 1,
            429 => entry.1 += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    seconds
}

fn assert_rate_held(log: &[(u64, u16)], what: &str) {
    let seconds = admitted_per_second(log);
    // Second 0 is warm-up (the initial burst and the first rebalances); the last is cut short by the run's end.
    let last = seconds.keys().copied().max().unwrap_or(0);
    eprintln!("{what}: (admitted, limited) per second: {seconds:?}");
    for (second, (admitted, limited)) in seconds.iter().filter(|(second, _)| **second >= 1 && **second < last) {
        let low = RATE * 9 / 10;
        let high = RATE * 11 / 10;
        assert!(
            (low..=high).contains(admitted),
            "{what}: second {second} admitted {admitted} (limited {limited}), expected {RATE} ± 10%: {seconds:?}"
        );
        assert!(
            *limited > 0,
            "{what}: the load was really above the limit in second {second}"
        );
    }
}

#[test]
fn three_times_the_rate_spread_over_connections_admits_the_rate() {
    let _one_at_a_time = measuring();
    let backend = Backend::start("a");
    let corelb = Corelb::start(&limited_config(&backend, ""));
    let log = paced_load(&corelb, 6, RATE / 2, Duration::from_secs(4));
    assert_rate_held(&log, "spread");
    let admitted = log.iter().filter(|(_, status)| *status == 200).count() as u64;
    assert_eq!(
        backend.stats().1,
        admitted,
        "limited requests never reached the backend"
    );
}

#[test]
fn three_times_the_rate_on_one_connection_admits_the_rate() {
    let _one_at_a_time = measuring();
    let backend = Backend::start("a");
    let corelb = Corelb::start(&limited_config(&backend, ""));
    // One connection lands on one worker: the other worker's share must flow to it.
    let log = paced_load(&corelb, 1, RATE * 3, Duration::from_secs(4));
    assert_rate_held(&log, "one core");
}

#[test]
fn sliding_window_holds_the_rate_too() {
    let _one_at_a_time = measuring();
    let backend = Backend::start("a");
    let corelb = Corelb::start(&limited_config(&backend, "algorithm = \"sliding_window\"\n"));
    let log = paced_load(&corelb, 3, RATE, Duration::from_secs(4));
    assert_rate_held(&log, "sliding window");
}

#[test]
fn limited_requests_get_429_with_rate_limit_headers() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&limited_config(&backend, ""));
    let mut client = corelb.client();
    let responses: Vec<_> = (0..40).map(|_| client.get("/")).collect();
    let limited = responses
        .iter()
        .find(|response| response.status == 429)
        .expect("a burst of 40 is limited");
    assert_eq!(limited.header("RateLimit-Limit"), Some("100"));
    assert_eq!(limited.header("RateLimit-Remaining"), Some("0"));
    let retry: u64 = limited.header("Retry-After").unwrap().parse().unwrap();
    let reset: u64 = limited.header("RateLimit-Reset").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry) && (1..=60).contains(&reset));
    assert!(limited.header("X-Request-Id").is_some());
    assert!(limited.text().contains("rate_limited"));
    assert_eq!(
        client.get("/health").status,
        200,
        "the connection stays usable and /health is never limited"
    );
    let allowed = responses.iter().filter(|response| response.status == 200).count() as u64;
    assert_eq!(backend.stats().1, allowed, "a limited request never reaches a backend");
}

#[test]
fn client_scope_limits_one_client_without_touching_another() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&limited_config(
        &backend,
        "scope = \"client_ip\"\nallow = [\"127.0.0.3/32\"]\n",
    ));
    let ip = |text: &str| text.parse::<std::net::IpAddr>().unwrap();
    let mut greedy = Client::connect_from(corelb.addr, ip("127.0.0.1"));
    let greedy_limited = (0..60).filter(|_| greedy.get("/").status == 429).count();
    assert!(
        greedy_limited >= 30,
        "the greedy client was limited ({greedy_limited} of 60)"
    );
    let mut polite = Client::connect_from(corelb.addr, ip("127.0.0.2"));
    for _ in 0..8 {
        assert_eq!(polite.get("/").status, 200, "another client keeps its own limit");
    }
    let mut trusted = Client::connect_from(corelb.addr, ip("127.0.0.3"));
    for _ in 0..60 {
        assert_eq!(trusted.get("/").status, 200, "an allow-listed network is never limited");
    }
}

#[test]
fn limits_change_live() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&limited_config(&backend, ""));
    let mut client = corelb.client();
    assert!((0..40).any(|_| client.get("/").status == 429));
    let dir = TempDir::new();
    let file = dir.write(
        "off.toml",
        &config_for(&[(&backend, 1)], 2, "", "[ratelimit]\nenabled = false\n"),
    );
    let (code, out, err) = corelb.ctl(&["config", "apply", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        (0..100).all(|_| client.get("/").status == 200),
        "no limit once disabled"
    );
    let metrics = {
        let (_, out, _) = corelb.ctl(&["--json", "metrics", "--interval", "10ms"]);
        out
    };
    assert!(
        metrics.contains("rate_limited"),
        "limited requests are counted: {metrics}"
    );
}
