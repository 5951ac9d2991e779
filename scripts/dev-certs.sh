#!/usr/bin/env bash
# Makes the development CA and a certificate for localhost / 127.0.0.1 signed by it, for the HTTPS frontend of the
# repository's config.toml (port 8443): deploy/dev-certs/{ca.pem,server.pem,server.key}. Idempotent: does nothing
# while the certificate exists and has more than a day left. Private keys are made here, never committed
# (deploy/dev-certs is in .gitignore).
#
#   curl https://localhost:8443/ --cacert deploy/dev-certs/ca.pem
set -euo pipefail
cd "$(dirname "$0")/.."

dir=deploy/dev-certs
if [[ -f $dir/server.pem && -f $dir/server.key && -f $dir/ca.pem ]] &&
    openssl x509 -checkend 86400 -noout -in "$dir/server.pem" >/dev/null 2>&1; then
    exit 0
fi
command -v openssl >/dev/null 2>&1 || scripts/install-test-tools.sh

mkdir -p deploy
work=$(mktemp -d deploy/.dev-certs.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 825 -subj "/CN=corelb development CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out server.ec.key 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in server.ec.key -out server.key
openssl req -new -key server.key -subj "/CN=localhost" -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n' >ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 397 \
    -extfile ext.cnf -out server.pem 2>/dev/null
chmod 600 ca.key server.key
rm -f server.ec.key server.csr ext.cnf ca.srl
cd - >/dev/null
# Replaced whole, so a running corelb (or a concurrent run of this script) never sees half a set.
rm -rf "$dir.old"
[[ -d $dir ]] && mv "$dir" "$dir.old"
mv "$work" "$dir"
rm -rf "$dir.old"
trap - EXIT
echo "dev-certs: made $dir (CA: $dir/ca.pem)" >&2
