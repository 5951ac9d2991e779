#!/usr/bin/env python3
"""Opens COUNT TLS connections to HOST:PORT, completes each handshake, and holds them all idle; writes the number
held to DONE_FILE once they are open, then sleeps until killed. For scripts/bench-tls.sh's memory per idle TLS
connection. Loopback only."""
import resource
import socket
import ssl
import sys
import time

host, port, count, done_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
context.minimum_version = ssl.TLSVersion.TLSv1_3
context.set_alpn_protocols(["http/1.1"])
held = []
deadline = time.time() + 300
for _ in range(count):
    if time.time() > deadline:
        break
    try:
        raw = socket.create_connection((host, port), timeout=10)
        held.append(context.wrap_socket(raw, server_hostname="localhost"))
    except OSError as error:
        print(f"tls-idle: stopped at {len(held)}: {error}", file=sys.stderr)
        break
with open(done_file, "w") as out:
    out.write(str(len(held)))
time.sleep(600)
