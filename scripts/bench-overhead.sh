#!/usr/bin/env bash
# CPU per request of corelb's optional features, measured as interleaved A/B runs of the same proxy:
#   base (metrics off), metrics on, access log on (to a file), rate limiter on but never limiting.
# corelb runs one pinned worker on CPU 0; wrk and the example backend share CPU 1. CPU per request is the proxy's
# utime+stime from /proc over the run, divided by the requests served. Prints medians with min/max and each
# feature's overhead against base. Usage: scripts/bench-overhead.sh [ROUNDS] [SECONDS]   (make bench-overhead)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SECONDS_PER_RUN=${2:-3}
command -v wrk >/dev/null || scripts/install-bench-tools.sh
cargo build --release --bins -q
work=$(mktemp -d /tmp/corelb-overhead.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

BACKEND_PORT=29101
FRONT_PORT=29100
taskset -c 1 target/release/corelb-backend --port $BACKEND_PORT --id origin --quiet 2>/dev/null &
pids+=("$!")

variant_config() {
    local name=$1
    cat <<TOML
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
TOML
    case $name in
        base) printf '[metrics]\nenabled = false\n' ;;
        metrics) printf '[metrics]\nenabled = true\nport = 0\n' ;;
        access_log) printf '[metrics]\nenabled = false\n[access_log]\nenabled = true\npath = "%s/access.log"\n' "$work" ;;
        ratelimit) printf '[metrics]\nenabled = false\n[ratelimit]\nenabled = true\nrate = 100000000.0\nburst = 1000000\n' ;;
    esac
}

run_variant() {
    local name=$1 config="$work/$1.toml"
    variant_config "$name" > "$config"
    taskset -c 0 target/release/corelb run -c "$config" 2>"$work/$name.err" &
    local pid=$!
    for _ in $(seq 50); do grep -q "corelb ready" "$work/$name.err" 2>/dev/null && break; sleep 0.1; done
    local before after output requests
    before=$(awk '{print $14+$15}' /proc/$pid/stat)
    output=$(taskset -c 1 wrk -t1 -c50 -d"${SECONDS_PER_RUN}s" "http://127.0.0.1:$FRONT_PORT/" 2>&1)
    after=$(awk '{print $14+$15}' /proc/$pid/stat)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    requests=$(echo "$output" | awk '/requests in/{print $1}')
    python3 -c "print(($after-$before)/$(getconf CLK_TCK)*1e6/$requests)"
}

declare -A results
variants=(base metrics access_log ratelimit)
for round in $(seq "$ROUNDS"); do
    for name in "${variants[@]}"; do
        results[$name]+="$(run_variant "$name") "
    done
    echo "round $round done" >&2
done

python3 - "${variants[@]}" <<PY
import statistics, sys
values = {$(for name in "${variants[@]}"; do printf '"%s": [%s],' "$name" "$(echo ${results[$name]} | tr ' ' ',')"; done)}
base = statistics.median(values["base"])
print(f"corelb CPU per request, 1 pinned worker, wrk -c50, {len(values['base'])} interleaved rounds")
print("| variant | µs/request median (min–max) | vs base |")
print("|---|---|---|")
for name in sys.argv[1:]:
    series = values[name]
    median = statistics.median(series)
    print(f"| {name} | {median:.2f} ({min(series):.2f}–{max(series):.2f}) | {100 * (median / base - 1):+.1f}% |")
PY
