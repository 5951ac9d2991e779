#!/usr/bin/env python3
"""Helpers of scripts/run-benchmarks.sh (python3 standard library only).

  report.py check SIZE_DIR NAME=PORT...        every target answers 200 with the right body for / and /size/*
  report.py progress N TOTAL JSON_LINE         one progress line for a finished run
  report.py procsnap FILE                      CPU ticks of every process (before a run)
  report.py record RUN.json SNAP RESULTS N TOTAL  add other processes' CPU, append to RESULTS, print progress
  report.py hey-csv FILE DURATION              hey -o csv output -> the JSON the wrk script prints
  report.py report RESULTS.jsonl META.json OUT  medians, min/max, ratios -> OUT/{report.md,chart.svg,results.json}
"""

import json
import os
import statistics
import sys
import urllib.request
from html import escape

PROXIES = ["corelb", "nginx", "haproxy"]
MAIN = ["direct", "corelb", "nginx", "haproxy"]
MULTI = ["direct-2w", "corelb-2w", "nginx-2w"]
SIZES = ["0", "1k", "16k", "256k"]
UNPACED = {"throughput", "sizes", "backends", "algorithms", "multicore"}
ALGORITHMS = ["round_robin", "weighted_round_robin", "least_connections", "power_of_two", "random",
              "least_response_time", "ip_hash", "consistent_hash"]


# --------------------------------------------------------------------------------------------------------------
# Per-run figures


def derive(r):
    """Adds rps, cpu_us (per request), errors, per_conn to one result line."""
    w = r["wrk"]
    secs = w["duration_us"] / 1e6 if w["duration_us"] else 0
    req = w["requests"]
    r["rps"] = req / secs if secs else 0.0
    r["per_conn"] = r["rps"] / r["conns"] if r["conns"] else 0.0
    if r.get("cpu_ticks") is not None and req:
        r["cpu_us"] = r["cpu_ticks"] / r["clk_tck"] / req * 1e6
    else:
        r["cpu_us"] = None
    r["origin_cpu_us"] = r["origin_cpu_ticks"] / r["clk_tck"] / req * 1e6 if req else None
    # CPU used by anything other than the proxy, the origin and the load generator (another workload on the
    # machine), and steal time, as a share of all CPUs over the run: a noise indicator.
    tck = r["clk_tck"]
    capacity = secs * tck * META.get("nproc", 1)
    if capacity and "sys_busy_ticks" in r:
        mine = ((r.get("cpu_ticks") or 0) + r["origin_cpu_ticks"] + r["loadgen_cpu_ms"] * tck / 1000
                + r.get("procs", {}).get("softirqd_ticks", 0))
        r["other_pct"] = max(0.0, (r["sys_busy_ticks"] - mine) / capacity * 100)
        r["steal_pct"] = r["sys_steal_ticks"] / capacity * 100
        r["loadgen_cpu_us"] = r["loadgen_cpu_ms"] * 1000 / req if req else None
    else:
        r["other_pct"] = r["steal_pct"] = 0.0
        r["loadgen_cpu_us"] = None
    r["socket_errors"] = w["err_connect"] + w["err_read"] + w["err_write"] + w["err_timeout"]
    r["non2xx"] = w["err_status"]
    r["errors"] = r["socket_errors"] + r["non2xx"]
    r["failed"] = bool(w.get("failed")) or req == 0
    return r


def top_others(r):
    top = r.get("procs", {}).get("other_top") or []
    return (": " + ", ".join(f"{c} {t / r['clk_tck']:.1f}s" for c, t in top)) if top else ""


def cmd_progress(n, total, line):
    r = derive(json.loads(line))
    cpu = f"{r['cpu_us']:.1f} us/req CPU" if r["cpu_us"] is not None else "CPU n/a"
    extra = ""
    if r["test"] == "latency":
        w = r["wrk"]
        extra = f", p50 {w['lat_p50_us']} us p99 {w['lat_p99_us']} us p99.9 {w['lat_p999_us']} us"
    if r["test"] == "rss":
        extra = f", RSS idle {r['rss_idle_kib'] / 1024:.1f} MiB peak {r['rss_peak_kib'] / 1024:.1f} MiB"
    err = f", ERRORS {r['socket_errors']} socket / {r['non2xx']} non-2xx" if r["errors"] else ""
    if r["other_pct"] >= NOISE_PCT:
        err += f", NOISY (other processes {r['other_pct']:.0f}%{top_others(r)})"
    print(f"[{n}/{total}] {r['test']:<10} {r['target']:<10} c={r['conns']:<5} {r['size']:>5} round {r['round']}: "
          f"{r['rps']:>9.0f} req/s, {cpu}{extra}{err}")


def cmd_check(size_dir, targets):
    expected = {"/size/" + s: os.path.getsize(os.path.join(size_dir, s)) for s in SIZES}
    ok = True
    for spec in targets:
        name, port = spec.split("=")
        for path in ["/"] + list(expected):
            url = f"http://127.0.0.1:{port}{path}"
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    body = resp.read()
                    status = resp.status
            except Exception as e:  # noqa: BLE001 - report any failure
                print(f"check: {name} {url}: {e}")
                ok = False
                continue
            want = expected.get(path)
            if status != 200 or (want is not None and len(body) != want):
                print(f"check: {name} {url}: status {status}, {len(body)} bytes (want 200, {want} bytes)")
                ok = False
    print("check: every target answers / and /size/{0,1k,16k,256k} correctly" if ok else "check: FAILED")
    sys.exit(0 if ok else 1)


def proc_ticks():
    """{pid: (comm, utime+stime)} for every process on the machine."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        lp, rp = data.find("("), data.rfind(")")
        fields = data[rp + 2:].split()
        out[int(name)] = (data[lp + 1:rp], int(fields[11]) + int(fields[12]))
    return out


def cmd_procsnap(path):
    with open(path, "w") as f:
        json.dump(proc_ticks(), f)


# The benchmark's own processes; anything else that used CPU during a run is another workload on the machine.
OWN_COMMS = {"nginx", "haproxy", "corelb", "wrk", "hey", "timeout", "taskset", "python3", "curl", "bash", "sleep",
             "cat", "sed", "tail", "pgrep", "mapfile"}


def procdiff(path):
    """Processes other than the benchmark's own that used CPU since the snapshot (ticks, top 3), and ksoftirqd."""
    with open(path) as f:
        before = {int(k): v for k, v in json.load(f).items()}
    after = proc_ticks()
    softirqd, others = 0, {}
    for pid, (comm, ticks) in after.items():
        delta = ticks - (before[pid][1] if pid in before else 0)
        if delta <= 0:
            continue
        if comm.startswith("kworker/"):
            comm = "kworker"  # their names carry the current work item
        if comm.startswith("ksoftirqd/"):
            softirqd += delta
        elif comm not in OWN_COMMS and not comm.startswith("corelb"):
            others[comm] = others.get(comm, 0) + delta
    # at least a tenth of a second
    top = [kv for kv in sorted(others.items(), key=lambda kv: -kv[1])[:3] if kv[1] >= os.sysconf("SC_CLK_TCK") / 10]
    return {"softirqd_ticks": softirqd, "other_top": top}


def cmd_record(run_path, snap_path, results_path, n, total):
    with open(run_path) as f:
        r = json.load(f)
    r["procs"] = procdiff(snap_path)
    with open(results_path, "a") as f:
        f.write(json.dumps(r) + "\n")
    cmd_progress(n, total, json.dumps(r))


def cmd_hey_csv(path, duration):
    times, bad = [], 0
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 7 or parts[0] == "response-time":
                continue
            try:
                times.append(float(parts[0]) * 1e6)
                if not parts[6].startswith("2"):
                    bad += 1
            except ValueError:
                continue
    times.sort()

    def pct(p):
        if not times:
            return 0
        return int(times[min(len(times) - 1, int(len(times) * p / 100))])

    print(json.dumps({
        "requests": len(times), "duration_us": int(float(duration) * 1e6), "bytes": 0,
        "err_connect": 0, "err_read": 0, "err_write": 0, "err_status": bad, "err_timeout": 0,
        "lat_p50_us": pct(50), "lat_p99_us": pct(99), "lat_p999_us": pct(99.9),
        "lat_max_us": int(times[-1]) if times else 0,
        "lat_mean_us": statistics.fmean(times) if times else 0,
    }))


# --------------------------------------------------------------------------------------------------------------
# Aggregation


def stat(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def aggregate(runs):
    groups = {}
    for r in runs:
        if r["test"] == "warmup":
            continue
        groups.setdefault((r["test"], r["conns"], r["size"], r["target"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        test, conns, _size, _target = key
        g = {
            "rps": stat([r["rps"] for r in rs]),
            "cpu_us": stat([r["cpu_us"] for r in rs]),
            "origin_cpu_us": stat([r["origin_cpu_us"] for r in rs]),
            "per_conn": stat([r["per_conn"] for r in rs]),
            "p50": stat([r["wrk"]["lat_p50_us"] for r in rs]),
            "p99": stat([r["wrk"]["lat_p99_us"] for r in rs]),
            "p999": stat([r["wrk"]["lat_p999_us"] for r in rs]),
            "rss_idle_kib": stat([r["rss_idle_kib"] for r in rs]),
            "rss_peak_kib": stat([r["rss_peak_kib"] for r in rs]),
            "upstream_connects": stat([r["origin_accepts"] for r in rs]),
            "requests": sum(r["wrk"]["requests"] for r in rs),
            "socket_errors": sum(r["socket_errors"] for r in rs),
            "non2xx": sum(r["non2xx"] for r in rs),
            "err_detail": {k: sum(r["wrk"][k] for r in rs)
                           for k in ("err_connect", "err_read", "err_write", "err_timeout", "err_status")},
            "failed_runs": sum(1 for r in rs if r["failed"]),
            "other_pct": stat([r["other_pct"] for r in rs]),
            "steal_pct": stat([r["steal_pct"] for r in rs]),
            "loadgen_cpu_us": stat([r["loadgen_cpu_us"] for r in rs]),
            "other_top": sorted({c for r in rs if r["other_pct"] >= NOISE_PCT
                                 for c, _t in r.get("procs", {}).get("other_top", [])}),
        }
        out[key] = g
    # A 40 ms Nagle/delayed-ACK stall caps a connection at ~25 req/s. The single-connection probe ("stall") is the
    # clean reading. Unpaced runs at <= 50 connections below the threshold are STALLED too unless the probe of the
    # same target and body shows the path is fast (then the many-connection run is bandwidth-bound, not stalled).
    # At 1,000 connections 100 req/s each would be 100k req/s in total, so those are not judged.
    limit = META.get("stall_per_conn", 100)
    for key, g in out.items():
        test, conns, size, target = key
        g["stalled"] = False
        g["slow_note"] = None
        if not g["per_conn"] or g["failed_runs"]:
            continue
        if test == "stall":
            g["stalled"] = g["per_conn"]["median"] < limit
        elif test in UNPACED and conns <= 50 and g["per_conn"]["median"] < limit:
            probe = out.get(("stall", 1, size, target))
            if probe and probe["per_conn"] and probe["per_conn"]["median"] >= limit:
                g["slow_note"] = (f"{g['per_conn']['median']:.0f} req/s per conn: bandwidth-bound, not a stall "
                                  f"(1-connection probe: {probe['per_conn']['median']:,.0f} req/s)")
            else:
                g["stalled"] = True
    return out


META = {"nproc": os.cpu_count() or 1}
NOISE_PCT = 15  # other processes (or steal) above this share of the machine during a run: flagged as noisy


def fmt_num(v, digits=0):
    if v is None:
        return "n/a"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def fmt_stat(s, digits=0, scale=1.0):
    if not s:
        return "n/a"
    return (f"{fmt_num(s['median'] * scale, digits)} ({fmt_num(s['min'] * scale, digits)}–"
            f"{fmt_num(s['max'] * scale, digits)})")


def ratio(a, b):
    if not a or not b or not b["median"]:
        return None
    return a["median"] / b["median"]


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.2f}"


# --------------------------------------------------------------------------------------------------------------
# SVG chart


def svg_chart(agg):
    rows = []  # (label, rps50, rps1000, cpu50, cpu1000)
    for test, targets in (("throughput", MAIN), ("multicore", MULTI)):
        for t in targets:
            a = agg.get((test, 50, "small", t))
            b = agg.get((test, 1000, "small", t))
            if not a and not b:
                continue
            label = t if test == "throughput" else t + " (unpinned)"
            rows.append((label, a and a["rps"], b and b["rps"], a and a["cpu_us"], b and b["cpu_us"]))
    if not rows:
        return None
    W, row_h, top, left, panel_w, gap = 1000, 44, 84, 170, 340, 80
    H = top + row_h * len(rows) + 50
    colors = {"c50": "#4e79a7", "c1000": "#f28e2b"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             '<text x="10" y="20" font-size="15" font-weight="bold">corelb benchmark: throughput and CPU per '
             'request (median, whiskers min–max)</text>']

    def nice_axis(vmax):
        """A round axis maximum and step (1, 2 or 5 times a power of ten, 3 to 6 ticks)."""
        import math
        raw = vmax / 4 if vmax > 0 else 1
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
        return step * math.ceil(vmax / step), step

    def panel(x0, title, idx_a, idx_b, unit):
        vmax, step = nice_axis(max([s["max"] for r in rows for s in (r[idx_a], r[idx_b]) if s] + [1e-9]))
        bottom = top + row_h * len(rows)
        out = [f'<text x="{x0}" y="{top - 16}" font-weight="bold">{escape(title)}</text>']
        v = 0.0
        while v <= vmax + step / 1000:
            x = x0 + panel_w * v / vmax
            out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>')
            out.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle" fill="#555">'
                       f'{v:,.{0 if step >= 1 else 1}f}</text>')
            v += step
        out.append(f'<text x="{x0 + panel_w / 2}" y="{bottom + 30}" text-anchor="middle" '
                   f'fill="#555">{escape(unit)}</text>')
        for ri, r in enumerate(rows):
            for j, (idx, key) in enumerate(((idx_a, "c50"), (idx_b, "c1000"))):
                s = r[idx]
                y = top + ri * row_h + 4 + j * 17
                if not s:
                    out.append(f'<text x="{x0 + 4}" y="{y + 11}" fill="#999">n/a</text>')
                    continue
                w = panel_w * s["median"] / vmax
                out.append(f'<rect x="{x0}" y="{y}" width="{w:.1f}" height="14" fill="{colors[key]}"/>')
                x1, x2 = x0 + panel_w * s["min"] / vmax, x0 + panel_w * s["max"] / vmax
                out.append(f'<line x1="{x1:.1f}" y1="{y + 7}" x2="{x2:.1f}" y2="{y + 7}" stroke="black"/>')
                out.append(f'<line x1="{x1:.1f}" y1="{y + 3}" x2="{x1:.1f}" y2="{y + 11}" stroke="black"/>')
                out.append(f'<line x1="{x2:.1f}" y1="{y + 3}" x2="{x2:.1f}" y2="{y + 11}" stroke="black"/>')
                digits = 0 if s["median"] >= 100 else 1
                label = f"{s['median']:,.{digits}f}"
                lx = max(x0 + w, x2) + 4
                if lx + 7 * len(label) <= x0 + panel_w + gap - 6:
                    out.append(f'<text x="{lx:.1f}" y="{y + 11}">{label}</text>')
                else:
                    out.append(f'<text x="{x0 + w - 4:.1f}" y="{y + 11}" text-anchor="end" fill="white">'
                               f'{label}</text>')
        return out

    for ri, r in enumerate(rows):
        parts.append(f'<text x="{left - 8}" y="{top + ri * row_h + 24}" text-anchor="end">{escape(r[0])}</text>')
    parts += panel(left, "throughput (req/s, higher is better)", 1, 2, "requests per second")
    parts += panel(left + panel_w + gap, "proxy CPU per request (µs, lower is better)", 3, 4,
                   "CPU microseconds per request (user+system)")
    lx = 10
    for key, label in (("c50", "50 connections"), ("c1000", "1,000 connections")):
        parts.append(f'<rect x="{lx}" y="30" width="12" height="12" fill="{colors[key]}"/>')
        parts.append(f'<text x="{lx + 16}" y="40">{label}</text>')
        lx += 140
    parts.append(f'<text x="{lx + 10}" y="40" fill="#555">pinned: 1 worker on CPU 0, wrk and origin on CPU 1; '
                 f'"(unpinned)": 2 workers</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------------------
# Markdown report


def cmd_report(results_path, meta_path, out_dir):
    global META
    with open(meta_path) as f:
        META = json.load(f)
    with open(results_path) as f:
        runs = [derive(json.loads(line)) for line in f if line.strip()]
    agg = aggregate(runs)
    m = META
    L = []
    p = L.append
    stalled = []
    flagged_errors = []
    noisy = []

    p("# corelb benchmark report")
    p("")
    p(f"Generated {m['date']} by `scripts/run-benchmarks.sh` ({m['mode']} mode, tests: {m['tests']}; "
      f"{m['duration_s']} s per run, {m['rounds']} interleaved rounds, {m['elapsed_s']} s in total). "
      f"corelb revision `{m['corelb_rev']}` (binary {m.get('corelb_binary', '?')}; metrics "
      f"{m.get('corelb_metrics', '?')}).")
    p("")
    p("## Machine and method")
    p("")
    p(f"- Machine: {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, open-file limit {m['fd_limit']}.")
    p(f"- Tools: wrk {m['versions']['wrk']}, nginx {m['versions']['nginx']}, HAProxy {m['versions']['haproxy']}.")
    p(f"- Pinned runs: every proxy runs {m['workers_pinned']} worker pinned to CPU {m['proxy_cpus']} "
      f"(`taskset -c {m['proxy_cpus']}`); the load generator (`wrk -t1`) and the origin (nginx, 1 worker) share "
      f"CPU {m['load_cpus']}. \"direct\" is wrk hitting the origin itself, the ceiling; note that in it wrk and "
      f"the origin share one CPU and nothing runs on the other.")
    p(f"- Multi-core runs: corelb and nginx with {m['workers_multi']} workers each, a {m['workers_multi']}-worker "
      f"origin and `wrk -t2`, nothing pinned.")
    p("- Same origin, same worker count and upstream keep-alive for every proxy: corelb "
      "`max_idle_per_backend = 1024`; nginx `upstream { keepalive "
      f"{m['nginx_keepalive']}; }}`, `proxy_http_version 1.1`, `proxy_set_header Connection \"\"`, "
      "16 KiB proxy buffers, no temp files; HAProxy `mode http`, `http-reuse always`, `nbthread` = workers. "
      "Origin: nginx `return 200` (20-byte body) for `/` and static files of 0, 1 KiB, 16 KiB and 256 KiB. "
      "\"new upstream conns per run\" counts the connections the origin accepted during a run (its "
      "`stub_status`): 0 means every request reused a pooled connection; nginx's `keepalive "
      f"{m['nginx_keepalive']}` cache reopens connections once more than {m['nginx_keepalive']} are in flight.")
    p("- Each measurement runs the targets interleaved (A B C D, A B C D, ...) and reports the median with "
      "(min–max) over the rounds. CPU per request is the utime+stime of all the proxy's processes and threads "
      "(`/proc/PID/stat`; nginx: master + workers) over the run, divided by the requests completed.")
    lat_how = (f"wrk with {m['latency_conns']} connections, each pausing ~{m['latency_pace_ms']} ms between "
               f"requests (about {m['latency_conns'] * 1000 // m['latency_pace_ms']:,} req/s in total, far below "
               "every target's capacity); percentiles from wrk's microsecond histogram") \
        if m["latency_tool"] == "wrk" else \
        (f"hey -c {m['latency_conns']} -q {1000 // m['latency_pace_ms']} (0.1 ms resolution)")
    p(f"- Latency at a fixed moderate rate: {lat_how}. (hey's percentiles have 0.1 ms resolution and no p99.9, "
      "too coarse for loopback latencies of ~100 µs, so paced wrk is the default.)")
    p(f"- Memory: peak RSS (VmRSS summed over the proxy's processes, sampled every 0.2 s) of a freshly started "
      f"proxy while wrk holds {m['rss_conns']:,} keep-alive connections, each sending ~1 request every "
      f"{m['rss_pace_ms']} ms, for {m['hold_s']} s; one round.")
    p(f"- Stalls: a 40 ms Nagle/delayed-ACK stall shows as ~25 req/s per connection. A single-connection probe "
      f"per target and body size below {m['stall_per_conn']} req/s is STALLED; so is an unpaced run at ≤ 50 "
      f"connections below {m['stall_per_conn']} req/s per connection unless the probe shows that path is fast "
      "(then it is bandwidth-bound, and says so).")
    p(f"- Noise: CPU that neither the proxy, the origin, the load generator nor ksoftirqd used during a run "
      f"(from `/proc/stat`), and steal time, ≥ {NOISE_PCT}% of the machine marks the run noisy and names the "
      "busiest other processes.")
    p(f"- **On a {m['nproc']}-CPU machine the load generator, the origin and the proxy share cores, so the "
      "ratios between targets, not the absolute numbers, are the result.**")
    p("")

    # ---- ratios
    ratio_rows = []

    def add_ratio(label, test, conns, size, a="corelb", b=("nginx", "haproxy")):
        A = agg.get((test, conns, size, a))
        if not A:
            return
        Bn, Bh = agg.get((test, conns, size, b[0])), agg.get((test, conns, size, b[1])) if len(b) > 1 else None
        D = agg.get((test, conns, size, "direct" if test != "multicore" else "direct-2w"))
        ratio_rows.append((label,
                           ratio(A["rps"], Bn and Bn["rps"]), ratio(A["rps"], Bh and Bh["rps"]),
                           ratio(A["cpu_us"], Bn and Bn["cpu_us"]), ratio(A["cpu_us"], Bh and Bh["cpu_us"]),
                           ratio(A["rps"], D and D["rps"])))

    for c in (50, 1000):
        add_ratio(f"throughput, {c} conns", "throughput", c, "small")
    for s in SIZES:
        add_ratio(f"body {s}, 50 conns", "sizes", 50, s)
    for s in SIZES:
        add_ratio(f"body {s}, 50 conns, corelb-copy (splicing off)", "sizes", 50, s, "corelb-copy")
    for c in (50, 1000):
        add_ratio(f"2 workers unpinned, {c} conns", "multicore", c, "small", "corelb-2w", ("nginx-2w",))
    if ratio_rows:
        p("## Ratios (corelb relative to nginx and HAProxy)")
        p("")
        p("Throughput ratio > 1: corelb serves more requests per second. CPU ratio < 1: corelb spends less CPU "
          "per request.")
        p("")
        p("| run | req/s corelb/nginx | req/s corelb/HAProxy | CPU/req corelb/nginx | CPU/req corelb/HAProxy | "
          "req/s corelb/direct |")
        p("|---|---|---|---|---|---|")
        for r in ratio_rows:
            p(f"| {r[0]} | " + " | ".join(fmt_ratio(x) for x in r[1:]) + " |")
        p("")

    def target_rows(test, conns, size, targets):
        rows = []
        for t in targets:
            g = agg.get((test, conns, size, t))
            if not g:
                continue
            flag = []
            if g["stalled"]:
                flag.append("**STALLED**")
                stalled.append(f"{t} {test} c={conns} size={size}: {g['per_conn']['median']:.0f} req/s per conn")
            if g["socket_errors"] or g["non2xx"]:
                flag.append(f"**{g['socket_errors']} socket errors, {g['non2xx']} non-2xx**")
                flagged_errors.append(f"{t} {test} c={conns} size={size}: {g['err_detail']}")
            if g["failed_runs"]:
                flag.append(f"**{g['failed_runs']} failed runs**")
            if g["slow_note"]:
                flag.append(g["slow_note"])
            if g["other_pct"] and g["other_pct"]["max"] >= NOISE_PCT:
                who = f" ({', '.join(g['other_top'])})" if g["other_top"] else ""
                flag.append(f"noisy: other processes{who} used up to {g['other_pct']['max']:.0f}% of the machine")
                noisy.append(f"{t} {test} c={conns} size={size}: {g['other_pct']['max']:.0f}%{who}")
            if g["steal_pct"] and g["steal_pct"]["max"] >= NOISE_PCT:
                flag.append(f"steal up to {g['steal_pct']['max']:.0f}%")
                noisy.append(f"{t} {test} c={conns} size={size}: steal {g['steal_pct']['max']:.0f}%")
            rows.append((t, g, ", ".join(flag) or "ok"))
        return rows

    def throughput_table(title, test, conns_list, sizes, targets, intro=None):
        body = []
        for c in conns_list:
            for s in sizes:
                for t, g, flag in target_rows(test, c, s, targets):
                    up = g["upstream_connects"]
                    body.append(f"| {t} | {c} | {s} | {fmt_stat(g['rps'])} | {fmt_stat(g['cpu_us'], 1)} | "
                                f"{fmt_num(g['per_conn']['median'])} | "
                                f"{fmt_num(up['median']) if up and t.startswith(('corelb', 'nginx', 'haproxy')) else '–'}"
                                f" | {flag} |")
        if not body:
            return
        p(f"## {title}")
        p("")
        if intro:
            p(intro)
            p("")
        p("| target | conns | body | req/s median (min–max) | proxy CPU µs/req median (min–max) | "
          "req/s per conn | new upstream conns per run | status |")
        p("|---|---|---|---|---|---|---|---|")
        L.extend(body)
        p("")

    throughput_table("Throughput (keep-alive, `wrk -t1`)", "throughput", (50, 1000), ("small",), MAIN)
    throughput_table("Body sizes (50 connections)", "sizes", (50,), SIZES, MAIN + ["corelb-copy"],
                     "corelb moves what is left of a body after its first read with `splice(2)` when 16 KiB or "
                     "more remain (`server.splice_bodies`, on by default); `corelb-copy` is the same corelb with it "
                     "off. The origin here serves files with `sendfile`, so a spliced body goes from the page cache "
                     "to the client's socket without a copy in between.")

    body = []
    for s in SIZES:
        cells = []
        for t in MAIN:
            g = agg.get(("stall", 1, s, t))
            if not g:
                cells.append("–")
                continue
            v = g["per_conn"]["median"] if g["per_conn"] else 0
            cell = f"{v:,.0f}"
            if g["stalled"]:
                cell = f"**{cell} STALLED**"
                stalled.append(f"{t} body {s}: {v:.0f} req/s on one connection")
            elif g["socket_errors"] or g["non2xx"] or g["failed_runs"]:
                cell += " (errors)"
                flagged_errors.append(f"{t} stall probe body {s}: {g['err_detail']}")
            cells.append(cell)
        if any(c != "–" for c in cells):
            body.append(f"| {s} | " + " | ".join(cells) + " |")
    if body:
        p("## Stall probe (one connection, req/s)")
        p("")
        p(f"`wrk -t1 -c1` for {m.get('probe_s', '?')} s per target and body size. A 40 ms Nagle/delayed-ACK "
          f"stall would show as ~25; below {m['stall_per_conn']} is flagged STALLED.")
        p("")
        p("| body | " + " | ".join(MAIN) + " |")
        p("|---|" + "---|" * len(MAIN))
        L.extend(body)
        p("")

    body = []
    for t, g, flag in target_rows("latency", m["latency_conns"], "small", MAIN):
        body.append(f"| {t} | {fmt_stat(g['rps'])} | {fmt_stat(g['p50'])} | {fmt_stat(g['p99'])} | "
                    f"{fmt_stat(g['p999'])} | {fmt_stat(g['cpu_us'], 1)} | {flag} |")
    if body:
        p("## Latency at a fixed moderate rate")
        p("")
        p("| target | req/s achieved | p50 µs | p99 µs | p99.9 µs | proxy CPU µs/req | status |")
        p("|---|---|---|---|---|---|---|")
        L.extend(body)
        p("")

    body = []
    for t in PROXIES:
        g = agg.get(("rss", m["rss_conns"], "small", t))
        if not g:
            continue
        idle, peak = g["rss_idle_kib"]["median"], g["rss_peak_kib"]["median"]
        e = g["err_detail"]
        errs = (f"connect {e['err_connect']}, read {e['err_read']}, write {e['err_write']}, "
                f"timeout {e['err_timeout']}, non-2xx {e['err_status']}")
        if g["socket_errors"] or g["non2xx"]:
            flagged_errors.append(f"{t} rss c={m['rss_conns']}: {e}")
            errs = f"**{errs}**"
        body.append(f"| {t} | {idle / 1024:.1f} | {peak / 1024:.1f} | {(peak - idle) / m['rss_conns']:.1f} | "
                    f"{fmt_num(g['requests'])} | {errs} |")
    if body:
        p(f"## Memory while holding {m['rss_conns']:,} keep-alive connections")
        p("")
        p("| proxy | idle RSS MiB | peak RSS MiB | KiB per connection | requests | wrk errors |")
        p("|---|---|---|---|---|---|")
        L.extend(body)
        p("")

    throughput_table("Backend selection cost: corelb with 1 vs 100 backends (50 connections)", "backends", (50,),
                     ("small",), ["corelb", "corelb-100"],
                     "`corelb-100` has 100 `[[backends]]` (round robin), all ports of the same origin nginx.")
    one, hundred = agg.get(("backends", 50, "small", "corelb")), agg.get(("backends", 50, "small", "corelb-100"))
    if one and hundred:
        p(f"100 backends / 1 backend: req/s ratio {fmt_ratio(ratio(hundred['rps'], one['rps']))}, "
          f"CPU per request ratio {fmt_ratio(ratio(hundred['cpu_us'], one['cpu_us']))}.")
        p("")
    algorithms_tables(agg, p, target_rows)
    throughput_table("Multi-core (2 workers each, unpinned, `wrk -t2`)", "multicore", (50, 1000), ("small",), MULTI)

    p("## Flags")
    p("")
    p("- Stalls: " + ("; ".join(stalled) if stalled else "none (every run ≥ "
                      f"{m['stall_per_conn']} req/s per connection where checked)."))
    p("- Errors: " + ("; ".join(flagged_errors) if flagged_errors else "none."))
    p("- Noisy runs: " + ("; ".join(noisy) if noisy else "none."))
    p("")
    p("![throughput and CPU per request](chart.svg)")
    p("")

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(L))
    svg = svg_chart(agg)
    if svg:
        with open(os.path.join(out_dir, "chart.svg"), "w") as f:
            f.write(svg)
    summary = [{"test": k[0], "conns": k[1], "size": k[2], "target": k[3], **v} for k, v in sorted(agg.items())]
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"meta": m, "summary": summary, "runs": runs}, f, indent=1)

    # ---- console summary
    print()
    if ratio_rows:
        print(f"{'corelb ratios (median)':<32} {'rps/nginx':>10} {'rps/haproxy':>12} {'cpu/nginx':>10} "
              f"{'cpu/haproxy':>12} {'rps/direct':>11}")
        for r in ratio_rows:
            print(f"{r[0]:<32} " + " ".join(f"{fmt_ratio(x):>{w}}" for x, w in zip(r[1:], (10, 12, 10, 12, 11))))
    for t in PROXIES:
        g = agg.get(("rss", m["rss_conns"], "small", t))
        if g:
            print(f"{t:<8} at {m['rss_conns']:,} conns: peak RSS {g['rss_peak_kib']['median'] / 1024:.1f} MiB "
                  f"(idle {g['rss_idle_kib']['median'] / 1024:.1f}), errors: {g['socket_errors']} socket, "
                  f"{g['non2xx']} non-2xx")
    if one and hundred:
        print(f"corelb 100 backends / 1 backend: req/s {fmt_ratio(ratio(hundred['rps'], one['rps']))}, "
              f"CPU/req {fmt_ratio(ratio(hundred['cpu_us'], one['cpu_us']))}")
    print("stalls: " + ("; ".join(stalled) if stalled else "none"))
    print("errors: " + ("; ".join(flagged_errors) if flagged_errors else "none"))
    print("noise: " + ("; ".join(noisy) if noisy else "none"))
    print(f"report: {os.path.join(out_dir, 'report.md')} (chart.svg, results.json)")


def algorithms_tables(agg, p, target_rows):
    """CPU per request of each balancing algorithm at 3 and 50 backends against round-robin's, and req/s by
    concurrency at 3 backends (the `algorithms` test)."""
    def cell(conns, algorithm, backends):
        return agg.get(("algorithms", conns, "small", f"algo-{algorithm}-{backends}"))

    base = {n: cell(50, "round_robin", n) for n in (3, 50)}
    rows = []
    for algorithm in ALGORITHMS:
        cells = []
        for n in (3, 50):
            g = cell(50, algorithm, n)
            if not g:
                cells += ["–", "–"]
                continue
            cells.append(fmt_stat(g["cpu_us"], 2))
            cells.append(fmt_ratio(ratio(g["cpu_us"], base[n]["cpu_us"])) if base[n] else "–")
        if any(c != "–" for c in cells):
            rows.append(f"| {algorithm} | " + " | ".join(cells) + " |")
    if not rows:
        return
    p("## Balancing algorithms: CPU per request (50 connections, 1 worker)")
    p("")
    p("One corelb per algorithm, all interleaved in each round; the backends are ports of the same origin nginx. "
      "`ip_hash` and `consistent_hash` hash the client address, so all of wrk's connections (from 127.0.0.1) go to "
      "one backend: the figure is the pick's cost, not the spread.")
    p("")
    p("| algorithm | 3 backends: CPU µs/req median (min–max) | / round_robin | "
      "50 backends: CPU µs/req median (min–max) | / round_robin |")
    p("|---|---|---|---|---|")
    for row in rows:
        p(row)
    p("")
    conns = sorted({key[1] for key in agg if key[0] == "algorithms"})
    p("## Throughput per algorithm by concurrency (3 backends, 1 worker, `wrk -t1`)")
    p("")
    p("| algorithm | " + " | ".join(f"{c} conns req/s" for c in conns) + " | status |")
    p("|---|" + "---|" * (len(conns) + 1))
    for algorithm in ALGORITHMS:
        cells, flags = [], set()
        for c in conns:
            found = target_rows("algorithms", c, "small", [f"algo-{algorithm}-3"])
            if not found:
                cells.append("–")
                continue
            _t, g, flag = found[0]
            cells.append(fmt_stat(g["rps"]))
            if flag != "ok":
                flags.add(f"{c}: {flag}")
        p(f"| {algorithm} | " + " | ".join(cells) + f" | {'; '.join(sorted(flags)) or 'ok'} |")
    p("")


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "progress":
        cmd_progress(int(args[0]), int(args[1]), args[2])
    elif cmd == "check":
        cmd_check(args[0], args[1:])
    elif cmd == "procsnap":
        cmd_procsnap(args[0])
    elif cmd == "record":
        cmd_record(args[0], args[1], args[2], int(args[3]), int(args[4]))
    elif cmd == "hey-csv":
        cmd_hey_csv(args[0], args[1])
    elif cmd == "report":
        cmd_report(args[0], args[1], args[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
