#!/usr/bin/env python3
"""Summarise a bench/run.sh TSV that holds several rounds (BENCH_ROUNDS) or several sluice
builds (BENCH_TARGETS with sluice@NAME): for each row and target, the median and the spread
(min-max) over the rounds of TPS, p99 latency and CPU per transaction (total, user space,
kernel), and each pooler's total and user-space CPU per transaction as a ratio to PgBouncer's in
the same round (median and spread of those ratios).
The median is the figure to quote; the spread says how far to trust it.

Usage: rounds_summary.py RAW.tsv
"""
import csv
import statistics
import sys
from collections import defaultdict


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def cpu_us_per_tx(r, column="cpu_s"):
    tx, cpu = num(r["tx_window"]), num(r.get(column))
    if r["status"] != "ok" or not tx or cpu is None:
        return None
    return cpu / tx * 1e6


def spread(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt % med
    return (fmt + " (" + fmt + "–" + fmt + ")") % (med, min(values), max(values))


def main() -> None:
    rows = list(csv.DictReader(open(sys.argv[1], encoding="utf-8"), delimiter="\t"))
    order, by_key, pgb_cpu, pgb_user = [], defaultdict(list), {}, {}
    for r in rows:
        key = (r["row"], r["target"])
        if key not in by_key:
            order.append(key)
        by_key[key].append(r)
        if r["target"] == "pgbouncer":
            pgb_cpu[(r["row"], r.get("round", "1"))] = cpu_us_per_tx(r)
            pgb_user[(r["row"], r.get("round", "1"))] = cpu_us_per_tx(r, "user_s")
    rounds = len({r.get("round", "1") for r in rows})
    print(f"{rounds} round(s); median (min–max) over rounds; failed runs are left out.\n")
    print(
        "| row | target | runs ok | TPS | p99 ms | CPU µs/tx | user µs/tx | kernel µs/tx"
        " | CPU ratio to PgBouncer | user ratio to PgBouncer |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in order:
        runs = by_key[key]
        ok = [r for r in runs if r["status"] == "ok"]
        ratios, user_ratios = [], []
        for r in ok:
            if key[1] in ("pgbouncer", "direct"):
                continue
            at = (r["row"], r.get("round", "1"))
            for table, column, out in ((pgb_cpu, "cpu_s", ratios), (pgb_user, "user_s", user_ratios)):
                base, mine = table.get(at), cpu_us_per_tx(r, column)
                if base and mine:
                    out.append(mine / base)
        print(
            "| %s | %s | %d/%d | %s | %s | %s | %s | %s | %s | %s |"
            % (
                key[0],
                key[1],
                len(ok),
                len(runs),
                spread([num(r["tps"]) for r in ok], "%.0f"),
                spread([num(r["p99_ms"]) for r in ok], "%.2f"),
                spread([cpu_us_per_tx(r) for r in ok], "%.1f"),
                spread([cpu_us_per_tx(r, "user_s") for r in ok], "%.1f"),
                spread([cpu_us_per_tx(r, "sys_s") for r in ok], "%.1f"),
                spread(ratios, "%.2f"),
                spread(user_ratios, "%.2f"),
            )
        )


if __name__ == "__main__":
    main()
