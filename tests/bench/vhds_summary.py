#!/usr/bin/env python3
"""Markdown table of tests/bench/vhds_adds.py runs (the vhds_adds_N.json files in OUT): per N,
medians over the adds of the time to 200, the loader's part, Envoy's VHDS update_duration, the CPU
of Envoy's main thread and of its workers, and the main thread's CPU per virtual host; then a
least-squares line through (virtual hosts, main-thread CPU).

Usage: tests/bench/vhds_summary.py OUT
"""

import glob
import json
import statistics
import sys

out = sys.argv[1]
runs = []
for path in glob.glob(f"{out}/vhds_adds_*.json"):
    d = json.load(open(path))
    s = d["summary"]
    if s["n"] < 10000:
        continue
    upd = [r["stat_deltas"].get("vhds:update_duration_sum") for r in d["rows"]]
    upd = [u for u in upd if u is not None]
    runs.append(dict(
        n=s["n"], adds=len(d["rows"]), ok=s["median"]["ok_ms"], non404=s["median"]["non404_ms"],
        loader=s["median"]["loader_vhds_ms"],
        # Median per add with --stats-per-add, else the mean over the adds (marked *).
        upd=statistics.median(upd) if upd else s["vhds_update_duration_mean_ms"], upd_mean=not upd,
        both=statistics.median(r["main_cpu_ms"] + r["workers_cpu_ms"] for r in d["rows"]),
        main=s["median"]["main_cpu_ms"], workers=s["median"]["workers_cpu_ms"],
        main_min=min(r["main_cpu_ms"] for r in d["rows"]),
        main_max=max(r["main_cpu_ms"] for r in d["rows"]),
        idle=s["idle_cpu_ms"]["main"] / s["idle_seconds"], rss=s["envoy_rss_mb"],
        stats=s["census"]["stats_total"], vhost_stats=s["census"]["vhost_stats"],
        load=" ".join(s["load"])))
runs.sort(key=lambda r: r["n"])
print("| backends (virtual hosts) | adds | to first non-404 ms | to 200 ms | loader's part (write -> VHDS pushed) ms "
      "| Envoy VHDS `update_duration` ms | Envoy main thread CPU ms (min-max) | workers CPU ms "
      "| main + workers CPU ms "
      "| main thread µs per virtual host | Envoy RSS MB | Envoy stats (`vhost.*`) | load at end |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for r in runs:
    print(f"| {r['n']:,} | {r['adds']} | {r['non404']:.0f} | {r['ok']:.0f} | {r['loader']:.0f} | {r['upd']:.0f}"
          f"{'*' if r['upd_mean'] else ''} | {r['main']:.0f} ({r['main_min']:.0f}-{r['main_max']:.0f}) "
          f"| {r['workers']:.0f} | {r['both']:.0f} "
          f"| {1000 * r['main'] / r['n']:.1f} | {r['rss']:,.0f} | {r['stats']:,} ({r['vhost_stats']}) "
          f"| {r['load']} |")
if len(runs) >= 2:
    xs = [r["n"] for r in runs]
    for key, what in (("main", "main-thread CPU"), ("both", "main + workers CPU"),
                      ("upd", "update_duration"), ("ok", "time to 200")):
        ys = [r[key] for r in runs]
        mx, my = statistics.mean(xs), statistics.mean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        print(f"\n{what}: {1000 * slope:.2f} µs per virtual host + {my - slope * mx:.1f} ms")
