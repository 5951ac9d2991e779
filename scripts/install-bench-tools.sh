#!/usr/bin/env bash
# Installs the load generators and reference proxies the benchmark suite needs, from Debian packages:
# wrk, hey (if the distribution has it), nginx, haproxy, plus python3 for the report. Idempotent: anything already
# on PATH is skipped, and nothing is installed when everything is present.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }

have wrk || need+=(wrk)
have nginx || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
have haproxy || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
have python3 || need+=(python3)
have taskset || need+=(util-linux)
have pgrep || need+=(procps)

if ((${#need[@]} == 0)) && have hey; then
    echo "bench tools: all present" >&2
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
if ! have apt-get; then
    echo "bench tools: missing ${need[*]:-hey} and apt-get is not available; install them by hand" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
updated=0
apt_update() {
    if ((updated == 0)); then "${SUDO[@]}" apt-get update -qq; updated=1; fi
}

# hey is optional: only install it when the distribution carries it.
if ! have hey; then
    # (captured first: `grep -q` closing the pipe early would fail the pipeline under pipefail)
    hey_candidate() { local out; out=$(apt-cache policy hey 2>/dev/null || true); [[ $out == *"Candidate: "[0-9]* ]]; }
    hey_candidate || apt_update
    if hey_candidate; then
        need+=(hey)
    else
        echo "bench tools: package 'hey' not available; latency will be measured with wrk --latency" >&2
    fi
fi

if ((${#need[@]} > 0)); then
    apt_update
    echo "bench tools: installing ${need[*]}" >&2
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Debian nginx/haproxy packages start system services on install where an init system runs; the suite
# starts its own instances on other ports and never touches those.
echo "bench tools: ready ($(command -v wrk) $(command -v hey || echo 'no hey') $(command -v nginx || echo /usr/sbin/nginx) $(command -v haproxy || echo /usr/sbin/haproxy))" >&2
