#!/usr/bin/env bash
# How much of a proxy's CPU per request is the kernel's TCP work that any proxy must do: for corelb and for nginx
# as a proxy (one worker pinned to CPU 0, an nginx origin and wrk on CPU 1, small responses), the share of CPU 0's
# busy time spent inside tcp_sendmsg and tcp_recvmsg, inclusive (on loopback a send also delivers to the receiver
# and wakes it). That share of nginx's CPU per request is a floor no proxy making the same socket calls goes below.
# With --tls both proxies terminate TLS 1.3 (scripts/dev-certs.sh's ECDSA P-256 certificate) and the share spent in
# the record cipher itself (AES-GCM, ChaCha20-Poly1305 and GHASH routines, self time) is reported beside it.
#   scripts/kernel-floor.sh [--tls] [CONNECTIONS] [SECONDS]   needs perf (linux-perf) and root for `perf record -C`
set -euo pipefail
cd "$(dirname "$0")/.."
TLS=false
if [[ ${1:-} == --tls ]]; then
    TLS=true
    shift
fi
CONNECTIONS=${1:-50}
SECONDS_PER_RUN=${2:-3}
command -v perf >/dev/null || { echo "kernel-floor: needs perf (apt-get install linux-perf)" >&2; exit 1; }
command -v wrk >/dev/null && command -v nginx >/dev/null || scripts/install-bench-tools.sh
[[ -x target/release/corelb ]] || cargo build --release --bins -q
SCHEME=http NGINX_SSL="" CORELB_TLS=""
if $TLS; then
    scripts/dev-certs.sh
    CERT=$PWD/deploy/dev-certs/server.pem KEY=$PWD/deploy/dev-certs/server.key
    SCHEME=https
    NGINX_SSL="ssl; ssl_certificate $CERT; ssl_certificate_key $KEY; ssl_protocols TLSv1.3"
    CORELB_TLS=$(printf '[frontends.tls]\ncert = "%s"\nkey = "%s"' "$CERT" "$KEY")
fi
work=$(mktemp -d /tmp/corelb-floor.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

ORIGIN_PORT=29501 NGINX_PORT=29502 CORELB_PORT=29503
user=""; [[ $(id -u) -eq 0 ]] && user="user root;"
nginx_conf() {  # nginx_conf NAME SERVER_BLOCK
    mkdir -p "$work/$1"
    cat >"$work/$1/nginx.conf" <<EOF
$user
worker_processes 1;
daemon off;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off; tcp_nodelay on; keepalive_requests 1000000; keepalive_timeout 300s;
    client_body_temp_path $work/$1; proxy_temp_path $work/$1;
    $2
}
EOF
}
nginx_conf origin "server { listen 127.0.0.1:$ORIGIN_PORT; location / { return 200 \"corelb bench origin\n\"; } }"
nginx_conf proxy "upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 64; }
    server { listen 127.0.0.1:$NGINX_PORT $NGINX_SSL;
        location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
cat >"$work/corelb.toml" <<EOF
[server]
workers = 1
pin_workers = false
[[frontends]]
name = "web"
address = "127.0.0.1"
port = $CORELB_PORT
$CORELB_TLS
[[backends]]
url = "http://127.0.0.1:$ORIGIN_PORT"
[upstream]
max_idle_per_backend = 1024
[logging]
level = "warn"
[control]
socket = "$work/corelb.sock"
EOF

taskset -c 1 nginx -c "$work/origin/nginx.conf" &
pids+=("$!")
sleep 0.5

measure() {  # measure NAME PORT COMMAND...
    local name=$1 port=$2
    shift 2
    taskset -c 0 "$@" 2>"$work/$name.err" &
    local pid=$! ticks_before ticks_after
    pids+=("$pid")
    sleep 1
    local tree
    tree=$(echo "$pid" $(pgrep -P "$pid" || true))
    ticks() { local sum=0 p; for p in $tree; do sum=$((sum + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$sum"; }
    ticks_before=$(ticks)
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$((SECONDS_PER_RUN + 2))s" "$SCHEME://127.0.0.1:$port/" >"$work/$name.wrk" 2>&1 &
    local wrk_pid=$!
    sleep 1
    perf record -q -C 0 -g -o "$work/$name.data" -- sleep "$SECONDS_PER_RUN" >/dev/null 2>&1
    wait "$wrk_pid"
    ticks_after=$(ticks)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local requests
    requests=$(awk '/requests in/{print $1}' "$work/$name.wrk")
    # Inclusive time in the TCP calls and the idle loop, then self time in the record cipher's routines.
    {
        perf report -i "$work/$name.data" --children --sort sym -g none 2>/dev/null | sed 's/^/children /'
        perf report -i "$work/$name.data" --no-children --sort sym -g none 2>/dev/null | sed 's/^/self /'
    } |
        awk -v name="$name" -v tls="$TLS" -v cpu_ticks="$((ticks_after - ticks_before))" -v hz="$(getconf CLK_TCK)" -v req="$requests" '
            $1 == "children" && $NF == "tcp_sendmsg" { send = $2 + 0 }
            $1 == "children" && $NF == "tcp_recvmsg" { recv = $2 + 0 }
            $1 == "children" && ($NF == "pv_native_safe_halt" || $NF == "default_idle") { if ($2 + 0 > idle) idle = $2 + 0 }
            $1 == "self" && tolower($NF) ~ /aes|gcm|ghash|chacha|poly1305/ { cipher += $2 + 0 }
            END {
                busy = 100 - idle; share = (send + recv) / busy
                us = cpu_ticks / hz * 1e6 / req
                printf "%-7s %6.1f us CPU/request, %4.1f%% of it in tcp_sendmsg+tcp_recvmsg = %5.1f us", name, us, share * 100, us * share
                if (tls == "true") printf ", %4.1f%% in the record cipher = %5.1f us", cipher / busy * 100, us * cipher / busy
                printf "\n"
            }'
}
measure corelb "$CORELB_PORT" target/release/corelb run -c "$work/corelb.toml"
measure nginx "$NGINX_PORT" nginx -c "$work/proxy/nginx.conf"
