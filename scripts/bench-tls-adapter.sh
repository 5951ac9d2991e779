#!/usr/bin/env bash
# corelb's TLS adapter against monoio-rustls 0.4, the integration the specification named: the same TLS 1.3
# HTTP/1.1 responder (benches/tls-adapter) over each, one io_uring thread pinned to CPU 0, wrk on CPU 1, the same
# ECDSA P-256 certificate (scripts/dev-certs.sh). No proxying: what differs is the integration alone. Figures:
#   keep-alive   CPU µs per request, wrk -c50 over 50 kept TLS connections
#   handshake    CPU µs per new connection (full handshake + one request), wrk -c50 "Connection: close"
#   idle memory  RSS growth per idle TLS connection, CONNS connections opened and held (scripts/bench/tls-idle.py)
# Usage: scripts/bench-tls-adapter.sh [ROUNDS] [SECONDS] [CONNS]        (make bench-tls-adapter)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-3}
CONNS=${3:-10000}
for tool in wrk python3 taskset; do
    command -v "$tool" >/dev/null || scripts/install-bench-tools.sh
done
scripts/dev-certs.sh
(cd benches/tls-adapter && cargo build --release -q --target-dir ../../target/tls-adapter)
BIN=target/tls-adapter/release/corelb-tls-adapter-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d /tmp/corelb-bench-tls-adapter.XXXXXX)
SUBJECT_PID=""
cleanup() { [[ -n $SUBJECT_PID ]] && kill "$SUBJECT_PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

CERT=$PWD/deploy/dev-certs/server.pem
KEY=$PWD/deploy/dev-certs/server.key
PORT=29210

start_subject() {  # start_subject ADAPTER: sets SUBJECT_PID once the port answers
    taskset -c 0 "$BIN" "$1" "$PORT" "$CERT" "$KEY" 2>"$work/$1.err" &
    SUBJECT_PID=$!
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bench-tls-adapter: $1 did not start: $(cat "$work/$1.err")" >&2
    return 1
}

stop_subject() {
    kill "$SUBJECT_PID" 2>/dev/null || true
    wait "$SUBJECT_PID" 2>/dev/null || true
    SUBJECT_PID=""
    sleep 0.2
}

BENCH=bench-tls-adapter
URL=https://127.0.0.1:$PORT/
# shellcheck source=bench/tls-measure.sh
source scripts/bench/tls-measure.sh
adapters=(corelb monoio-rustls)
run_rounds "${adapters[@]}"
for adapter in "${adapters[@]}"; do memory[$adapter]=$(idle_memory "$adapter"); done
print_table "TLS 1.3, ECDSA P-256, one io_uring thread on CPU 0, a fixed 20-byte answer; wrk on CPU 1" adapter \
    monoio-rustls "${adapters[@]}"
