#!/usr/bin/env python3
"""Medians over rounds of the CSVs run.sh wrote, as Markdown tables.

Usage: docs/bench/issue14/summarize.py > docs/bench/issue14/summary.md
"""
import csv
import os
import statistics
import sys

here = os.path.dirname(os.path.abspath(__file__))


def load(name):
    path = os.path.join(here, name + ".csv")
    if not os.path.exists(path):
        return None
    rows = list(csv.DictReader(open(path)))
    out = {}
    for r in rows:
        out.setdefault(r["server"], []).append(r)
    return out


def noise(name):
    """Largest "other %" (CPU of other processes) of any run, from the text
    output's tables (the CSV does not carry it)."""
    path = os.path.join(here, name + ".txt")
    worst, in_table = 0.0, False
    for line in open(path):
        if line.startswith("server "):
            in_table = True
            continue
        parts = line.split()
        if in_table and parts and parts[0] in ("etcd", "metastore"):
            try:
                worst = max(worst, float(parts[-1]))
            except ValueError:
                pass
        else:
            in_table = False
    return worst


def med(rows, col):
    vals = [float(r[col]) for r in rows if r.get(col)]
    return statistics.median(vals) if vals else float("nan")


def ratio_med(data, col):
    """Median over rounds of metastore/etcd."""
    e = {r["round"]: float(r[col]) for r in data["etcd"]}
    m = {r["round"]: float(r[col]) for r in data["metastore"]}
    rs = [m[k] / e[k] for k in m if k in e and e[k] > 0]
    return statistics.median(rs) if rs else float("nan")


def main():
    out = sys.stdout
    for m in ("1", "3"):
        for wl in ("put", "get"):
            base = load(f"{wl}-m{m}-plain")
            if base is None:
                continue
            rounds = len(base.get("etcd", []))
            out.write(
                f"\n### {wl}, {m} member(s), 50 clients, 20000 ops, memory engine "
                f"(median of {rounds} rounds)\n\n"
            )
            out.write(
                "| mode | etcd ops/s | etcd p99 ms | MetaStore ops/s | MetaStore p99 ms "
                "| MS/etcd ops/s | etcd vs plain | MS vs plain | errors | max other % |\n"
            )
            out.write("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
            for mode in ("plain", "auth", "tls", "tls-auth"):
                d = load(f"{wl}-m{m}-{mode}")
                if d is None:
                    continue
                e, s = d["etcd"], d["metastore"]
                errors = sum(int(r["errors"]) for r in e + s)
                rel = lambda srv: med(d[srv], "ops_per_s") / med(base[srv], "ops_per_s")
                out.write(
                    f"| {mode} | {med(e, 'ops_per_s'):.0f} | {med(e, 'p99_us') / 1000:.1f} "
                    f"| {med(s, 'ops_per_s'):.0f} | {med(s, 'p99_us') / 1000:.1f} "
                    f"| {ratio_med(d, 'ops_per_s'):.2f}x | {rel('etcd'):.2f} | {rel('metastore'):.2f} "
                    f"| {errors} | {noise(f'{wl}-m{m}-{mode}'):.0f} |\n"
                )
        none, storm = load(f"storm-m{m}-none"), load(f"storm-m{m}-20")
        if none is None or storm is None:
            continue
        out.write(
            f"\n### Authenticate storm, {m} member(s): auth puts, 50 clients, "
            f"with and without 20 clients looping Authenticate (median over rounds)\n\n"
        )
        out.write(
            "| server | puts/s alone | p99 ms alone | puts/s in storm | p99 ms in storm "
            "| puts kept | Authenticate/s | phases cut at 40 s | max other % |\n"
        )
        out.write("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        for srv in ("etcd", "metastore"):
            a, b = none[srv], storm[srv]
            cut = sum(1 for r in a + b if int(r["ops"]) + int(r["errors"]) < 20000)
            out.write(
                f"| {srv} | {med(a, 'ops_per_s'):.0f} | {med(a, 'p99_us') / 1000:.1f} "
                f"| {med(b, 'ops_per_s'):.0f} | {med(b, 'p99_us') / 1000:.1f} "
                f"| {med(b, 'ops_per_s') / med(a, 'ops_per_s') * 100:.0f} % "
                f"| {med(b, 'auth_per_s'):.1f} | {cut} "
                f"| {max(noise(f'storm-m{m}-none'), noise(f'storm-m{m}-20')):.0f} |\n"
            )

    interleaved(out)


def interleaved(out):
    """interleave.sh's runs: modes alternated, one round each; "vs plain"
    is the median over cycles of each cycle's run against that cycle's plain
    run."""
    d = os.path.join(here, "interleaved")
    if not os.path.isdir(d):
        return
    runs = {}
    for f in sorted(os.listdir(d)):
        if not f.endswith(".csv"):
            continue
        stem = f[:-4]
        wl_m, _, cycle = stem.rpartition("-c")
        wl, m, mode = wl_m.split("-", 2)
        m = m.lstrip("m")
        rows = {r["server"]: r for r in csv.DictReader(open(os.path.join(d, f)))}
        runs.setdefault((wl, m), {}).setdefault(mode, {})[cycle] = (rows, stem)
    for (wl, m), modes in runs.items():
        cycles = sorted(modes.get("plain", {}))
        out.write(
            f"\n### {wl}, {m} member(s), modes interleaved (interleave.sh), "
            f"{len(cycles)} cycles of one round each: medians\n\n"
        )
        out.write(
            "| mode | etcd ops/s | etcd p99 ms | MetaStore ops/s | MetaStore p99 ms "
            "| MS/etcd ops/s | etcd vs plain | MS vs plain | max other % |\n"
        )
        out.write("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        for mode in ("plain", "auth", "tls", "tls-auth"):
            got = modes.get(mode, {})
            if not got:
                continue
            col = lambda srv, c: [float(got[k][0][srv][c]) for k in got]
            rel = lambda srv: statistics.median(
                float(got[k][0][srv]["ops_per_s"]) / float(modes["plain"][k][0][srv]["ops_per_s"])
                for k in got
                if k in modes["plain"]
            )
            ratio = statistics.median(
                float(got[k][0]["metastore"]["ops_per_s"]) / float(got[k][0]["etcd"]["ops_per_s"])
                for k in got
            )
            worst = max(noise(os.path.join("interleaved", got[k][1])) for k in got)
            out.write(
                f"| {mode} | {statistics.median(col('etcd', 'ops_per_s')):.0f} "
                f"| {statistics.median(col('etcd', 'p99_us')) / 1000:.1f} "
                f"| {statistics.median(col('metastore', 'ops_per_s')):.0f} "
                f"| {statistics.median(col('metastore', 'p99_us')) / 1000:.1f} "
                f"| {ratio:.2f}x | {rel('etcd'):.2f} | {rel('metastore'):.2f} | {worst:.0f} |\n"
            )


main()
