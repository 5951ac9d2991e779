//! Dynamic weights on real backends over real sockets: a backend made slow with the example backend's latency
//! switch loses most of its share and regains it once fast again; a backend failing half its requests gets less.
//! Every wait is for a condition (a share reached in a round of requests), bounded in rounds; the split in each
//! round is printed (`--nocapture`) and never a duration asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{backend_when, config_for, metric_sum, Backend, Client, Corelb};
use serde_json::{json, Value};

/// `[balancer.dynamic_weights]` with a short decay, so a test sees it move within a few seconds.
const DYNAMIC: &str = "[balancer.dynamic_weights]\nenabled = true\ndecay = \"500ms\"\nlatency_slack = \"5ms\"\n\
                       min_share = 0.05\n";

/// `clients` clients at once, `each` GETs apiece, each on a new connection so that both workers see every
/// backend; with `all_ok` every answer must be a 200. Returns who answered.
fn round(corelb: &Corelb, clients: usize, each: usize, all_ok: bool) -> BTreeMap<String, usize> {
    let answers: Vec<Vec<String>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    (0..each)
                        .map(|_| {
                            let response = Client::connect(corelb.addr).get("/");
                            assert!(!all_ok || response.status == 200, "{}", response.text());
                            response.backend_id()
                        })
                        .collect()
                })
            })
            .collect();
        threads.into_iter().map(|thread| thread.join().unwrap()).collect()
    });
    let mut split = BTreeMap::new();
    for id in answers.into_iter().flatten() {
        *split.entry(id).or_insert(0) += 1;
    }
    split
}

fn share_of(split: &BTreeMap<String, usize>, id: &str) -> f64 {
    let total: usize = split.values().sum();
    split.get(id).copied().unwrap_or(0) as f64 / total as f64
}

fn set_latency(backend: &Backend, delay: &str) {
    let path = format!("/control/latency?delay={delay}");
    assert_eq!(Client::connect(backend.addr).get(&path).status, 200);
}

/// Rounds of 6 clients × 30 GETs until `done` holds of a round's share of `id`, for 30 s at most. Prints a round
/// every quarter of a second, and the last.
fn rounds_until(corelb: &Corelb, phase: &str, id: &str, done: impl Fn(f64) -> bool) -> f64 {
    let start = Instant::now();
    let mut printed = Duration::ZERO;
    for number in 1.. {
        let split = round(corelb, 6, 30, true);
        let share = share_of(&split, id);
        let finished = done(share);
        if finished || start.elapsed() >= printed {
            printed += Duration::from_millis(250);
            println!(
                "{phase}: round {number} at {:.2}s: {id} took {:.1} % ({split:?})",
                start.elapsed().as_secs_f64(),
                share * 100.0
            );
        }
        if finished {
            return share;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{phase}: {id}'s share never got there"
        );
    }
    unreachable!()
}

#[test]
fn a_backend_made_slow_loses_most_of_its_share_and_regains_it_once_fast_again() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let slow = Backend::start("slow");
    let corelb = Corelb::start(&config_for(&[(&a, 1), (&b, 1), (&slow, 1)], 2, "", DYNAMIC));

    let before = round(&corelb, 6, 30, true);
    println!("before: {before:?}");
    let share = share_of(&before, "slow");
    assert!(share > 0.2, "all fast: about a third each, {before:?}");

    set_latency(&slow, "100ms");
    let slowed = rounds_until(&corelb, "slow", "slow", |share| share < 0.05);
    let entry = backend_when(&corelb, &slow.id(), "listed", |_| true);
    let weight = entry["dynamic"]["effective_weight"].as_f64().unwrap();
    assert!(weight < 0.3, "its effective weight is down: {entry}");
    assert!(
        entry["dynamic"]["latency_ms"].as_f64().unwrap() > 20.0,
        "its average latency shows why: {entry}"
    );
    // A fast one keeps most of its weight. How much exactly depends on how far its latency strays from its fast
    // peer's on a busy machine (1 ms against 0.1 ms already costs 15 %), so it is compared with the slow one's.
    let fast = backend_when(&corelb, &a.id(), "listed", |_| true);
    let fast_weight = fast["dynamic"]["effective_weight"].as_f64().unwrap();
    assert!(
        fast_weight > 0.5 && fast_weight > 2.0 * weight,
        "a fast one keeps most of its weight: {fast}"
    );
    let metrics = corelb.scrape();
    let label = format!("backend=\"{}\"", slow.id());
    let effective = metric_sum(&metrics, "corelb_backend_effective_weight", &label);
    assert!(
        (effective - weight).abs() < 1e-6,
        "the metric agrees: {effective} against {weight}"
    );
    assert_eq!(
        metric_sum(&metrics, "corelb_backend_weight", &label),
        1.0,
        "the configured weight stays"
    );

    set_latency(&slow, "0ms");
    let recovered = rounds_until(&corelb, "recovered", "slow", |share| share > 0.25);
    println!(
        "split before {:.1} %, slow {:.1} %, recovered {:.1} %",
        share * 100.0,
        slowed * 100.0,
        recovered * 100.0
    );
}

#[test]
fn a_backend_failing_half_its_requests_gets_less_and_the_configured_weight_is_the_ceiling() {
    let a = Backend::start("a");
    let flaky = Backend::start_with("flaky", &["--error-rate", "0.5", "--error-status", "503"]);
    let config = config_for(
        &[(&a, 1), (&flaky, 1)],
        1,
        "",
        &format!("[retries]\non_status = [503]\n\n{DYNAMIC}"),
    );
    let corelb = Corelb::start(&config);
    let deadline = Instant::now() + Duration::from_secs(30);
    let entry = loop {
        // Retries send most 503s to `a`, within the retry budget; the flaky backend's errors are seen either way.
        round(&corelb, 2, 50, false);
        let entry = backend_when(&corelb, &flaky.id(), "listed", |_| true);
        // The average climbs towards the true rate, one half.
        if entry["dynamic"]["error_rate"].as_f64().unwrap() > 0.4 {
            break entry;
        }
        assert!(Instant::now() < deadline, "its error rate never showed: {entry}");
    };
    println!("flaky: {entry}");
    // Both entries from one answer, with no request in between: the shares were set from these averages.
    let reply = corelb.control(json!({"cmd": "backends"}));
    let listed = reply["result"]["backends"].as_array().unwrap();
    let dynamic_of = |id: String| listed.iter().find(|entry| entry["id"] == id).unwrap()["dynamic"].clone();
    let (flaky, healthy) = (dynamic_of(flaky.id()), dynamic_of(a.id()));
    let number = |dynamic: &Value, key: &str| dynamic[key].as_f64().unwrap();
    let best = number(&flaky, "latency_ms").min(number(&healthy, "latency_ms"));
    let expected = |dynamic: &Value| {
        (best + 5.0) / (number(dynamic, "latency_ms") + 5.0) / (1.0 + 10.0 * number(dynamic, "error_rate"))
    };
    for dynamic in [&flaky, &healthy] {
        let weight = number(dynamic, "effective_weight");
        assert!(
            (weight - expected(dynamic)).abs() < 1e-6,
            "the formula: {weight} against {} for {dynamic}",
            expected(dynamic)
        );
    }
    assert!(number(&flaky, "effective_weight") < 0.21, "{flaky}");
    let healthy_weight = number(&healthy, "effective_weight");
    assert!(
        healthy_weight <= 1.0 && healthy_weight > 0.5,
        "never above the configured weight: {healthy}"
    );
}
