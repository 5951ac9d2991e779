#!/usr/bin/env python3
"""The table of an interleaved TLS benchmark (scripts/bench-tls.sh, scripts/bench-tls-adapter.sh): per subject the
median keep-alive and new-connection CPU in µs, each beside its ratio to the baseline's, and idle memory.

    median-table.py TITLE KIND BASELINE CONNS NAME:KEEP,...:NEW,...:MEMORY ...
"""
import statistics
import sys


def main(argv):
    title, kind, baseline, conns, *subjects = argv
    rows = {}
    for subject in subjects:
        name, keep, new, memory = subject.split(":")
        rows[name] = (
            statistics.median(float(value) for value in keep.split(",")),
            statistics.median(float(value) for value in new.split(",")),
            memory,
        )
    keep0, new0, _ = rows[baseline]
    print(title)
    print(f"| {kind} | keep-alive µs/request (median) | vs {baseline} | new connection µs (median) | vs {baseline} "
          f"| idle RSS bytes/connection ({conns}) |")
    print("|---|---|---|---|---|---|")
    for name, (keep, new, memory) in rows.items():
        print(f"| {name} | {keep:.2f} | {keep / keep0:.2f}x | {new:.1f} | {new / new0:.2f}x | {memory} |")


if __name__ == "__main__":
    main(sys.argv[1:])
