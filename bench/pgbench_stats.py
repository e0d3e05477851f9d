#!/usr/bin/env python3
"""Digest one pgbench run for bench/run.sh: TPS and average latency from pgbench's summary, p99
from its per-transaction log, and the pooler's CPU per 1000 transactions from the sampler file.

Usage: pgbench_stats.py OUTPUT LOGPREFIX LAUNCH_NS SAMPLES CLK_TCK
Prints one tab-separated line: tps avg_ms p99_ms tx_in_window cpu_s window_s user_s sys_s
(the last four are "-" without a sampler file; user_s and sys_s split cpu_s into the pooler's
utime and stime, all threads, from /proc/PID/stat).

The CPU window excludes pgbench's initial connection phase (all clients logging in at once),
so -S rows measure the steady state: it starts at the first sample taken after
launch + "initial connection time" and ends at the last sample, taken after pgbench exited.
The transactions counted are those that completed inside the window (from the log's
time_epoch/time_us columns). For -C rows every transaction is a login, so the window holds
logins and queries alike.
"""
import glob
import os
import re
import sys


def main() -> None:
    out_path, prefix, launch_ns, samples_path, clk_tck = sys.argv[1:6]
    launch = int(launch_ns) / 1e9
    clk = int(clk_tck)
    text = open(out_path, encoding="utf-8", errors="replace").read()

    def grab(pattern: str) -> str:
        m = re.search(pattern, text, re.M)
        return m.group(1) if m else "-"

    tps = grab(r"^tps = ([0-9.]+)")
    avg = grab(r"^latency average = ([0-9.]+) ms")
    conn = grab(r"^initial connection time = ([0-9.]+) ms")
    conn_s = float(conn) / 1000 if conn != "-" else 0.0

    lat = []
    ends = []
    for path in glob.glob(prefix + ".*"):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                p = line.split()
                if len(p) < 6 or not p[2].isdigit():
                    continue  # failed or skipped transaction
                lat.append(int(p[2]))
                ends.append(int(p[4]) + int(p[5]) / 1e6)
    lat.sort()
    p99 = "%.3f" % (lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000) if lat else "-"

    cpu_s = window_s = user_s = sys_s = "-"
    n_window = len(ends)
    if samples_path != "-" and os.path.exists(samples_path):
        samples = []
        with open(samples_path, encoding="utf-8") as f:
            for line in f:
                p = line.split()
                if len(p) >= 5 and all(x.isdigit() for x in (p[0], p[1], p[3], p[4])):
                    samples.append((int(p[0]) / 1e9, int(p[1]), int(p[3]), int(p[4])))
        start_at = launch + conn_s
        first = next((s for s in samples if s[0] >= start_at), None)
        last = samples[-1] if samples else None
        if first and last and last[0] > first[0]:
            n_window = sum(1 for e in ends if first[0] <= e <= last[0])
            cpu_s = "%.3f" % ((last[1] - first[1]) / clk)
            user_s = "%.3f" % ((last[2] - first[2]) / clk)
            sys_s = "%.3f" % ((last[3] - first[3]) / clk)
            window_s = "%.3f" % (last[0] - first[0])
    print("\t".join([tps, avg, p99, str(n_window), cpu_s, window_s, user_s, sys_s]))


if __name__ == "__main__":
    main()
