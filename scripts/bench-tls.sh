#!/usr/bin/env bash
# TLS termination side by side: corelb, nginx and HAProxy, each one worker pinned to CPU 0, terminating TLS 1.3
# with the same ECDSA P-256 certificate (scripts/dev-certs.sh) in front of the same plain nginx origin on CPU 1,
# where wrk runs too; and monolake 0.3 (io_uring on monoio, HTTP by monoio-http, rustls through monoio-rustls),
# built once by scripts/install-monolake.sh (BENCH_MONOLAKE=0 leaves it out). Interleaved rounds, so drift on a
# shared machine hits every proxy alike. With --plain the same proxies serve plain HTTP (no idle-memory figure):
# corelb's own framing beside monoio-http's, each under its proxy. Figures:
#   keep-alive   proxy CPU µs per request, wrk -c50 over 50 kept TLS connections
#   handshake    proxy CPU µs per new connection (full handshake + one request), wrk -c50 "Connection: close"
#   idle memory  proxy RSS growth per idle TLS connection, CONNS connections opened and held (scripts/bench/tls-idle.py)
# Usage: scripts/bench-tls.sh [--plain] [ROUNDS] [SECONDS] [CONNS]        (make bench-tls)
set -euo pipefail
cd "$(dirname "$0")/.."
TLS=true
if [[ ${1:-} == --plain ]]; then
    TLS=false
    shift
fi
ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-3}
CONNS=${3:-10000}
for tool in wrk nginx haproxy python3 taskset; do
    command -v "$tool" >/dev/null || scripts/install-bench-tools.sh
done
scripts/dev-certs.sh
cargo build --release --bins -q
proxies=(corelb nginx haproxy)
if [[ ${BENCH_MONOLAKE:-1} != 0 ]]; then
    MONOLAKE=$(scripts/install-monolake.sh)
    proxies+=(monolake)
fi
# As many descriptors as the hard limit allows (10,000 idle connections need about that many in each proxy).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDLIMIT=$(ulimit -n)
work=$(mktemp -d /tmp/corelb-bench-tls.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

CERT=$PWD/deploy/dev-certs/server.pem
KEY=$PWD/deploy/dev-certs/server.key
cat "$CERT" "$KEY" >"$work/haproxy.pem"
ORIGIN=29201
PORT=29200
SCHEME=https
CORELB_TLS=$(printf '[frontends.tls]\ncert = "%s"\nkey = "%s"' "$CERT" "$KEY")
NGINX_TLS=$(printf 'ssl_certificate %s;\nssl_certificate_key %s;\nssl_protocols TLSv1.2 TLSv1.3;\nssl_session_cache shared:SSL:10m;' "$CERT" "$KEY")
NGINX_SSL=ssl
HAPROXY_SSL="ssl crt $work/haproxy.pem alpn http/1.1"
MONOLAKE_TLS="tls = { chain = \"$CERT\", key = \"$KEY\" }"
if ! $TLS; then
    SCHEME=http CORELB_TLS="" NGINX_TLS="" NGINX_SSL="" HAPROXY_SSL="" MONOLAKE_TLS=""
fi
NGINX_USER=""
[[ $(id -u) -eq 0 ]] && NGINX_USER="user root;"

mkdir -p "$work/origin/tmp" "$work/nginx/tmp"
nginx_main() {  # nginx_main PREFIX
    printf '%s\nworker_processes 1;\nworker_rlimit_nofile %s;\ndaemon off;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\n' \
        "$NGINX_USER" "$FDLIMIT" "$1" "$1"
    printf 'events { worker_connections %s; }\nhttp {\naccess_log off;\nkeepalive_requests 1000000;\nkeepalive_timeout 300s;\n' "$((FDLIMIT - 100))"
    printf 'client_body_temp_path %s/tmp; proxy_temp_path %s/tmp; fastcgi_temp_path %s/tmp; uwsgi_temp_path %s/tmp; scgi_temp_path %s/tmp;\n' \
        "$1" "$1" "$1" "$1" "$1"
}
{
    nginx_main "$work/origin"
    printf 'server { listen 127.0.0.1:%s backlog=16384; location / { return 200 "corelb bench origin\\n"; } }\n}\n' "$ORIGIN"
} >"$work/origin/nginx.conf"
taskset -c 1 nginx -p "$work/origin/" -c "$work/origin/nginx.conf" -e "$work/origin/error.log" &
pids+=("$!")

config_corelb() {
    cat <<TOML
[server]
workers = 1
pin_workers = false
[[frontends]]
name = "bench"
address = "127.0.0.1"
port = $PORT
$CORELB_TLS
[[backends]]
url = "http://127.0.0.1:$ORIGIN"
[upstream]
max_idle_per_backend = 1024
[metrics]
enabled = false
[control]
socket = "$work/corelb.sock"
[logging]
level = "warn"
TOML
}
config_nginx() {
    nginx_main "$work/nginx"
    cat <<EOF
upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; keepalive_requests 1000000; }
server {
    listen 127.0.0.1:$PORT $NGINX_SSL backlog=16384;
    $NGINX_TLS
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
}
}
EOF
}
config_haproxy() {
    cat <<EOF
global
    nbthread 1
    maxconn $((FDLIMIT / 2 + 2000))
    no strict-limits
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always
frontend bench
    bind 127.0.0.1:$PORT $HAPROXY_SSL backlog 16384
    default_backend origin
backend origin
    server origin1 127.0.0.1:$ORIGIN
EOF
}

config_monolake() {
    cat <<TOML
[runtime]
runtime_type = "io_uring"
worker_threads = 1
cpu_affinity = false
[servers.bench]
name = "bench"
listener = { type = "socket", value = "127.0.0.1:$PORT" }
$MONOLAKE_TLS
upstream_http_version = "http11"
[[servers.bench.routes]]
path = "/"
upstreams = [{ endpoint = { type = "uri", value = "http://127.0.0.1:$ORIGIN" } }]
TOML
}

start_subject() {  # start_subject NAME: starts the proxy on CPU 0 and waits for its port; sets SUBJECT_PID
    local name=$1
    case $name in
        corelb)
            config_corelb >"$work/corelb.toml"
            taskset -c 0 target/release/corelb run -c "$work/corelb.toml" 2>"$work/corelb.err" &
            ;;
        nginx)
            config_nginx >"$work/nginx/nginx.conf"
            taskset -c 0 nginx -p "$work/nginx/" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
            ;;
        haproxy)
            config_haproxy >"$work/haproxy.cfg"
            taskset -c 0 haproxy -db -f "$work/haproxy.cfg" 2>"$work/haproxy.err" &
            ;;
        monolake)
            config_monolake >"$work/monolake.toml"
            # It logs every request at INFO by default; warn, like the others.
            RUST_LOG=warn taskset -c 0 "$MONOLAKE" -c "$work/monolake.toml" >"$work/monolake.out" 2>&1 &
            ;;
    esac
    SUBJECT_PID=$!
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bench-tls: $name did not start" >&2
    return 1
}

stop_subject() {
    kill "$SUBJECT_PID" 2>/dev/null || true
    wait "$SUBJECT_PID" 2>/dev/null || true
    sleep 0.2
}

BENCH=bench-tls
URL=$SCHEME://127.0.0.1:$PORT/
# shellcheck source=bench/tls-measure.sh
source scripts/bench/tls-measure.sh
run_rounds "${proxies[@]}"
for name in "${proxies[@]}"; do
    if $TLS; then memory[$name]=$(idle_memory "$name"); else memory[$name]=n/a; fi
done
title="$($TLS && echo 'TLS 1.3, ECDSA P-256' || echo 'Plain HTTP'), one worker on CPU 0, plain nginx origin; wrk on CPU 1"
print_table "$title" proxy nginx "${proxies[@]}"
