#!/usr/bin/env bash
# Fair service under saturation: unpaced wrk against one pinned worker of corelb and of nginx, each in front of
# two backends (two ports of one nginx origin), at 1,000 and 10,000 connections, interleaved for ROUNDS rounds.
# Reports per run: requests/s, socket errors (connect, read, write, timeout), non-2xx responses, p50 and p99
# latency, and the spread of requests served per client connection (max / min, from each proxy's access log,
# which both write as JSON lines with the same fields). The proxy runs on CPU 0; wrk and the origin share CPU 1.
# Usage: scripts/bench-saturation.sh [ROUNDS] [SECONDS] [CONNS...]   (default 3 rounds of 10 s, 1000 and 10000)
# BENCH_ACCESS_LOG=off runs both proxies without access logs (no spread figure; the cost of logging set apart).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DURATION=${2:-10}
shift $(($# > 2 ? 2 : $#))
CONNS=("$@")
((${#CONNS[@]})) || CONNS=(1000 10000)
command -v wrk >/dev/null && command -v nginx >/dev/null || scripts/install-bench-tools.sh
export PATH=$PATH:/usr/sbin
cargo build --release --bins -q
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d /tmp/corelb-saturation.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
user_line=""
[[ $(id -u) == 0 ]] && user_line="user root;"

ORIGIN_A=29201 ORIGIN_B=29202 CORELB_PORT=29210 NGINX_PORT=29220
nginx_head() {
    cat <<EOF
$user_line
worker_processes 1;
worker_rlimit_nofile $(ulimit -n);
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections $(ulimit -n); }
http {
    default_type text/plain;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $1; proxy_temp_path $1; fastcgi_temp_path $1; uwsgi_temp_path $1; scgi_temp_path $1;
EOF
}

mkdir -p "$work/origin" "$work/nginx" "$work/corelb"
{
    nginx_head "$work/origin"
    echo "    access_log off;"
    echo "    server { listen 127.0.0.1:$ORIGIN_A backlog=4096; listen 127.0.0.1:$ORIGIN_B backlog=4096;"
    echo "        location / { return 200 \"corelb bench origin\n\"; } }"
    echo "}"
} >"$work/origin/nginx.conf"
{
    nginx_head "$work/nginx"
    cat <<EOF
    # As many fields as corelb's JSON line, so that logging costs both about the same.
    log_format corelb_like escape=json '{"time":"\$time_iso8601","client":"\$remote_addr","client_port":\$remote_port,'
        '"method":"\$request_method","path":"\$request_uri","version":"\$server_protocol","status":\$status,'
        '"bytes_sent":\$bytes_sent,"bytes_received":\$request_length,"duration_seconds":\$request_time,'
        '"upstream_seconds":"\$upstream_header_time","backend":"\$upstream_addr","request_id":"\$request_id"}';
    $(if [[ ${BENCH_ACCESS_LOG:-on} == on ]]; then echo "access_log $work/nginx/access.log corelb_like buffer=32k;"; else echo "access_log off;"; fi)
    upstream origin { server 127.0.0.1:$ORIGIN_A; server 127.0.0.1:$ORIGIN_B; keepalive 1024; }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
} >"$work/nginx/nginx.conf"
cat >"$work/corelb/corelb.toml" <<EOF
[server]
workers = 1
pin_workers = false
[[frontends]]
name = "bench"
address = "127.0.0.1"
port = $CORELB_PORT
[[backends]]
url = "http://127.0.0.1:$ORIGIN_A"
[[backends]]
url = "http://127.0.0.1:$ORIGIN_B"
[upstream]
max_idle_per_backend = 1024
[control]
socket = "corelb.sock"
[metrics]
port = 0
[logging]
level = "warn"
[access_log]
enabled = $([[ ${BENCH_ACCESS_LOG:-on} == on ]] && echo true || echo false)
path = "$work/corelb/access.log"
EOF

taskset -c 1 nginx -p "$work/origin/" -c "$work/origin/nginx.conf" >"$work/origin/log" 2>&1 &
pids+=("$!")
taskset -c 0 nginx -p "$work/nginx/" -c "$work/nginx/nginx.conf" >"$work/nginx/log" 2>&1 &
pids+=("$!")
taskset -c 0 target/release/corelb run -c "$work/corelb/corelb.toml" >"$work/corelb/log" 2>&1 &
pids+=("$!")
for port in $ORIGIN_A $NGINX_PORT $CORELB_PORT; do
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

declare -A PORT=([corelb]=$CORELB_PORT [nginx]=$NGINX_PORT)
declare -A LOG=([corelb]="$work/corelb/access.log" [nginx]="$work/nginx/access.log")
results=$work/results.tsv
printf 'target\tconns\tround\treq_per_s\tsocket_errors\tnon_2xx\tp50_ms\tp99_ms\tspread_max_min\n' >"$results"

to_ms() {  # wrk latency (e.g. 812.33us, 14.70ms, 3.41s) in milliseconds
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'
}

spread() {  # spread LOGFILE TARGET OFFSET: max/min requests per client port among the lines after OFFSET
    tail -c +"$(($3 + 1))" "$1" | sed -n 's/.*"client_port":\([0-9]*\).*/\1/p' | sort | uniq -c | awk '{ if (min == "" || $1 < min) min = $1; if ($1 > max) max = $1; n++ }
        END { if (n == 0) print "n/a"; else printf "%d/%d=%.1f (%d conns)", max, min, max / min, n }'
}

for conns in "${CONNS[@]}"; do
    timeout_s=$((conns >= 5000 ? 20 : 10))
    for ((round = 1; round <= ROUNDS; round++)); do
        for target in corelb nginx; do
            [[ $target == nginx ]] && kill -USR1 "${pids[1]}" 2>/dev/null  # nginx: flush its buffered log
            sleep 0.5
            offset=$(stat -c %s "${LOG[$target]}" 2>/dev/null || echo 0)
            out=$work/$target-c$conns-r$round.txt
            taskset -c 1 wrk -t2 -c"$conns" -d"${DURATION}s" --timeout "${timeout_s}s" --latency \
                "http://127.0.0.1:${PORT[$target]}/" >"$out" 2>&1 || true
            # Let the proxies write out their logs (corelb flushes every 200 ms; nginx on USR1 reopen).
            [[ $target == nginx ]] && kill -USR1 "${pids[1]}" 2>/dev/null
            sleep 1
            rps=$(awk '/Requests\/sec/ { print $2 }' "$out")
            errors=$(awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$out")
            non2xx=$(awk '/Non-2xx/ { print $5 }' "$out")
            p50=$(awk '$1 == "50%" { print $2 }' "$out")
            p99=$(awk '$1 == "99%" { print $2 }' "$out")
            line=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$target" "$conns" "$round" "${rps:-0}" "${errors:-0}" \
                "${non2xx:-0}" "$(to_ms "${p50:-0}")" "$(to_ms "${p99:-0}")" "$(spread "${LOG[$target]}" "$target" "$offset")")
            echo "$line" | tee -a "$results"
        done
    done
done
echo
echo "medians (of $ROUNDS rounds):"
awk -F'\t' 'NR > 1 { key = $1 " c=" $2; rps[key] = rps[key] " " $4; p99[key] = p99[key] " " $8; p50[key] = p50[key] " " $7; err[key] = err[key] " " $5 }
    function median(list,   n, a, i, j, t) { n = split(list, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }; return a[int((n + 1) / 2)] }
    END { for (k in rps) printf "  %-14s req/s %8s  p50 %8s ms  p99 %8s ms  socket errors %s\n", k, median(rps[k]), median(p50[k]), median(p99[k]), err[k] }' "$results" | sort
echo "raw: $results"
