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
SERVER_PID=""
cleanup() { [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
# shellcheck source=bench/proc.sh
source scripts/bench/proc.sh

CERT=$PWD/deploy/dev-certs/server.pem
KEY=$PWD/deploy/dev-certs/server.key
PORT=29210

start_server() {  # start_server ADAPTER: sets SERVER_PID once the port answers
    taskset -c 0 "$BIN" "$1" "$PORT" "$CERT" "$KEY" 2>"$work/$1.err" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bench-tls-adapter: $1 did not start: $(cat "$work/$1.err")" >&2
    return 1
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    sleep 0.2
}

measure() {  # measure ADAPTER MODE: prints CPU µs per request
    local adapter=$1 mode=$2 header=() before after output requests
    [[ $mode == handshake ]] && header=(-H "Connection: close")
    start_server "$adapter"
    taskset -c 1 wrk -t1 -c50 -d1s "${header[@]}" "https://127.0.0.1:$PORT/" >/dev/null 2>&1
    before=$(cpu_ticks "$SERVER_PID")
    output=$(taskset -c 1 wrk -t1 -c50 -d"${SECONDS_PER_RUN}s" "${header[@]}" "https://127.0.0.1:$PORT/" 2>&1)
    after=$(cpu_ticks "$SERVER_PID")
    stop_server
    requests=$(echo "$output" | awk '/requests in/{print $1}')
    python3 -c "print(round(($after-$before)/$(getconf CLK_TCK)*1e6/max($requests,1), 2))"
}

idle_memory() {  # idle_memory ADAPTER: prints RSS bytes per idle TLS connection
    local adapter=$1 before after held
    start_server "$adapter"
    taskset -c 1 wrk -t1 -c10 -d1s "https://127.0.0.1:$PORT/" >/dev/null 2>&1
    before=$(rss_kib "$SERVER_PID")
    taskset -c 1 python3 scripts/bench/tls-idle.py 127.0.0.1 "$PORT" "$CONNS" "$work/held.$adapter" &
    local holder=$!
    for _ in $(seq 600); do [[ -f "$work/held.$adapter" ]] && break; sleep 0.1; done
    sleep 0.5
    after=$(rss_kib "$SERVER_PID")
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
    stop_server
    held=$(cat "$work/held.$adapter" 2>/dev/null || echo 0)
    python3 -c "print(round(($after-$before)*1024/max($held,1)))"
}

declare -A keepalive handshake memory
adapters=(corelb monoio-rustls)
for round in $(seq "$ROUNDS"); do
    for adapter in "${adapters[@]}"; do
        keepalive[$adapter]+="$(measure "$adapter" keepalive) "
        handshake[$adapter]+="$(measure "$adapter" handshake) "
    done
    echo "bench-tls-adapter: round $round done" >&2
done
for adapter in "${adapters[@]}"; do memory[$adapter]=$(idle_memory "$adapter"); done

subjects=()
for name in "${adapters[@]}"; do
    keep=${keepalive[$name]% } new=${handshake[$name]% }
    subjects+=("$name:${keep// /,}:${new// /,}:${memory[$name]}")
done
title="TLS 1.3, ECDSA P-256, one io_uring thread on CPU 0, a fixed 20-byte answer; wrk on CPU 1"
python3 scripts/bench/median-table.py "$title; $ROUNDS interleaved rounds of ${SECONDS_PER_RUN}s" adapter monoio-rustls "$CONNS" "${subjects[@]}"
