#!/usr/bin/env python3
"""Draws rss-*.csv (t_s, rss_kib) as one SVG line chart: rss-fill.svg."""
import csv, glob, os

here = os.path.dirname(os.path.abspath(__file__))
series = {}
for path in sorted(glob.glob(os.path.join(here, "rss-*.csv"))):
    name = os.path.basename(path)[4:-4]
    with open(path) as f:
        rows = [(float(r["t_s"]), int(r["rss_kib"]) / 1024) for r in csv.DictReader(f) if r["rss_kib"]]
    series[name] = rows
W, H, L, B = 760, 420, 60, 40
tmax = max(t for s in series.values() for t, _ in s)
ymax = max(v for s in series.values() for _, v in s) * 1.1
x = lambda t: L + (W - L - 20) * t / tmax
y = lambda v: H - B - (H - B - 20) * v / ymax
colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="14" text-anchor="middle">RSS while loading 1M keys of 256 B (50 clients, one member)</text>']
for i in range(0, 6):
    v = ymax * i / 5
    out.append(f'<line x1="{L}" x2="{W-20}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
    out.append(f'<text x="{L-5}" y="{y(v)+4:.1f}" text-anchor="end">{v:.0f} MiB</text>')
for i in range(0, 6):
    t = tmax * i / 5
    out.append(f'<text x="{x(t):.1f}" y="{H-B+16}" text-anchor="middle">{t:.0f} s</text>')
for i, (name, rows) in enumerate(series.items()):
    c = colors[i % len(colors)]
    pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in rows)
    out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{pts}"/>')
    out.append(f'<text x="{L+10}" y="{40+16*i}" fill="{c}">{name}</text>')
out.append("</svg>")
with open(os.path.join(here, "rss-fill.svg"), "w") as f:
    f.write("\n".join(out))
