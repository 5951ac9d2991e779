//! Balancing through the real binary: exact round-robin, exact smooth weighted round-robin per worker, and every
//! worker serving when there are several.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::collections::HashMap;

use common::{config_for, Backend, Client, Corelb};

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
