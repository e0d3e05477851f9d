#!/usr/bin/env python3
"""Render bench/run.sh's raw TSV as one markdown table, with sluice/PgBouncer ratios on each
sluice line (and sluice/direct TPS). CPU is the pooler process's utime+stime (all threads) per
1000 transactions completed in the measured window; for -C rows also per login. Peak RSS is
VmHWM of a pooler started fresh for that row.

Usage: render_table.py RAW.tsv
"""
import csv
import sys


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def ratio(a, b):
    a, b = num(a), num(b)  # from unrounded values where the caller has them
    return "%.2f" % (a / b) if a is not None and b else "-"


def main() -> None:
    rows = list(csv.DictReader(open(sys.argv[1], encoding="utf-8"), delimiter="\t"))
    for r in rows:
        ok = r["status"] == "ok"
        tx, cpu = num(r["tx_window"]), num(r["cpu_s"])
        r["cpu_1k_raw"] = cpu / tx * 1000 if ok and tx and cpu is not None else None
        r["cpu_1k"] = "%.4f" % r["cpu_1k_raw"] if r["cpu_1k_raw"] is not None else "-"
        r["cpu_login"] = (
            "%.3f" % (cpu / tx * 1000) if ok and r["kind"] == "login" and tx and cpu is not None else "-"
        )
        kb = num(r["peak_rss_kb"])
        r["rss_raw"] = kb
        r["rss"] = "%.1f" % (kb / 1024) if kb else "-"
        if not ok:
            for k in ("tps", "avg_ms", "p99_ms"):
                r[k] = "-"
    by = {(r["row"], r["target"]): r for r in rows}
    head = [
        "row", "target", "status", "TPS", "avg ms", "p99 ms", "CPU s/1k tx", "CPU ms/login",
        "peak RSS MiB", "TPS s/PgB", "CPU s/PgB", "p99 s/PgB", "RSS s/PgB", "TPS s/direct",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|")
    for r in rows:
        extra = ["", "", "", "", ""]
        if r["target"] == "sluice":
            b = by.get((r["row"], "pgbouncer"), {})
            d = by.get((r["row"], "direct"), {})
            extra = [
                ratio(r["tps"], b.get("tps")),
                ratio(r["cpu_1k_raw"], b.get("cpu_1k_raw")),
                ratio(r["p99_ms"], b.get("p99_ms")),
                ratio(r["rss_raw"], b.get("rss_raw")),
                ratio(r["tps"], d.get("tps")),
            ]
        status = r["status"] if not r["note"] else "%s: %s" % (r["status"], r["note"])
        cells = [
            "`%s`" % r["row"], r["target"], status, r["tps"].split(".")[0] if r["tps"] != "-" else "-",
            r["avg_ms"], r["p99_ms"], r["cpu_1k"] if r["target"] != "direct" else "-",
            r["cpu_login"], r["rss"],
        ] + extra
        print("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")


if __name__ == "__main__":
    main()
