#!/usr/bin/env bash
# CPU per request of two corelb binaries, measured as interleaved A/B runs: the tool for "did this change make the
# proxy cheaper?". Same setup as bench-overhead.sh: one pinned worker on CPU 0, wrk and the example backend on
# CPU 1, metrics off. Prints medians with min/max and B's change against A.
#   scripts/bench-ab.sh BINARY_A BINARY_B [ROUNDS] [SECONDS] [CONNECTIONS] [PATH]      e.g. save a build as
#   /tmp/corelb-a, rebuild, then: scripts/bench-ab.sh /tmp/corelb-a target/release/corelb 7 3 50
#   PATH defaults to / (a 20-byte body); /bytes?n=262144 asks the backend for 256 KiB.
set -euo pipefail
cd "$(dirname "$0")/.."
USAGE="usage: scripts/bench-ab.sh BINARY_A BINARY_B [ROUNDS] [SECONDS] [CONNECTIONS] [PATH]"
A=${1:?$USAGE}
B=${2:?$USAGE}
ROUNDS=${3:-5}
SECONDS_PER_RUN=${4:-3}
CONNECTIONS=${5:-50}
TARGET_PATH=${6:-/}
command -v wrk >/dev/null || scripts/install-bench-tools.sh
[[ -x target/release/corelb-backend ]] || cargo build --release --bins -q
work=$(mktemp -d /tmp/corelb-ab.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

BACKEND_PORT=29201
FRONT_PORT=29200
taskset -c 1 target/release/corelb-backend --port $BACKEND_PORT --id origin --quiet 2>/dev/null &
pids+=("$!")
cat >"$work/config.toml" <<TOML
[server]
workers = 1
pin_workers = false
[[frontends]]
name = "web"
address = "127.0.0.1"
port = $FRONT_PORT
[[backends]]
url = "http://127.0.0.1:$BACKEND_PORT"
[upstream]
max_idle_per_backend = 1024
[logging]
level = "warn"
[metrics]
enabled = false
TOML

run() {
    local binary=$1 name=$2
    taskset -c 0 "$binary" run -c "$work/config.toml" 2>"$work/$name.err" &
    local pid=$!
    for _ in $(seq 50); do grep -q "corelb ready" "$work/$name.err" 2>/dev/null && break; sleep 0.1; done
    local before after output requests
    before=$(awk '{print $14+$15}' /proc/$pid/stat)
    output=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" "http://127.0.0.1:$FRONT_PORT$TARGET_PATH" 2>&1)
    after=$(awk '{print $14+$15}' /proc/$pid/stat)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    requests=$(echo "$output" | awk '/requests in/{print $1}')
    python3 -c "print(round(($after-$before)/$(getconf CLK_TCK)*1e6/$requests, 3), $requests)"
}

a_results=() b_results=()
for round in $(seq "$ROUNDS"); do
    a_results+=("$(run "$A" a)")
    b_results+=("$(run "$B" b)")
    echo "round $round: A ${a_results[-1]}  B ${b_results[-1]}  (µs/request, requests)" >&2
done

python3 - "$CONNECTIONS" "$SECONDS_PER_RUN" <<PY
import statistics, sys
a = [tuple(map(float, r.split())) for r in """$(printf '%s\n' "${a_results[@]}")""".splitlines()]
b = [tuple(map(float, r.split())) for r in """$(printf '%s\n' "${b_results[@]}")""".splitlines()]
print(f"corelb CPU per request, 1 pinned worker, wrk -c{sys.argv[1]}, {len(a)} interleaved rounds of {sys.argv[2]} s")
print("| binary | µs/request median (min–max) | req/s median |")
print("|---|---|---|")
for name, series in (("A $A", a), ("B $B", b)):
    cpu = [x for x, _ in series]
    rps = statistics.median(n for _, n in series) / float(sys.argv[2])
    print(f"| {name} | {statistics.median(cpu):.2f} ({min(cpu):.2f}–{max(cpu):.2f}) | {rps:,.0f} |")
ma, mb = statistics.median(x for x, _ in a), statistics.median(x for x, _ in b)
print(f"B vs A: {100 * (mb / ma - 1):+.1f}% CPU per request")
PY
