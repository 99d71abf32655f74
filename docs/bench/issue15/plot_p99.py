#!/usr/bin/env python3
"""Draws p99 latency over time of the k8s profile, etcd and MetaStore side by
side, with the apiserver-style compactions marked: k8s-m<N>-p99.svg from
k8s-m<N>-timeline.csv (0.75 s windows) and k8s-m<N>.txt (compaction times).

Usage: plot_p99.py [MEMBERS] [ROUND]   (defaults: 1 1)
"""
import csv, os, re, sys

here = os.path.dirname(os.path.abspath(__file__))
members = sys.argv[1] if len(sys.argv) > 1 else "1"
rnd = sys.argv[2] if len(sys.argv) > 2 else "1"
series = {}
with open(os.path.join(here, f"k8s-m{members}-timeline.csv")) as f:
    for r in csv.DictReader(f):
        if r["round"] == rnd:
            series.setdefault(r["server"], []).append((float(r["t_s"]), int(r["p99_us"]) / 1000))
# "compactions at" lines come per half, in run order: etcd, MetaStore, etcd, ...
with open(os.path.join(here, f"k8s-m{members}.txt")) as f:
    lines = [l for l in f if l.strip().startswith("compactions at")]
order = [s for _ in range(len(lines) // 2) for s in ("etcd", "metastore")]
compactions = {}
for i, (server, line) in enumerate(zip(order, lines)):
    if i // 2 == int(rnd) - 1:
        compactions[server] = [int(ms) / 1000 for ms in re.findall(r"(\d+) ms \(rev", line)]

W, H, L, B, PANEL = 760, 460, 60, 30, 190
tmax = max(t for s in series.values() for t, _ in s)
ymax = max(v for s in series.values() for _, v in s) * 1.1
x = lambda t: L + (W - L - 20) * t / tmax
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="14" text-anchor="middle">k8s profile, {members} member(s), round {rnd}: p99 per 0.75 s window; dashed: compaction (CAS + Compact)</text>']
colors = {"etcd": "#d62728", "metastore": "#1f77b4"}
for p, server in enumerate(["etcd", "metastore"]):
    top = 30 + p * (PANEL + 20)
    y = lambda v, top=top: top + PANEL - PANEL * v / ymax
    out.append(f'<text x="{L+5}" y="{top+12}" fill="{colors[server]}">{server}</text>')
    for i in range(0, 5):
        v = ymax * i / 4
        out.append(f'<line x1="{L}" x2="{W-20}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L-5}" y="{y(v)+4:.1f}" text-anchor="end">{v:.0f} ms</text>')
    for t in compactions.get(server, []):
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{top+PANEL}" stroke="#555" stroke-dasharray="4,3"/>')
    pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in series.get(server, []))
    out.append(f'<polyline fill="none" stroke="{colors[server]}" stroke-width="1.5" points="{pts}"/>')
for i in range(0, 6):
    t = tmax * i / 5
    out.append(f'<text x="{x(t):.1f}" y="{H-B+16}" text-anchor="middle">{t:.0f} s</text>')
out.append("</svg>")
# The figures behind the picture: p99 of the windows ending within 1.5 s
# after a compaction started, against the windows away from any.
for server, rows in series.items():
    cs = compactions.get(server, [])
    near = sorted(v for t, v in rows if any(c <= t <= c + 1.5 for c in cs))
    far = sorted(v for t, v in rows if not any(c - 0.75 <= t <= c + 2.25 for c in cs))
    if near and far:
        print(f"{server}: p99 of windows at a compaction: median {near[len(near)//2]:.0f} ms, "
              f"max {near[-1]:.0f} ms; elsewhere: median {far[len(far)//2]:.0f} ms")
path = os.path.join(here, f"k8s-m{members}-p99.svg")
with open(path, "w") as f:
    f.write("\n".join(out) + "\n")
print(path)
