#!/usr/bin/env bash
# Starts the example backends on 127.0.0.1:9001-9003 and corelb on the repository's config.toml in the foreground.
# Ctrl-C (or corelb exiting) stops the backends too.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG="${CONFIG:-config.toml}"
BIN=target/release
if [[ ! -x "$BIN/corelb" || ! -x "$BIN/corelb-backend" ]]; then
    cargo build --release --bins
fi

scripts/dev-certs.sh

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for id in 1 2 3; do
    "$BIN/corelb-backend" --port "900$id" --id "$id" --quiet &
    pids+=("$!")
done

echo "example backends on 127.0.0.1:9001-9003; starting corelb on $CONFIG (try: curl http://127.0.0.1:8080/ or curl https://localhost:8443/ --cacert deploy/dev-certs/ca.pem)" >&2
"$BIN/corelb" run -c "$CONFIG" &
pids+=("$!")
wait "${pids[-1]}"
