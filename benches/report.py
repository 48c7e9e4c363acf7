#!/usr/bin/env python3
"""Turn criterion's results (target/criterion/**/new/{benchmark,estimates}.json) into the
tables of BENCHMARKS.md and the sweep-cost plot (docs/sweep-cost.svg).

    python3 benches/report.py            # prints markdown, writes docs/sweep-cost.svg

Medians only. A `vs_sqlite/<x>` result is paired with the credit-ledger result `<x>`; the
ratio is SQLite time / credit-ledger time (above 1 means credit-ledger is faster).
"""
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRIT = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "criterion")


def load():
    out = {}
    for dirpath, _dirs, files in os.walk(CRIT):
        if os.path.basename(dirpath) != "new" or "benchmark.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            meta = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        elems = (meta.get("throughput") or {}).get("Elements")
        out[meta["full_id"]] = {
            "median_ns": est["median"]["point_estimate"],
            "lo_ns": est["median"]["confidence_interval"]["lower_bound"],
            "hi_ns": est["median"]["confidence_interval"]["upper_bound"],
            "elements": elems,
        }
    return out


def fmt_time(ns):
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def fmt_rate(r):
    if r >= 1e6:
        return f"{r / 1e6:.2f} M/s"
    if r >= 1e3:
        return f"{r / 1e3:.1f} k/s"
    return f"{r:.0f} /s"


def per_op(r):
    return r["median_ns"] / (r["elements"] or 1)


def table(res):
    lines = ["| benchmark | credit-ledger median | per op | ops/s | SQLite median | SQLite ops/s | ratio (SQLite time / ours) |",
             "|---|---|---|---|---|---|---|"]
    for key in sorted(res, key=sort_key):
        if key.startswith("vs_sqlite/"):
            continue
        r = res[key]
        s = res.get("vs_sqlite/" + key)
        rate = 1e9 / per_op(r)
        row = [f"`{key}`", fmt_time(r["median_ns"]), fmt_time(per_op(r)), fmt_rate(rate)]
        if s:
            row += [fmt_time(s["median_ns"]), fmt_rate(1e9 / per_op(s)), f"**{s['median_ns'] / r['median_ns']:.2f}×**"]
        else:
            row += ["", "", ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def sort_key(k):
    parts = k.split("/")
    order = {"lifecycle": 0, "concurrent": 1, "sweep": 2, "history": 3, "open": 4}
    def num(p):
        mult = {"k": 1e3, "M": 1e6}
        try:
            if p[-1] in mult:
                return float(p[:-1]) * mult[p[-1]]
            return float(p)
        except (ValueError, IndexError):
            return -1
    return (order.get(parts[0], 9), parts[1] if len(parts) > 2 else "", num(parts[-1]), k)


def svg(res, path):
    sizes = [(1e4, "10k"), (1e5, "100k"), (1e6, "1M")]
    series = [("sweep/zero_expired", "sweep through a write txn, 0 expired", "#1f77b4"),
              ("sweep/idle_check", "idle check (in-memory deadline)", "#d62728")]
    pts = {name: [(n, res[f"{name}/{lab}"]["median_ns"]) for n, lab in sizes if f"{name}/{lab}" in res]
           for name, _, _ in series}
    W, H, L, R, T, B = 640, 400, 80, 20, 50, 60
    ymax_us = max([v / 1e3 for p in pts.values() for _, v in p] + [1.0])
    # The target for a sweep with 0 expired among 1M running is 20 µs: scale to it.
    ymax = max(25.0, ymax_us * 1.2)
    def x(n):
        return L + (math.log10(n) - 4) / 2 * (W - L - R)
    def y(us):
        return H - B - us / ymax * (H - T - B)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">Sweep cost vs running generations (median, µs)</text>',
         f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>']
    for n, lab in sizes:
        o.append(f'<line x1="{x(n):.1f}" y1="{H - B}" x2="{x(n):.1f}" y2="{H - B + 5}" stroke="black"/>')
        o.append(f'<text x="{x(n):.1f}" y="{H - B + 20}" text-anchor="middle">{lab}</text>')
    o.append(f'<text x="{(L + W - R) / 2}" y="{H - 15}" text-anchor="middle">running generations (log scale)</text>')
    for i in range(6):
        v = ymax * i / 5
        o.append(f'<line x1="{L - 5}" y1="{y(v):.1f}" x2="{W - R}" y2="{y(v):.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{L - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    o.append(f'<line x1="{L}" y1="{y(20):.1f}" x2="{W - R}" y2="{y(20):.1f}" stroke="#888" stroke-dasharray="6,4"/>')
    o.append(f'<text x="{W - R - 4}" y="{y(20) - 5:.1f}" text-anchor="end" fill="#555">target: 0 expired among 1M &lt; 20 µs</text>')
    o.append(f'<text x="18" y="{(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 18 {(T + H - B) / 2})">µs per call</text>')
    for k, (name, label, color) in enumerate(series):
        p = pts[name]
        if not p:
            continue
        d = " ".join(f"{'M' if i == 0 else 'L'}{x(n):.1f},{y(v / 1e3):.1f}" for i, (n, v) in enumerate(p))
        o.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        for n, v in p:
            o.append(f'<circle cx="{x(n):.1f}" cy="{y(v / 1e3):.1f}" r="4" fill="{color}"/>')
            o.append(f'<text x="{x(n) + 6:.1f}" y="{y(v / 1e3) - 6:.1f}" fill="{color}">{fmt_time(v)}</text>')
        o.append(f'<rect x="{L + 15}" y="{T + 8 + k * 18}" width="12" height="3" fill="{color}"/>')
        o.append(f'<text x="{L + 32}" y="{T + 13 + k * 18}">{label}</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def main():
    res = load()
    if not res:
        sys.exit(f"no criterion results under {CRIT}")
    print(table(res))
    out = os.path.join(ROOT, "docs", "sweep-cost.svg")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    svg(res, out)
    print(f"\n(wrote {os.path.relpath(out, ROOT)})", file=sys.stderr)


if __name__ == "__main__":
    main()
