# Shared by the benchmark scripts (sourced): a process's CPU time and resident memory, its children included.

cpu_ticks() {  # cpu_ticks PID: utime+stime of PID and its children (nginx's worker), in clock ticks
    local total=0 pid
    for pid in $1 $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{print $14+$15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

rss_kib() {  # rss_kib PID: resident memory of PID and its children, in KiB
    local total=0 pid
    for pid in $1 $(pgrep -P "$1" || true); do
        total=$((total + $(awk '/^VmRSS/{print $2}' "/proc/$pid/status")))
    done
    echo "$total"
}
