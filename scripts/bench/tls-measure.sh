# Shared by scripts/bench-tls.sh and scripts/bench-tls-adapter.sh (sourced): the interleaved rounds, what one
# round measures of one subject, and the table. The caller defines start_subject NAME (starts it on CPU 0, sets
# SUBJECT_PID once its port answers) and stop_subject, and sets BENCH (its name), URL, PORT, SECONDS_PER_RUN,
# ROUNDS, CONNS and work.
# shellcheck source=proc.sh
source scripts/bench/proc.sh

measure() {  # measure NAME MODE: prints the subject's CPU µs per request (MODE keepalive or handshake)
    local name=$1 mode=$2 header=() before after output requests
    [[ $mode == handshake ]] && header=(-H "Connection: close")
    start_subject "$name"
    # Warm up (and for nginx, let the worker start) before counting.
    taskset -c 1 wrk -t1 -c50 -d1s "${header[@]}" "$URL" >/dev/null 2>&1
    before=$(cpu_ticks "$SUBJECT_PID")
    output=$(taskset -c 1 wrk -t1 -c50 -d"${SECONDS_PER_RUN}s" "${header[@]}" "$URL" 2>&1)
    after=$(cpu_ticks "$SUBJECT_PID")
    stop_subject
    # A subject that answers with errors would look cheap: say so beside the figure.
    if [[ $output == *"Non-2xx"* || $output == *"Socket errors"* ]]; then
        echo "$BENCH: $name $mode:$(echo "$output" | grep -E 'Non-2xx|Socket errors' | tr -s ' ' | tr '\n' ';')" >&2
    fi
    requests=$(echo "$output" | awk '/requests in/{print $1}')
    python3 -c "print(round(($after-$before)/$(getconf CLK_TCK)*1e6/max($requests,1), 2))"
}

idle_memory() {  # idle_memory NAME: prints the subject's RSS bytes per idle TLS connection, CONNS held
    local name=$1 before after held
    start_subject "$name"
    taskset -c 1 wrk -t1 -c10 -d1s "$URL" >/dev/null 2>&1
    before=$(rss_kib "$SUBJECT_PID")
    taskset -c 1 python3 scripts/bench/tls-idle.py 127.0.0.1 "$PORT" "$CONNS" "$work/held.$name" &
    local holder=$!
    for _ in $(seq 600); do [[ -f "$work/held.$name" ]] && break; sleep 0.1; done
    sleep 0.5
    after=$(rss_kib "$SUBJECT_PID")
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
    stop_subject
    held=$(cat "$work/held.$name" 2>/dev/null || echo 0)
    python3 -c "print(round(($after-$before)*1024/max($held,1)))"
}

declare -A keepalive handshake memory

run_rounds() {  # run_rounds NAME...: ROUNDS interleaved rounds of both modes over every subject
    local round name
    for round in $(seq "$ROUNDS"); do
        for name in "$@"; do
            keepalive[$name]+="$(measure "$name" keepalive) "
            handshake[$name]+="$(measure "$name" handshake) "
        done
        echo "$BENCH: round $round done" >&2
    done
}

print_table() {  # print_table TITLE KIND BASELINE NAME...: medians and ratios (memory[NAME] set by the caller)
    local title=$1 kind=$2 baseline=$3 subjects=() name keep new
    shift 3
    for name in "$@"; do
        keep=${keepalive[$name]% } new=${handshake[$name]% }
        subjects+=("$name:${keep// /,}:${new// /,}:${memory[$name]}")
    done
    python3 scripts/bench/median-table.py "$title; $ROUNDS interleaved rounds of ${SECONDS_PER_RUN}s" "$kind" \
        "$baseline" "$CONNS" "${subjects[@]}"
}
