#!/usr/bin/env bash
# Builds monolake (cloudwego's io_uring proxy on monoio, TLS through monoio-rustls) from crates.io into
# target/bench-tools, for scripts/bench-tls.sh to measure beside corelb, nginx and HAProxy. Idempotent: nothing is
# done when the pinned version is already there. About 5 minutes on 2 cores the first time; needs libssl-dev and
# pkg-config (its native-tls feature links OpenSSL), installed here from Debian's packages when missing.
#   scripts/install-monolake.sh            prints the binary's path on stdout
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.0
SERVICES_VERSION=0.3.2
ROOT=$PWD/target/bench-tools
BIN=$ROOT/bin/monolake
if [[ -x $BIN && -f $ROOT/monolake-$VERSION ]]; then
    echo "$BIN"
    exit 0
fi
if ! dpkg -s libssl-dev pkg-config >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends libssl-dev pkg-config >/dev/null
fi
echo "install-monolake: building monolake $VERSION into $ROOT (a few minutes, once)" >&2
# Its sources come from the registry: a manifest that depends on it, fetched.
mkdir -p "$ROOT/fetch/src"
printf '[package]\nname = "fetch-monolake"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nmonolake-services = "=%s"\n[workspace]\n' \
    "$SERVICES_VERSION" >"$ROOT/fetch/Cargo.toml"
touch "$ROOT/fetch/src/lib.rs"
cargo fetch -q --manifest-path "$ROOT/fetch/Cargo.toml"
registry_src=$(cargo metadata -q --format-version 1 --manifest-path "$ROOT/fetch/Cargo.toml" |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "monolake-services"))')
# monolake-services uses one let chain, which today's compilers accept only in edition 2024: a patched copy
# spells it as two nested ifs.
services=$ROOT/monolake-services
rm -rf "$services"
cp -r "$(dirname "$registry_src")" "$services"
python3 - "$services/src/http/util.rs" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
chained = """        if this.accompany_slot.is_none()
            && let Poll::Ready(t) = this.accompany.poll(cx)
        {
            *this.accompany_slot = Some(t);
        }"""
nested = """        if this.accompany_slot.is_none() {
            if let Poll::Ready(t) = this.accompany.poll(cx) {
                *this.accompany_slot = Some(t);
            }
        }"""
assert chained in text, "install-monolake: monolake-services is not the version this patch was written for"
open(path, "w").write(text.replace(chained, nested))
PY
# monoio-http 0.3 and monolake-services use unstable features (`cell_leak`, `impl_trait_in_assoc_type`):
# RUSTC_BOOTSTRAP lets the stable compiler build them, as this machine has no nightly toolchain.
RUSTC_BOOTSTRAP=1 cargo install --locked --quiet monolake --version "$VERSION" --root "$ROOT" \
    --target-dir "$ROOT/build" --config "patch.crates-io.monolake-services.path='$services'" >&2
touch "$ROOT/monolake-$VERSION"
echo "$BIN"
