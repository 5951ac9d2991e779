//! Balancing through the real binary: exact round-robin, exact smooth weighted round-robin per worker, the
//! load-based and random algorithms (by weight when idle, away from a loaded backend, away from a slow one), and
//! every worker serving when there are several. The random draws are seeded differently on every start, so
//! statistical checks allow six standard deviations: a false failure is a one-in-a-hundred-million event.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::collections::HashMap;

use common::{config_for, Backend, Client, Corelb};
use serde_json::json;

#[test]
fn round_robin_over_three_backends_is_exact() {
    let backends = [Backend::start("a"), Backend::start("b"), Backend::start("c")];
    let refs: Vec<(&Backend, u32)> = backends.iter().map(|backend| (backend, 1)).collect();
    let corelb = Corelb::start(&config_for(&refs, 1, "", ""));
    let mut client = corelb.client();
    let order: Vec<String> = (0..30).map(|_| client.get("/").backend_id()).collect();
    for window in order.chunks(3) {
        let mut sorted = window.to_vec();
        sorted.sort();
        assert_eq!(
            sorted,
            ["a", "b", "c"],
            "every window of 3 hits each backend once: {order:?}"
        );
    }
    assert_eq!(&order[..3], ["a", "b", "c"], "in configured order");
}

#[test]
fn smooth_weighted_round_robin_is_exact_per_window() {
    let backends = [Backend::start("a"), Backend::start("b"), Backend::start("c")];
    let config = config_for(
        &[(&backends[0], 5), (&backends[1], 3), (&backends[2], 1)],
        1,
        "",
        "[balancer]\nalgorithm = \"weighted_round_robin\"\n",
    );
    let corelb = Corelb::start(&config);
    // A new connection per request: the pick must not depend on the client connection.
    let order: Vec<String> = (0..45).map(|_| corelb.get("/").backend_id()).collect();
    for window in order.chunks(9) {
        let count = |id: &str| window.iter().filter(|seen| *seen == id).count();
        assert_eq!((count("a"), count("b"), count("c")), (5, 3, 1), "window {window:?}");
    }
    assert_eq!(order[..9].join(""), "abacababa", "interleaved, not in bursts");
}

#[test]
fn weighted_round_robin_is_exact_on_each_of_two_workers() {
    let backends = [Backend::start("a"), Backend::start("b"), Backend::start("c")];
    let config = config_for(
        &[(&backends[0], 5), (&backends[1], 3), (&backends[2], 1)],
        2,
        "",
        "[balancer]\nalgorithm = \"weighted_round_robin\"\n",
    );
    let corelb = Corelb::start(&config);
    let mut per_worker: HashMap<String, Vec<String>> = HashMap::new();
    // Many fresh connections so SO_REUSEPORT spreads them over both workers.
    for _ in 0..200 {
        let response = corelb.get("/");
        let worker = response.header("X-Corelb-Worker").expect("worker header").to_string();
        per_worker.entry(worker).or_default().push(response.backend_id());
    }
    assert_eq!(per_worker.len(), 2, "both workers served: {:?}", per_worker.keys());
    for (worker, order) in &per_worker {
        // Each worker starts at its own offset; smooth WRR is periodic, so every window of 9 is exact.
        for window in order.windows(9) {
            let count = |id: &str| window.iter().filter(|seen| *seen == id).count();
            assert_eq!(
                (count("a"), count("b"), count("c")),
                (5, 3, 1),
                "worker {worker} window {window:?}"
            );
        }
    }
}

#[test]
fn both_workers_accept_connections() {
    let backend = Backend::start("a");
    let corelb = Corelb::start(&config_for(&[(&backend, 1)], 2, "", ""));
    let workers: std::collections::HashSet<String> = (0..50)
        .map(|_| {
            let mut client = Client::connect(corelb.addr);
            client
                .get("/")
                .header("X-Corelb-Worker")
                .expect("worker header")
                .to_string()
        })
        .collect();
    assert_eq!(workers.len(), 2, "connections landed on workers {workers:?}");
}

/// `[balancer] algorithm = "…"`.
fn algorithm(name: &str) -> String {
    format!("[balancer]\nalgorithm = \"{name}\"\n")
}

/// Who answered `count` GETs, each on a fresh connection (so that both workers take some).
fn split_of(corelb: &Corelb, count: usize) -> HashMap<String, usize> {
    let mut split = HashMap::new();
    for _ in 0..count {
        let response = corelb.get("/");
        assert_eq!(response.status, 200);
        *split.entry(response.backend_id()).or_insert(0) += 1;
    }
    split
}

/// Asserts `split` follows `weights` within six standard deviations of a binomial count.
fn assert_by_weight(split: &HashMap<String, usize>, weights: &[(&str, u32)], what: &str) {
    let total: usize = split.values().sum();
    let weight_sum: u32 = weights.iter().map(|(_, weight)| weight).sum();
    for (id, weight) in weights {
        let p = f64::from(*weight) / f64::from(weight_sum);
        let expected = total as f64 * p;
        let allowed = 6.0 * (total as f64 * p * (1.0 - p)).sqrt();
        let seen = split.get(*id).copied().unwrap_or(0) as f64;
        assert!(
            (seen - expected).abs() <= allowed,
            "{what}: {id} took {seen} of {total}, expected {expected:.0} ± {allowed:.0}: {split:?}"
        );
    }
}

#[test]
fn idle_backends_take_requests_by_weight_under_every_drawing_algorithm_on_one_and_two_workers() {
    let backends = [Backend::start("a"), Backend::start("b"), Backend::start("c")];
    let weights = [("a", 5), ("b", 3), ("c", 1)];
    for name in ["random", "least_connections", "power_of_two"] {
        for workers in [1, 2] {
            let config = config_for(
                &[(&backends[0], 5), (&backends[1], 3), (&backends[2], 1)],
                workers,
                "",
                &algorithm(name),
            );
            let corelb = Corelb::start(&config);
            let split = split_of(&corelb, 900);
            println!("{name} on {workers} worker(s), idle, weights 5:3:1: {split:?}");
            assert_by_weight(&split, &weights, &format!("{name} on {workers} workers"));
        }
    }
}

#[test]
fn the_load_based_algorithms_send_nothing_to_a_backend_holding_requests_while_others_are_idle() {
    for name in ["least_connections", "power_of_two", "least_response_time"] {
        let busy = Backend::start("busy");
        let others = [Backend::start("b"), Backend::start("c")];
        let corelb = Corelb::start(&config_for(&[(&busy, 1)], 1, "", &algorithm(name)));
        // Three requests held in flight on the only backend, then two idle backends join.
        let mut held: Vec<Client> = (0..3).map(|_| corelb.client()).collect();
        for client in &mut held {
            client.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while busy.held() < 3 {
            assert!(std::time::Instant::now() < deadline, "the requests were never held");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for other in &others {
            let added = corelb.control(json!({"cmd": "backend_add", "url": other.url()}));
            assert_eq!(added["ok"], true, "{added}");
        }
        let split = split_of(&corelb, 60);
        println!("{name}, one backend with 3 requests in flight: {split:?}");
        assert_eq!(
            split.get("busy"),
            None,
            "{name} sent new requests to the busy backend: {split:?}"
        );
        assert_eq!(split.values().sum::<usize>(), 60);
        busy.release();
        for client in &mut held {
            assert_eq!(client.read_response().status, 200);
        }
    }
}

#[test]
fn a_slow_backend_gets_a_small_share_under_the_load_based_algorithms() {
    for name in ["least_connections", "power_of_two", "least_response_time"] {
        let backends = [
            Backend::start("a"),
            Backend::start("b"),
            Backend::start_with("slow", &["--latency", "50ms"]),
        ];
        let refs: Vec<(&Backend, u32)> = backends.iter().map(|backend| (backend, 1)).collect();
        let corelb = Corelb::start(&config_for(&refs, 2, "", &algorithm(name)));
        // Six keep-alive clients at once: the slow backend keeps requests in flight, the fast ones hardly any.
        let answers: Vec<String> = std::thread::scope(|scope| {
            let clients: Vec<_> = (0..6)
                .map(|_| {
                    scope.spawn(|| {
                        let mut client = corelb.client();
                        (0..100).map(|_| client.get("/").backend_id()).collect::<Vec<_>>()
                    })
                })
                .collect();
            clients.into_iter().flat_map(|client| client.join().unwrap()).collect()
        });
        let slow = answers.iter().filter(|id| *id == "slow").count();
        println!(
            "{name}: the slow backend (50 ms) took {slow} of {} (round-robin: a third)",
            answers.len()
        );
        assert!(slow < answers.len() / 4, "{name}: {slow} of {}", answers.len());
    }
}

/// Which backend answered a GET carrying `X-User: user`, on a fresh connection.
fn backend_for_user(corelb: &Corelb, user: usize) -> String {
    let mut client = Client::connect(corelb.addr);
    client.send(format!("GET / HTTP/1.1\r\nHost: t\r\nX-User: u{user}\r\n\r\n").as_bytes());
    let response = client.read_response();
    assert_eq!(response.status, 200);
    response.backend_id()
}

#[test]
fn consistent_hashing_keeps_a_key_on_its_backend_on_every_worker_across_reloads_and_falls_back_in_a_fixed_order() {
    for method in ["maglev", "rendezvous"] {
        let backends = [Backend::start("a"), Backend::start("b"), Backend::start("c")];
        let refs: Vec<(&Backend, u32)> = backends.iter().map(|backend| (backend, 1)).collect();
        let balancer = format!(
            "[balancer]\nalgorithm = \"consistent_hash\"\nhash_key = \"header:x-user\"\nhash_method = \"{method}\"\n"
        );
        // Each backend's id is its label, not its address: the hash of a key depends on the ids, and with ports
        // in them the mapping (and whether Maglev, which keeps most but not all keys in place, moves one between
        // old backends when one is added) would change from run to run.
        let mut config = config_for(&refs, 2, "", &balancer);
        for backend in &backends {
            let url = format!("url = \"{}\"", backend.url());
            config = config.replace(&url, &format!("{url}\nid = \"{}\"", backend.id));
        }
        let corelb = Corelb::start(&config);
        let mapping: Vec<String> = (0..30).map(|user| backend_for_user(&corelb, user)).collect();
        let mut workers = std::collections::HashSet::new();
        for round in 0..5 {
            for (user, expected) in mapping.iter().enumerate() {
                let mut client = Client::connect(corelb.addr);
                client.send(format!("GET / HTTP/1.1\r\nHost: t\r\nX-User: u{user}\r\n\r\n").as_bytes());
                let response = client.read_response();
                workers.insert(response.header("X-Corelb-Worker").unwrap().to_string());
                assert_eq!(
                    &response.backend_id(),
                    expected,
                    "{method}: user {user} moved in round {round}"
                );
            }
        }
        assert_eq!(workers.len(), 2, "both workers served, and agreed");
        let used: std::collections::HashSet<&String> = mapping.iter().collect();
        assert!(used.len() > 1, "{method}: 30 keys all on one backend: {mapping:?}");

        // A backend added and removed again: two reloads, and every key is back where it was.
        let extra = Backend::start("d");
        let added = corelb.control(json!({"cmd": "backend_add", "url": extra.url(), "id": "d"}));
        assert_eq!(added["ok"], true, "{added}");
        let during: Vec<String> = (0..30).map(|user| backend_for_user(&corelb, user)).collect();
        let moved = during
            .iter()
            .zip(&mapping)
            .filter(|(now, before)| now != before)
            .count();
        assert!(
            during
                .iter()
                .zip(&mapping)
                .all(|(now, before)| now == before || now == "d"),
            "{method}: keys moved only to the new backend"
        );
        println!("{method}: adding a fourth backend moved {moved} of 30 keys");
        let removed = corelb.control(json!({"cmd": "backend_remove", "backend": "d"}));
        assert_eq!(removed["ok"], true, "{removed}");
        let after: Vec<String> = (0..30).map(|user| backend_for_user(&corelb, user)).collect();
        assert_eq!(after, mapping, "{method}: the same mapping after the reloads");

        // The backend of user 0 drained: its users move, each to one fixed backend; nobody else moves.
        let reply = corelb.control(json!({"cmd": "backend_drain", "backend": mapping[0]}));
        assert_eq!(reply["ok"], true, "{reply}");
        let fallback: Vec<String> = (0..30).map(|user| backend_for_user(&corelb, user)).collect();
        for (user, (now, before)) in fallback.iter().zip(&mapping).enumerate() {
            if before == &mapping[0] {
                assert_ne!(now, before, "{method}: user {user} still on the drained backend");
                assert_eq!(
                    &backend_for_user(&corelb, user),
                    now,
                    "{method}: user {user}'s fallback is fixed"
                );
            } else {
                assert_eq!(now, before, "{method}: user {user} moved though its backend serves");
            }
        }
    }
}

#[test]
fn ip_hash_keeps_each_client_address_on_one_backend() {
    let backends = [Backend::start("a"), Backend::start("b"), Backend::start("c")];
    let refs: Vec<(&Backend, u32)> = backends.iter().map(|backend| (backend, 1)).collect();
    let corelb = Corelb::start(&config_for(&refs, 2, "", &algorithm("ip_hash")));
    let mut seen = std::collections::HashSet::new();
    for host in 1..=20u8 {
        let source = std::net::IpAddr::from([127, 0, 0, host]);
        let answers: std::collections::HashSet<String> = (0..5)
            .map(|_| Client::connect_from(corelb.addr, source).get("/").backend_id())
            .collect();
        assert_eq!(answers.len(), 1, "{source} was sent to {answers:?}");
        seen.extend(answers);
    }
    assert!(seen.len() > 1, "twenty addresses all on one backend");
}
