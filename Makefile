# corelb — the two commands: `make run` and `make test`.
CARGO ?= cargo

.PHONY: all build run test tools lint fmt bench bench-micro bench-overhead bench-tls bench-tls-adapter clean

all: build

build:
	$(CARGO) build --release --bins

## Build, start three example backends on 127.0.0.1:9001-9003 and corelb on config.toml (Ctrl-C stops all).
run: build
	scripts/run-demo.sh

## Everything CI runs: formatting, lints, and the whole suite on io_uring and again on the epoll fallback.
test: tools lint
	$(CARGO) test --release
	CORELB_TEST_IO_DRIVER=epoll $(CARGO) test --release --test '*'

## Tools the tests need beyond Rust (promtool), installed if missing.
tools:
	scripts/install-test-tools.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

## Side-by-side proxy benchmark against nginx and HAProxy (installs them if missing); report in target/bench-report/.
bench: build
	scripts/run-benchmarks.sh $(BENCH_ARGS)

## TLS termination side by side with nginx and HAProxy: CPU per request and per handshake, memory per idle TLS connection.
bench-tls: build
	scripts/bench-tls.sh $(BENCH_ARGS)

bench-tls-adapter:
	scripts/bench-tls-adapter.sh $(BENCH_ARGS)

## Criterion micro-benchmarks of the hot pure pieces (selection, rate-limit decision, parsing, rewriting).
bench-micro:
	$(CARGO) bench --bench hot_paths

## CPU per request of metrics, access log and rate limiter: interleaved A/B runs against the same backend.
bench-overhead: build
	scripts/bench-overhead.sh $(BENCH_ARGS)
