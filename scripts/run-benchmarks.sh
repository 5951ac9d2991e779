#!/usr/bin/env bash
# corelb benchmark suite (issue 6): corelb against nginx and HAProxy as proxies, and against the origin hit directly,
# all in front of the same nginx origin, with the same worker count and upstream keep-alive.
#
#   scripts/run-benchmarks.sh [--quick] [--only LIST] [--duration S] [--rounds N] [--build] [--keep]
#
# Writes target/bench-report/{report.md,chart.svg,results.json} and prints the corelb/nginx and corelb/HAProxy
# ratios. Every process it starts is stopped on exit (also on Ctrl-C); all state lives in one mktemp directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HERE=$ROOT/scripts/bench

usage() {
    cat <<'EOF'
usage: scripts/run-benchmarks.sh [options]
  --quick          short runs (2 s each, 3 rounds, 10k-connection hold 4 s): about 4 minutes
  --only LIST      comma-separated subset of: throughput,sizes,latency,rss,backends,algorithms,multicore
                   (also BENCH_ONLY=LIST); default: all
  --duration S     seconds per measured run (default 8, quick 2; also BENCH_DURATION)
  --rounds N       interleaved rounds per measurement, at least 3 (default 3; also BENCH_ROUNDS)
  --latency-tool T wrk (default: paced wrk, microsecond percentiles) or hey (hey -q, 0.1 ms resolution, no p99.9)
  --build          run `cargo build --release --bins` first (it is also built when the binary is missing)
  --keep           keep the temporary directory (configs, logs, raw wrk output)
  --out DIR        report directory (default target/bench-report)
Environment: BENCH_BASE_PORT (default 28000; ports BASE..BASE+199 are used on 127.0.0.1),
  BENCH_NGINX_KEEPALIVE (nginx upstream keepalive, default 64), BENCH_CORELB_METRICS (on|off, default on).
EOF
}

MODE=full
ONLY=${BENCH_ONLY:-}
DURATION=${BENCH_DURATION:-}
ROUNDS=${BENCH_ROUNDS:-3}
LATENCY_TOOL=${BENCH_LATENCY_TOOL:-wrk}
BUILD=0
KEEP=0
OUT=$ROOT/target/bench-report
while (($# > 0)); do
    case $1 in
        --quick) MODE=quick ;;
        --only) ONLY=${2:?--only needs a list}; shift ;;
        --only=*) ONLY=${1#*=} ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
        --latency-tool) LATENCY_TOOL=${2:?}; shift ;;
        --build) BUILD=1 ;;
        --keep) KEEP=1 ;;
        --out) OUT=${2:?}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

ALL_TESTS=(throughput sizes latency rss backends algorithms multicore)
# The algorithms test: one corelb per balancing algorithm with 3 and with 50 backends (ports of the same origin);
# CPU per request against round-robin's, and throughput at each concurrency (3 backends).
ALGORITHMS=(round_robin weighted_round_robin least_connections power_of_two random least_response_time ip_hash consistent_hash)
ALGO_BACKENDS=(3 50)
ALGO_CONNS=(10 50 500)
ONLY=${ONLY//[[:space:]]/}
[[ -n $ONLY ]] || ONLY=$(IFS=,; echo "${ALL_TESTS[*]}")
IFS=, read -r -a SELECTED <<<"$ONLY"
for t in "${SELECTED[@]}"; do
    [[ " ${ALL_TESTS[*]} " == *" $t "* ]] || { echo "--only: unknown test '$t' (known: ${ALL_TESTS[*]})" >&2; exit 2; }
done
selected() { [[ ",$ONLY," == *",$1,"* ]]; }

SIZES=(0 1k 16k 256k)   # body sizes of the throughput-by-size test
PROBE_SIZES=(0 1k 16k 256k)
if [[ $MODE == quick ]]; then
    DURATION=${DURATION:-2}
    HOLD=4              # seconds the 10,000 connections are held
    PROBE=1             # seconds of each single-connection stall probe
    SIZES=(1k 256k)     # fewer sizes; the stall probe still covers all four
    MC_TARGETS=(corelb-2w nginx-2w)
    MC_CONNS=(1000)
else
    DURATION=${DURATION:-8}
    HOLD=8
    PROBE=2
    MC_TARGETS=(direct-2w corelb-2w nginx-2w)
    MC_CONNS=(50 1000)
fi
WARMUP=1
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 ]] || { echo "--duration must be a whole number of seconds" >&2; exit 2; }
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 3 ]] || { echo "--rounds must be at least 3" >&2; exit 2; }
[[ $LATENCY_TOOL == wrk || $LATENCY_TOOL == hey ]] || { echo "--latency-tool: wrk or hey" >&2; exit 2; }

THROUGHPUT_CONNS=(50 1000)
LATENCY_CONNS=10        # connections of the fixed-rate latency test
LATENCY_PACE_MS=5       # each waits ~5 ms between requests: ~2,000 req/s in total
RSS_CONNS=10000
RSS_PACE_MS=1000        # each of the 10,000 connections sends ~1 request per second
STALL_PER_CONN=100      # below this many req/s per connection a run is flagged STALLED (a Nagle stall gives ~25)
NGINX_KEEPALIVE=${BENCH_NGINX_KEEPALIVE:-64}
CORELB_METRICS=${BENCH_CORELB_METRICS:-on}   # on: corelb's default (counting, /metrics on an ephemeral port)
WORKERS_PINNED=1
WORKERS_MULTI=2

BASE=${BENCH_BASE_PORT:-28000}
PORT_ORIGIN=$((BASE + 1))        # origin nginx, pinned, 1 worker
PORT_ORIGIN_STATUS=$((BASE + 2))
PORT_ORIGIN_MC=$((BASE + 3))     # origin nginx for the multi-core runs, unpinned, 2 workers
PORT_ORIGIN_MC_STATUS=$((BASE + 4))
PORT_MANY=$((BASE + 100))        # 100 more listen ports of the pinned origin: BASE+100..BASE+199

# ---------------------------------------------------------------------------------------------------------------
# Tools, binaries, limits

"$ROOT/scripts/install-bench-tools.sh"
for tool in wrk nginx haproxy python3 taskset timeout; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || { echo "missing $tool" >&2; exit 1; }
done
export PATH=$PATH:/usr/sbin
# The interpreter itself, not a version-manager shim (a pyenv shim costs ~0.2 s per call, and it is called per run).
PY=$(python3 -c 'import sys; print(sys.executable)')
export PYTHONDONTWRITEBYTECODE=1
if [[ $LATENCY_TOOL == hey ]] && ! command -v hey >/dev/null; then
    echo "hey is not installed; using paced wrk for the latency test" >&2
    LATENCY_TOOL=wrk
fi

CORELB=$ROOT/target/release/corelb
if ((BUILD)) || [[ ! -x $CORELB ]]; then
    cargo build --release --bins
fi

# 10,000 client connections plus the proxy's own sockets need a high descriptor limit; raise it as far as allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDLIMIT=$(ulimit -n)
if ((FDLIMIT < RSS_CONNS + 1000)) && selected rss; then
    echo "warning: open-file limit is $FDLIMIT; the 10,000-connection test needs more than $((RSS_CONNS + 1000))" >&2
fi

NPROC=$(nproc)
if ((NPROC >= 2)); then
    PROXY_CPUS=0
    LOAD_CPUS=1
else
    PROXY_CPUS=0
    LOAD_CPUS=0
fi
CLK_TCK=$(getconf CLK_TCK)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/corelb-bench.XXXXXX")
# A private copy, so that a rebuild during the run (cargo replaces target/release/corelb) cannot mix two binaries.
mkdir -p "$WORK/bin"
cp "$CORELB" "$WORK/bin/corelb"
CORELB_ID="$(sha256sum "$CORELB" | cut -c1-12), built $(date -u -r "$CORELB" +%Y-%m-%dT%H:%M:%SZ)"
CORELB=$WORK/bin/corelb
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
mkdir -p "$WORK/www/size"
head -c 0 /dev/zero >"$WORK/www/size/0"
head -c 1024 /dev/zero | tr '\0' 'a' >"$WORK/www/size/1k"
head -c 16384 /dev/zero | tr '\0' 'b' >"$WORK/www/size/16k"
head -c 262144 /dev/zero | tr '\0' 'c' >"$WORK/www/size/256k"
NGINX_USER=""
[[ $(id -u) -eq 0 ]] && NGINX_USER="user root;"

# ---------------------------------------------------------------------------------------------------------------
# Process bookkeeping: every started process is recorded, and stopped by its pid on exit.

declare -A PID=()       # name -> pid of the started process (nginx: the master)
declare -A PORT=()      # target name -> port clients connect to
declare -A ORIGIN=()    # target name -> origin name (for the origin's status port)
declare -A STATUS_PORT=([origin]=$PORT_ORIGIN_STATUS [origin-mc]=$PORT_ORIGIN_MC_STATUS)
STARTED=()
LOAD_PID=""             # the running load generator (wrk or hey, under timeout)

stop_proc() {
    local name=$1 pid=${PID[$1]:-} i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "  $name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    unset "PID[$name]"
}

cleanup() {
    local rc=$? name i left
    trap - EXIT INT TERM
    if [[ -n $LOAD_PID ]] && kill -0 "$LOAD_PID" 2>/dev/null; then
        kill -TERM "$LOAD_PID" 2>/dev/null || true
        wait "$LOAD_PID" 2>/dev/null || true
    fi
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        name=${STARTED[i]}
        [[ -n ${PID[$name]:-} ]] && stop_proc "$name"
    done
    # Every process this script started has the temp directory on its command line.
    left=$(pgrep -a -f -- "$WORK" || true)
    if [[ -n $left ]]; then
        echo "warning: processes still running after cleanup:" >&2
        echo "$left" >&2
    fi
    if ((KEEP)) || ((rc != 0 && rc != 130 && rc != 143)); then
        echo "temporary directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

wait_port() {   # wait_port NAME PORT: until the port accepts connections, or fail if the process died
    local name=$1 port=$2 i
    for ((i = 0; i < 200; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            echo "$name exited during startup; its log:" >&2
            tail -n 30 "$WORK/$name/log" >&2 || true
            exit 1
        fi
        sleep 0.05
    done
    echo "$name did not listen on port $port within 10 s" >&2
    exit 1
}

pin_prefix() {  # pin_prefix CPUS -> the taskset words, or nothing for "" (unpinned)
    if [[ -n $1 ]]; then printf '%s\n' taskset -c "$1"; fi
}

launch() {      # launch NAME CPUS CMD...: start in the background with its output in WORK/NAME/log
    local name=$1 cpus=$2
    shift 2
    local -a pin=()
    mapfile -t pin < <(pin_prefix "$cpus")
    "${pin[@]}" "$@" >>"$WORK/$name/log" 2>&1 </dev/null &
    PID[$name]=$!
    [[ " ${STARTED[*]} " == *" $name "* ]] || STARTED+=("$name")
}

nginx_common() {  # nginx_common PREFIX WORKERS: the main-context and http-context lines every nginx here shares
    local prefix=$1 workers=$2
    cat <<EOF
$NGINX_USER
worker_processes $workers;
worker_rlimit_nofile $FDLIMIT;
daemon off;
master_process on;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
events {
    worker_connections $FDLIMIT;
}
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $prefix/tmp/body;
    proxy_temp_path $prefix/tmp/proxy;
    fastcgi_temp_path $prefix/tmp/fastcgi;
    uwsgi_temp_path $prefix/tmp/uwsgi;
    scgi_temp_path $prefix/tmp/scgi;
EOF
}

start_origin() {  # start_origin NAME WORKERS CPUS PORT STATUS_PORT [EXTRA_PORTS]
    local name=$1 workers=$2 cpus=$3 port=$4 sport=$5 extra=${6:-0} dir=$WORK/$1 i reuse=""
    mkdir -p "$dir/tmp"
    ((workers > 1)) && reuse=" reuseport"
    {
        nginx_common "$dir" "$workers"
        echo "    server {"
        echo "        listen 127.0.0.1:$port backlog=16384$reuse;"
        for ((i = 0; i < extra; i++)); do echo "        listen 127.0.0.1:$((PORT_MANY + i));"; done
        printf '%s\n' '        location = / { return 200 "corelb bench origin\n"; }'
        echo "        location /size/ { root $WORK/www; }"
        echo "    }"
        echo "    server {"
        echo "        listen 127.0.0.1:$sport;"
        echo "        location / { stub_status; }"
        echo "    }"
        echo "}"
    } >"$dir/nginx.conf"
    launch "$name" "$cpus" nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log"
    wait_port "$name" "$port"
}

start_corelb() {  # start_corelb NAME WORKERS CPUS PORT ORIGIN BACKEND_PORT...
    local name=$1 workers=$2 cpus=$3 port=$4 origin=$5 dir=$WORK/$1 p
    shift 5
    mkdir -p "$dir"
    {
        printf '[server]\nworkers = %s\npin_workers = false\nsplice_bodies = %s\n\n' "$workers" "${SPLICE:-true}"
        printf '[[frontends]]\nname = "bench"\naddress = "127.0.0.1"\nport = %s\n\n' "$port"
        printf '[balancer]\nalgorithm = "%s"\n\n' "${ALGORITHM:-round_robin}"
        for p in "$@"; do printf '[[backends]]\nurl = "http://127.0.0.1:%s"\n\n' "$p"; done
        printf '[upstream]\nmax_idle_per_backend = 1024\n\n'
        printf '[control]\nsocket = "corelb.sock"\n\n'
        # corelb's default keeps its metrics on; port 0 so that several instances (and anything on 9090) coexist.
        if [[ $CORELB_METRICS == on ]]; then
            printf '[metrics]\nenabled = true\naddress = "127.0.0.1"\nport = 0\n\n'
        else
            printf '[metrics]\nenabled = false\n\n'
        fi
        printf '[logging]\nlevel = "warn"\n'
    } >"$dir/corelb.toml"
    launch "$name" "$cpus" "$CORELB" run -c "$dir/corelb.toml"
    PORT[$name]=$port
    ORIGIN[$name]=$origin
    wait_port "$name" "$port"
}

start_nginx_proxy() {  # start_nginx_proxy NAME WORKERS CPUS PORT ORIGIN ORIGIN_PORT
    local name=$1 workers=$2 cpus=$3 port=$4 origin=$5 oport=$6 dir=$WORK/$1 reuse=""
    mkdir -p "$dir/tmp"
    ((workers > 1)) && reuse=" reuseport"
    {
        nginx_common "$dir" "$workers"
        cat <<EOF
    upstream origin {
        server 127.0.0.1:$oport;
        keepalive $NGINX_KEEPALIVE;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$port backlog=16384$reuse;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;
            proxy_busy_buffers_size 32k;
            proxy_max_temp_file_size 0;
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    launch "$name" "$cpus" nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log"
    PORT[$name]=$port
    ORIGIN[$name]=$origin
    wait_port "$name" "$port"
}

start_haproxy() {  # start_haproxy NAME THREADS CPUS PORT ORIGIN ORIGIN_PORT
    local name=$1 threads=$2 cpus=$3 port=$4 origin=$5 oport=$6 dir=$WORK/$1 strict=""
    mkdir -p "$dir"
    # HAProxy wants 2 descriptors per maxconn and refuses to start below that unless told otherwise; the
    # 10,000-connection test needs only a few upstream connections, so a lower limit is enough.
    ((FDLIMIT < 2 * 20000 + 100)) && strict="no strict-limits"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $threads
    maxconn 20000
    $strict
    pidfile $dir/haproxy.pid

defaults
    mode http
    maxconn 20000
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always

frontend bench
    bind 127.0.0.1:$port backlog 16384
    default_backend origin

backend origin
    server origin1 127.0.0.1:$oport
EOF
    launch "$name" "$cpus" haproxy -db -f "$dir/haproxy.cfg"
    PORT[$name]=$port
    ORIGIN[$name]=$origin
    wait_port "$name" "$port"
}

add_direct() {  # add_direct NAME ORIGIN ORIGIN_PORT: the origin itself as a target (the ceiling)
    PORT[$1]=$3
    ORIGIN[$1]=$2
}

proc_pids() {   # the pids whose CPU and memory count for NAME: the process and its children (nginx workers)
    local pid=${PID[$1]:-}
    [[ -n $pid ]] || return 0
    echo "$pid"
    pgrep -P "$pid" || true
}

cpu_ticks() {   # cpu_ticks PID...: utime+stime (clock ticks) summed over the processes, all threads included
    local total=0 pid stat
    local -a f
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat") 2>/dev/null || continue
        stat=${stat##*) }
        read -r -a f <<<"$stat"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

RSS_NOW=0
rss_now() {     # rss_now PID...: VmRSS (KiB) summed over the processes into RSS_NOW (no fork: sampled often)
    local pid key value _
    RSS_NOW=0
    for pid in "$@"; do
        while read -r key value _; do
            if [[ $key == VmRSS: ]]; then RSS_NOW=$((RSS_NOW + value)); break; fi
        done <"/proc/$pid/status" 2>/dev/null || true
    done
}

SYS_BUSY=0 SYS_STEAL=0
sys_ticks() {   # machine-wide busy (user+nice+system+irq+softirq) and steal ticks, from /proc/stat
    local _cpu u n sy _idle _iow irq sirq steal _rest
    read -r _cpu u n sy _idle _iow irq sirq steal _rest </proc/stat
    SYS_BUSY=$((u + n + sy + irq + sirq))
    SYS_STEAL=$steal
}

CHILD_MS=0
children_ms() { # CPU time (ms) of this shell's waited-for children, i.e. of the load generators run so far
    local line a b
    times >"$WORK/times"
    { read -r line; read -r a b; } <"$WORK/times"
    CHILD_MS=$(($(dur_ms "$a") + $(dur_ms "$b")))
}
dur_ms() {      # "1m2.345s" -> 62345
    [[ $1 =~ ^([0-9]+)m([0-9]+)[.,]([0-9]{3})s$ ]] || { echo 0; return; }
    echo $(((10#${BASH_REMATCH[1]} * 60 + 10#${BASH_REMATCH[2]}) * 1000 + 10#${BASH_REMATCH[3]}))
}

origin_accepts() {  # connections the origin has accepted so far (nginx stub_status)
    local port=${STATUS_PORT[$1]} line
    line=$(curl -s --max-time 2 "http://127.0.0.1:$port/" | sed -n 3p || true)
    read -r line _ <<<"$line"
    echo "${line:-0}"
}

# ---------------------------------------------------------------------------------------------------------------
# One measured run. Appends a JSON line to results.jsonl and prints a progress line.

RUN_NO=0
RUN_TOTAL=0
measure() {  # measure TEST TARGET ROUND CONNS PATH SIZE DURATION THREADS LOAD_CPUS PACE_MS [record]
    local test=$1 target=$2 round=$3 conns=$4 path=$5 size=$6 dur=$7 threads=$8 lcpus=$9 pace=${10} record=${11:-1}
    local port=${PORT[$target]} origin=${ORIGIN[$target]}
    local -a pids opids pin=()
    mapfile -t pids < <(proc_pids "$target")
    mapfile -t opids < <(proc_pids "$origin")
    mapfile -t pin < <(pin_prefix "$lcpus")
    local timeout_s=5 t0 t1 o0 o1 a0 a1 b0 b1 s0 s1 c0 c1 rss_peak=0 rss_idle=0 wpid rc=0 json
    ((conns >= 5000)) && timeout_s=20
    local outfile=$WORK/raw/$test-$target-c$conns-$size-r$round.txt
    mkdir -p "$WORK/raw"
    if ((${#pids[@]} > 0)); then rss_now "${pids[@]}"; rss_idle=$RSS_NOW; fi
    a0=$(origin_accepts "$origin")
    t0=$(cpu_ticks "${pids[@]}")
    o0=$(cpu_ticks "${opids[@]}")
    if ((record)); then "$PY" "$HERE/report.py" procsnap "$WORK/procsnap.json"; fi
    children_ms; c0=$CHILD_MS
    sys_ticks; b0=$SYS_BUSY s0=$SYS_STEAL
    if [[ $test == latency && $LATENCY_TOOL == hey ]]; then
        # hey -q is per worker: LATENCY_CONNS workers x (1000/pace) req/s
        timeout --foreground $((dur + 30)) "${pin[@]}" hey -z "${dur}s" -c "$conns" -q $((1000 / pace)) -cpus 1 \
            -o csv "http://127.0.0.1:$port$path" >"$outfile.csv" 2>&1 &
        LOAD_PID=$!
        wait "$LOAD_PID" || rc=$?
    else
        BENCH_PACE_MS=$pace timeout --foreground $((dur + 30)) "${pin[@]}" wrk -t"$threads" -c"$conns" -d"${dur}s" \
            --timeout "${timeout_s}s" -s "$HERE/wrk-report.lua" "http://127.0.0.1:$port$path" >"$outfile" 2>&1 &
        wpid=$!
        LOAD_PID=$wpid
        # While wrk runs, sample the proxy's resident memory (the peak is what the 10k-connection test reports).
        while kill -0 "$wpid" 2>/dev/null; do
            if ((${#pids[@]} > 0)); then
                rss_now "${pids[@]}"
                ((RSS_NOW > rss_peak)) && rss_peak=$RSS_NOW
            fi
            # (an external sleep: bash 5.2 aborts when a trapped signal arrives during `read -t`)
            sleep 0.2
        done
        wait "$wpid" || rc=$?
    fi
    LOAD_PID=""
    sys_ticks; b1=$SYS_BUSY s1=$SYS_STEAL
    children_ms; c1=$CHILD_MS
    t1=$(cpu_ticks "${pids[@]}")
    o1=$(cpu_ticks "${opids[@]}")
    a1=$(($(origin_accepts "$origin") - 1))  # minus the status request itself
    if [[ $test == latency && $LATENCY_TOOL == hey ]]; then
        json=$("$PY" "$HERE/report.py" hey-csv "$outfile.csv" "$dur")
    else
        json=$(sed -n 's/^BENCH_JSON //p' "$outfile" | tail -n 1)
    fi
    if [[ -z $json ]]; then
        echo "  $test $target c=$conns size=$size round $round: no result (exit $rc); output:" >&2
        tail -n 20 "$outfile"* >&2 || true
        json='{"requests":0,"duration_us":0,"bytes":0,"err_connect":0,"err_read":0,"err_write":0,"err_status":0,"err_timeout":0,"lat_p50_us":0,"lat_p99_us":0,"lat_p999_us":0,"lat_max_us":0,"lat_mean_us":0,"failed":true}'
    fi
    ((record)) || return 0
    RUN_NO=$((RUN_NO + 1))
    local cpu_field="null"
    ((${#pids[@]} > 0)) && cpu_field=$((t1 - t0))
    printf '{"test":"%s","target":"%s","round":%d,"conns":%d,"size":"%s","path":"%s","threads":%d,"pace_ms":%d,"load_cpus":"%s","cpu_ticks":%s,"origin_cpu_ticks":%d,"loadgen_cpu_ms":%d,"sys_busy_ticks":%d,"sys_steal_ticks":%d,"clk_tck":%d,"origin_accepts":%d,"rss_idle_kib":%d,"rss_peak_kib":%d,"exit":%d,"wrk":%s}' \
        "$test" "$target" "$round" "$conns" "$size" "$path" "$threads" "$pace" "${lcpus:-all}" "$cpu_field" \
        $((o1 - o0)) $((c1 - c0)) $((b1 - b0)) $((s1 - s0)) "$CLK_TCK" $((a1 - a0)) "$rss_idle" "$rss_peak" "$rc" \
        "$json" >"$WORK/run.json"
    # adds the other processes' CPU since the snapshot, appends to results.jsonl, prints the progress line
    "$PY" "$HERE/report.py" record "$WORK/run.json" "$WORK/procsnap.json" "$RESULTS" "$RUN_NO" "$RUN_TOTAL" >&2
}

warmup() {  # warmup THREADS LOAD_CPUS TARGET...: an unrecorded short run per target (fills upstream pools)
    local threads=$1 lcpus=$2 t
    shift 2
    for t in "$@"; do measure warmup "$t" 0 50 / small "$WARMUP" "$threads" "$lcpus" 0 0; done
}

run_interleaved() {  # run_interleaved TEST CONNS PATH SIZE THREADS LOAD_CPUS PACE TARGET...: A B C D x ROUNDS
    local test=$1 conns=$2 path=$3 size=$4 threads=$5 lcpus=$6 pace=$7 round t
    shift 7
    for ((round = 1; round <= ROUNDS; round++)); do
        for t in "$@"; do measure "$test" "$t" "$round" "$conns" "$path" "$size" "$DURATION" "$threads" "$lcpus" "$pace"; done
    done
}

# ---------------------------------------------------------------------------------------------------------------
# Plan and run

MAIN_TARGETS=(direct corelb nginx haproxy)
PROXIES=(corelb nginx haproxy)
runs=0
selected throughput && runs=$((runs + ROUNDS * ${#THROUGHPUT_CONNS[@]} * ${#MAIN_TARGETS[@]}))
selected sizes && runs=$((runs + ROUNDS * ${#SIZES[@]} * (${#MAIN_TARGETS[@]} + 1) + ${#PROBE_SIZES[@]} * ${#MAIN_TARGETS[@]}))
selected latency && runs=$((runs + ROUNDS * ${#MAIN_TARGETS[@]}))
selected backends && runs=$((runs + ROUNDS * 2))
selected algorithms && runs=$((runs + ROUNDS * ${#ALGORITHMS[@]} * (${#ALGO_CONNS[@]} + ${#ALGO_BACKENDS[@]} - 1)))
selected multicore && runs=$((runs + ROUNDS * ${#MC_CONNS[@]} * ${#MC_TARGETS[@]}))
RUN_TOTAL=$runs
selected rss && RUN_TOTAL=$((RUN_TOTAL + ${#PROXIES[@]}))
# about 0.4 s of bookkeeping per run, plus warm-ups and start-ups
estimate=$((runs * (DURATION * 10 + 4) / 10 + 25))
selected sizes && estimate=$((estimate - ${#PROBE_SIZES[@]} * ${#MAIN_TARGETS[@]} * (DURATION - PROBE)))
selected rss && estimate=$((estimate + ${#PROXIES[@]} * (HOLD + 3)))
echo "corelb bench: mode=$MODE tests=$ONLY duration=${DURATION}s rounds=$ROUNDS runs=$RUN_TOTAL (about $((estimate / 60)) min $((estimate % 60)) s); work dir $WORK" >&2

START_TIME=$(date +%s)
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || GIT_REV="$GIT_REV+dirty"

need_main=0
for t in throughput sizes latency rss backends algorithms; do selected "$t" && need_main=1; done

if ((need_main)); then
    echo "starting the origin (nginx, 1 worker, cpu $LOAD_CPUS) and the proxies (1 worker each, cpu $PROXY_CPUS)" >&2
    start_origin origin 1 "$LOAD_CPUS" "$PORT_ORIGIN" "$PORT_ORIGIN_STATUS" 100
    add_direct direct origin "$PORT_ORIGIN"
    start_corelb corelb "$WORKERS_PINNED" "$PROXY_CPUS" $((BASE + 11)) origin "$PORT_ORIGIN"
    start_nginx_proxy nginx "$WORKERS_PINNED" "$PROXY_CPUS" $((BASE + 12)) origin "$PORT_ORIGIN"
    start_haproxy haproxy "$WORKERS_PINNED" "$PROXY_CPUS" $((BASE + 13)) origin "$PORT_ORIGIN"
    "$PY" "$HERE/report.py" check "$WORK/www/size" \
        "direct=${PORT[direct]}" "corelb=${PORT[corelb]}" "nginx=${PORT[nginx]}" "haproxy=${PORT[haproxy]}" >&2
fi

if selected throughput || selected sizes || selected latency; then
    warmup 1 "$LOAD_CPUS" "${MAIN_TARGETS[@]}"
fi
if selected throughput; then
    for c in "${THROUGHPUT_CONNS[@]}"; do
        run_interleaved throughput "$c" / small 1 "$LOAD_CPUS" 0 "${MAIN_TARGETS[@]}"
    done
fi
if selected sizes; then
    # Stall probe: one connection per target and size. A healthy path does thousands of requests per second on
    # one connection; a 40 ms Nagle/delayed-ACK stall caps it at ~25.
    for s in "${PROBE_SIZES[@]}"; do
        for t in "${MAIN_TARGETS[@]}"; do
            measure stall "$t" 1 1 "/size/$s" "$s" "$PROBE" 1 "$LOAD_CPUS" 0
        done
    done
    # corelb-copy: corelb with splicing off, to show what splice(2) changes for large bodies.
    SPLICE=false start_corelb corelb-copy "$WORKERS_PINNED" "$PROXY_CPUS" $((BASE + 15)) origin "$PORT_ORIGIN"
    warmup 1 "$LOAD_CPUS" corelb-copy
    for ((round = 1; round <= ROUNDS; round++)); do
        for s in "${SIZES[@]}"; do
            for t in "${MAIN_TARGETS[@]}" corelb-copy; do
                measure sizes "$t" "$round" 50 "/size/$s" "$s" "$DURATION" 1 "$LOAD_CPUS" 0
            done
        done
    done
    stop_proc corelb-copy
fi
if selected latency; then
    run_interleaved latency "$LATENCY_CONNS" / small 1 "$LOAD_CPUS" "$LATENCY_PACE_MS" "${MAIN_TARGETS[@]}"
fi
if selected backends; then
    start_corelb corelb-100 "$WORKERS_PINNED" "$PROXY_CPUS" $((BASE + 14)) origin $(seq "$PORT_MANY" $((PORT_MANY + 99)))
    warmup 1 "$LOAD_CPUS" corelb corelb-100
    run_interleaved backends 50 / small 1 "$LOAD_CPUS" 0 corelb corelb-100
    stop_proc corelb-100
fi
if selected algorithms; then
    # Target names: algo-<algorithm>-<backends>. ip_hash and consistent_hash (by client address) send every wrk
    # connection, all from 127.0.0.1, to one backend: what is measured is the cost of the pick, not the spread.
    algo_targets=() algo_port=$((BASE + 30))
    for n in "${ALGO_BACKENDS[@]}"; do
        for a in "${ALGORITHMS[@]}"; do
            ALGORITHM=$a start_corelb "algo-$a-$n" "$WORKERS_PINNED" "$PROXY_CPUS" "$algo_port" origin \
                $(seq "$PORT_MANY" $((PORT_MANY + n - 1)))
            algo_targets+=("algo-$a-$n")
            algo_port=$((algo_port + 1))
        done
    done
    warmup 1 "$LOAD_CPUS" "${algo_targets[@]}"
    for c in "${ALGO_CONNS[@]}"; do
        targets=()
        for t in "${algo_targets[@]}"; do [[ $t == *-3 || $c == 50 ]] && targets+=("$t"); done
        run_interleaved algorithms "$c" / small 1 "$LOAD_CPUS" 0 "${targets[@]}"
    done
    for t in "${algo_targets[@]}"; do stop_proc "$t"; done
fi
if selected rss; then
    # Fresh processes, so the idle figure is a new proxy's and the peak is not memory kept from earlier tests.
    for t in "${PROXIES[@]}"; do
        stop_proc "$t"
        case $t in
            corelb) start_corelb corelb "$WORKERS_PINNED" "$PROXY_CPUS" $((BASE + 11)) origin "$PORT_ORIGIN" ;;
            nginx) start_nginx_proxy nginx "$WORKERS_PINNED" "$PROXY_CPUS" $((BASE + 12)) origin "$PORT_ORIGIN" ;;
            haproxy) start_haproxy haproxy "$WORKERS_PINNED" "$PROXY_CPUS" $((BASE + 13)) origin "$PORT_ORIGIN" ;;
        esac
        measure rss "$t" 1 "$RSS_CONNS" / small "$HOLD" 1 "$LOAD_CPUS" "$RSS_PACE_MS"
    done
fi
if ((need_main)); then
    for t in haproxy nginx corelb origin; do stop_proc "$t"; done
fi

if selected multicore; then
    echo "starting the multi-core set: origin, corelb and nginx with $WORKERS_MULTI workers each, unpinned" >&2
    start_origin origin-mc "$WORKERS_MULTI" "" "$PORT_ORIGIN_MC" "$PORT_ORIGIN_MC_STATUS" 0
    add_direct direct-2w origin-mc "$PORT_ORIGIN_MC"
    start_corelb corelb-2w "$WORKERS_MULTI" "" $((BASE + 21)) origin-mc "$PORT_ORIGIN_MC"
    start_nginx_proxy nginx-2w "$WORKERS_MULTI" "" $((BASE + 22)) origin-mc "$PORT_ORIGIN_MC"
    warmup 2 "" "${MC_TARGETS[@]}"
    for c in "${MC_CONNS[@]}"; do
        run_interleaved multicore "$c" / small 2 "" 0 "${MC_TARGETS[@]}"
    done
    for t in nginx-2w corelb-2w origin-mc; do stop_proc "$t"; done
fi

# ---------------------------------------------------------------------------------------------------------------
# Report

ELAPSED=$(($(date +%s) - START_TIME))
cat >"$WORK/meta.json" <<EOF
{
  "mode": "$MODE", "tests": "$ONLY", "duration_s": $DURATION, "rounds": $ROUNDS, "hold_s": $HOLD, "probe_s": $PROBE,
  "elapsed_s": $ELAPSED, "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "nproc": $NPROC, "cpu_model": "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)",
  "kernel": "$(uname -r)", "fd_limit": $FDLIMIT,
  "proxy_cpus": "$PROXY_CPUS", "load_cpus": "$LOAD_CPUS",
  "workers_pinned": $WORKERS_PINNED, "workers_multi": $WORKERS_MULTI,
  "latency_tool": "$LATENCY_TOOL", "latency_conns": $LATENCY_CONNS, "latency_pace_ms": $LATENCY_PACE_MS,
  "rss_conns": $RSS_CONNS, "rss_pace_ms": $RSS_PACE_MS, "stall_per_conn": $STALL_PER_CONN,
  "nginx_keepalive": $NGINX_KEEPALIVE, "corelb_rev": "$GIT_REV", "corelb_metrics": "$CORELB_METRICS",
  "corelb_binary": "$CORELB_ID",
  "versions": {
    "wrk": "$(wrk -v 2>&1 | head -n 1 | awk '{print $2}')",
    "nginx": "$(nginx -v 2>&1 | sed 's/.*nginx\///')",
    "haproxy": "$(haproxy -v 2>&1 | head -n 1 | awk '{print $3}')"
  }
}
EOF
mkdir -p "$OUT"
"$PY" "$HERE/report.py" report "$RESULTS" "$WORK/meta.json" "$OUT"
