#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, idempotently: promtool (Debian's prometheus
# package), which checks the /metrics output, openssl for the development certificates, and a C compiler for the resolver shim of tests/control.rs. Run by `make test`; does nothing when everything is present.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# A C compiler builds the resolver shim with which a test makes a DNS lookup hang (tests/control.rs).
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
# openssl makes the development CA and certificate of `make run` (scripts/dev-certs.sh), which the repository's
# config.toml names and tests/cli.rs checks.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
    echo "install-test-tools: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
fi
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO=sudo
echo "install-test-tools: installing ${missing[*]}" >&2
# Never start the packaged services: we only want the binaries.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [[ $created_policy -eq 1 ]]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v promtool >/dev/null 2>&1
