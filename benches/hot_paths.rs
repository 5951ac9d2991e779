//! The hot pure pieces of the request path, measured with criterion: backend selection (3 and 1,000 backends),
//! the rate-limit decision, the circuit breaker's decision, request-head parsing, and writing the head sent upstream.
//! Run: `cargo bench --bench hot_paths` (or `make bench-micro`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use corelb::balance::hash::Method;
use corelb::balance::{Balancer, Everyone};
use corelb::config::{parse_config, Algorithm};
use corelb::http::head::{parse_request, HeadLimits};
use corelb::http::rewrite::{write_upstream_request, ClientSide};
use corelb::ratelimit::RateLimitShard;
use corelb::ratelimit::{SlidingWindow, TokenBucket};
use corelb::shard::sticky::StickyRoutes;
use corelb::upstream::breaker::{Attempt, Breaker, BreakerSettings};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 16 * 1024,
    max_request_line: 8 * 1024,
    max_headers: 100,
};

const REQUEST: &[u8] = b"GET /api/v1/items?page=2&sort=desc HTTP/1.1\r\nHost: shop.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\nAccept: application/json\r\n\
Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-GB,en;q=0.9\r\nCookie: session=abcdef0123456789\r\n\
Connection: keep-alive\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n";

fn balancer_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("balancer_pick");
    for count in [3usize, 10, 50, 1000] {
        for (name, algorithm, method) in [
            ("round_robin", Algorithm::RoundRobin, Method::Maglev),
            ("smooth_weighted", Algorithm::WeightedRoundRobin, Method::Maglev),
            ("least_connections", Algorithm::LeastConnections, Method::Maglev),
            ("power_of_two", Algorithm::PowerOfTwo, Method::Maglev),
            ("random", Algorithm::Random, Method::Maglev),
            ("least_response_time", Algorithm::LeastResponseTime, Method::Maglev),
            ("maglev", Algorithm::ConsistentHash, Method::Maglev),
            ("rendezvous", Algorithm::ConsistentHash, Method::Rendezvous),
        ] {
            let weights: Vec<u32> = (0..count).map(|index| 1 + (index % 5) as u32).collect();
            let ids: Vec<String> = (0..count)
                .map(|index| format!("10.0.{}.{}:80", index / 256, index % 256))
                .collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let balancer = Balancer::new(algorithm, method, &ids, &weights, 1);
            group.bench_with_input(BenchmarkId::new(name, count), &count, |bench, _| {
                bench.iter(|| black_box(balancer.pick(&Everyone)))
            });
        }
    }
    group.finish();
}

fn rate_limit_decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit_decision");
    let start = Instant::now();
    let mut bucket = TokenBucket::new(1e9, 1e9, start);
    group.bench_function("token_bucket", |bench| {
        bench.iter(|| black_box(bucket.check(Instant::now())))
    });
    let mut window = SlidingWindow::new(1e9, start);
    group.bench_function("sliding_window", |bench| {
        bench.iter(|| black_box(window.check(Instant::now())))
    });
    let frontends = "[[frontends]]\nname = \"web\"\nport = 1\n[[backends]]\nurl = \"http://127.0.0.1:2\"\n";
    for (name, extra) in [
        (
            "shard_global",
            "[ratelimit]\nenabled = true\nrate = 1e9\nburst = 1000000\n",
        ),
        (
            "shard_client_ip",
            "[ratelimit]\nenabled = true\nrate = 1e9\nburst = 1000000\nscope = \"client_ip\"\n",
        ),
    ] {
        let config = parse_config(&format!("{frontends}{extra}")).expect("bench config");
        let mut shard = RateLimitShard::new(&config, 2, start);
        let clients: Vec<IpAddr> = (0..256u32)
            .map(|index| IpAddr::from((0x0a00_0000 + index).to_be_bytes()))
            .collect();
        let mut next = 0;
        group.bench_function(name, |bench| {
            bench.iter(|| {
                next = (next + 1) % clients.len();
                black_box(shard.check(0, clients[next], Instant::now()))
            })
        });
    }
    group.finish();
}

/// The breaker's part of one request: the pick's look (`peek`), the claim (`admit`) and the outcome (`record`),
/// with the clock read as the request path reads it.
fn breaker_decision(c: &mut Criterion) {
    let mut breaker = Breaker::new(BreakerSettings {
        threshold: 5,
        open_for: std::time::Duration::from_secs(10),
        max_trials: 1,
    });
    c.bench_function("breaker_admit_and_record", |bench| {
        bench.iter(|| {
            let now = Instant::now();
            black_box(breaker.peek(now));
            let verdict = breaker.admit(now);
            breaker.record(Attempt::Succeeded, now);
            black_box(verdict)
        })
    });
}

fn head_parsing(c: &mut Criterion) {
    c.bench_function("parse_request_head", |bench| {
        bench.iter(|| {
            black_box(
                parse_request(black_box(REQUEST), &LIMITS)
                    .expect("valid")
                    .expect("complete"),
            )
        })
    });
}

fn header_rewriting(c: &mut Criterion) {
    let head = parse_request(REQUEST, &LIMITS).expect("valid").expect("complete");
    let client = ClientSide {
        address: b"198.51.100.4",
        scheme: "http",
        fallback_host: b"127.0.0.1:9001",
        request_id: b"7b81f6eddd7c-0-2a",
        identity: None,
    };
    let mut out = Vec::with_capacity(1024);
    c.bench_function("write_upstream_request", |bench| {
        bench.iter(|| {
            out.clear();
            write_upstream_request(&mut out, REQUEST, &head, &client);
            black_box(out.len())
        })
    });
}

/// Finding the sticky cookie among a browser's cookies and recognising its value among 50 backends'.
fn sticky_lookup(c: &mut Criterion) {
    let config = parse_config(
        "[[frontends]]\nport = 1\n[[backends]]\nurl = \"http://127.0.0.1:2\"\n[balancer.sticky]\nenabled = true\n",
    )
    .expect("valid");
    let values: Vec<String> = (0..50).map(|index| format!("{index:0>22}")).collect();
    let routes = StickyRoutes::new(&config.balancer.sticky, &values).expect("sticky is on");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: shop.example.com\r\nAccept: */*\r\n\
         Cookie: session=abcdef0123456789; theme=dark; corelb_srv={}; lang=en\r\n\r\n",
        values[37]
    );
    let head = parse_request(request.as_bytes(), &LIMITS)
        .expect("valid")
        .expect("complete");
    c.bench_function("sticky_lookup", |bench| {
        bench.iter(|| black_box(routes.backend_of(black_box(request.as_bytes()), &head)))
    });
}

criterion_group!(
    benches,
    balancer_pick,
    sticky_lookup,
    rate_limit_decision,
    breaker_decision,
    head_parsing,
    header_rewriting
);
criterion_main!(benches);
