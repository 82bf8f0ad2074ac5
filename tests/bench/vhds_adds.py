#!/usr/bin/env python3
"""Where Envoy's time goes when a backend is added at N backends (BENCHMARKS.md, "Add backend at
100,000: where Envoy's time goes").

Generates N backends, serves them with LOADER to one real Envoy (delta ADS, RDS + VHDS), waits until
Envoy has acknowledged everything, then adds ADDS backends one at a time (a generated backend file
copied under a new name, pointing at a local NGINX with its own CA) and for each reports:

- ms from the write until a request with the new Host gets a non-404, then 200, through Envoy;
- the loader's part (write -> its CDS and VHDS pushes, from its /metrics);
- the CPU time of every Envoy thread during the add (from /proc/<pid>/task/<tid>/schedstat, ns),
  the main thread ("envoy") apart from the workers ("wrk:worker_N") and the rest;
- with --stats-per-add, Envoy's own RDS/VHDS stats: counters that moved and, for histograms, the
  count and sum deltas (`/stats/prometheus`, i.e. `..._update_duration` etc.); in any case the
  same over all adds (the mean VHDS update_duration).

The bootstrap is `LOADER bootstrap` plus `stats_flush_on_admin: true`, so that the 5 s stats
flush (which walks every stat on the main thread) does not land inside a measured add; Envoy's
admin API is not touched while an add is measured, and each add starts once Envoy's main thread
is idle (the flush an admin request triggers goes on after the answer). With --perf, `perf
record -g` (or --perf-dwarf: `--call-graph dwarf`, not used for BENCHMARKS.md) samples Envoy during the measured adds only
(enabled and disabled through perf's control FIFO); perf.data is copied to OUT.

Usage: tests/bench/vhds_adds.py LOADER GEN ENVOY N [--adds 10] [--stats-per-add] [--perf|--perf-dwarf]
       [--keep]
  e.g. tests/bench/vhds_adds.py /work/bench100k/loader-final /work/baseline/backendtls-gen-backends \
       /work/main/.venv/lib/python3.11/site-packages/envoy/_bin/envoy 10000
ENVOY is the real binary (not the .venv python wrapper). Work files go to /tmp/vhds-adds-N.*,
removed at the end unless --keep. Prints CSV rows, then a summary; also writes summary.json.
"""

import argparse
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import free_port, thread_class, threads



def http_get(port, path, host="127.0.0.1", timeout=600):
    """(status, body) of one HTTP/1.1 GET, or (0, error) when nothing answers."""
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except OSError as e:
        return 0, str(e)


def status_of(port, host):
    """Status of GET / with this Host, over a raw socket (cheaper than urllib in a tight loop)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64).decode("latin-1")
            return int(head.split(" ", 2)[1])
    except (OSError, IndexError, ValueError):
        return 0


def poll(what, timeout, check, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(interval)



def quiesce(pid, window=0.05, busy_ns=1_000_000, timeout=120):
    """Returns once the main thread used less than busy_ns of CPU in a window."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c0 = int(open(f"/proc/{pid}/task/{pid}/schedstat").read().split()[0])
        time.sleep(window)
        c1 = int(open(f"/proc/{pid}/task/{pid}/schedstat").read().split()[0])
        if c1 - c0 < busy_ns:
            return
    sys.exit("Envoy's main thread never went idle")


def cpu_by_class(pid, before, after):
    out = {"main": 0.0, "workers": 0.0, "other": 0.0}
    for tid, (comm, ns) in after.items():
        out[thread_class(pid, tid, comm)] += (ns - before.get(tid, (comm, 0))[1]) / 1e6
    return out  # ms


def prom(port, regex):
    """{metric{labels}: value} from Envoy's /stats/prometheus, filtered."""
    status, body = http_get(port, f"/stats/prometheus?filter={regex}")
    out = {}
    for line in body.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


def loader_metric(port, name, kind):
    status, body = http_get(port, "/metrics")
    m = re.search(rf'^{name}\{{[^}}]*type="{kind}"[^}}]*\}} ([0-9.e+]+)$', body, re.M)
    return float(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("loader")
    ap.add_argument("gen")
    ap.add_argument("envoy")
    ap.add_argument("n", type=int)
    ap.add_argument("--adds", type=int, default=10)
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--perf-dwarf", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--stats-per-add", action="store_true",
                    help="read Envoy's RDS/VHDS stats after every add (slow at 100,000: every "
                         "/stats request walks 12.8 million stats), not only after the last")
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    a = ap.parse_args()
    n = a.n
    work = tempfile.mkdtemp(prefix=f"vhds-adds-{n}.", dir="/tmp")
    procs = []

    def cleanup():
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    try:
        run(a, n, work, procs)
    finally:
        cleanup()


def run(a, n, work, procs):
    log = lambda *x: print(*x, file=sys.stderr, flush=True)
    d = f"{work}/d"
    subprocess.run([a.gen, d, str(n)], check=True, stdout=subprocess.DEVNULL)
    gw_port = free_port()
    gw = open(f"{d}/gateway.yaml").read()
    open(f"{d}/gateway.yaml", "w").write(re.sub(r"port: 8080", f"port: {gw_port}", gw))

    # A TLS backend that every added backend points at: its own CA, a certificate for example.com.
    sh = lambda cmd: subprocess.run(cmd, shell=True, check=True, cwd=work,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key "
       "-out ca.pem -subj /CN=vhds-ca -days 30")
    sh("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr "
       "-subj /CN=example.com")
    open(f"{work}/ext", "w").write("subjectAltName=DNS:example.com\n")
    sh("openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem "
       "-days 30 -extfile ext")
    be_port = free_port()
    os.makedirs(f"{work}/nginx/logs")
    open(f"{work}/nginx/nginx.conf", "w").write(f"""
worker_processes 1; daemon off; pid {work}/nginx/nginx.pid; error_log {work}/nginx/error.log;
events {{}}
http {{ access_log off;
  server {{ listen 127.0.0.1:{be_port} ssl; ssl_certificate {work}/srv.pem;
           ssl_certificate_key {work}/srv.key; location / {{ return 200 "ok\\n"; }} }} }}
""")
    procs.append(subprocess.Popen(["nginx", "-p", f"{work}/nginx", "-c", f"{work}/nginx/nginx.conf"],
                                  stderr=open(f"{work}/nginx/stderr", "w")))

    template = sorted(glob.glob(f"{d}/team-*/svc-*.yaml"))[0]
    text = open(template).read()
    name = re.search(r"name: (svc-\d+)", text).group(1)
    pem = open(f"{work}/ca.pem").read().strip().split("\n")
    text = re.sub(r"(  ca.crt: \|\n)((?:    .*\n)+)",
                  lambda m: m.group(1) + "".join(f"    {line}\n" for line in pem), text, count=1)
    text = text.replace("port: 8443", f"port: {be_port}")
    team = re.search(r"namespace: (team-\d+)", text).group(1)

    def added(k):
        new = f"svc-add{k:02d}"
        return (f"{os.path.dirname(template)}/{new}.yaml", text.replace(name, new),
                f"{new}.{team}.bench.example")

    xds_port, ladmin, eadmin = free_port(), free_port(), free_port()
    procs.append(subprocess.Popen(
        [a.loader, "serve", "--config-dir", d, "--xds-address", f"127.0.0.1:{xds_port}",
         "--admin-address", f"127.0.0.1:{ladmin}"],
        stdout=open(f"{work}/loader.log", "w"), stderr=subprocess.STDOUT))
    started = time.monotonic()
    poll("the loader's /readyz", 600, lambda: http_get(ladmin, "/readyz")[0] == 200)
    log(f"loader ready in {time.monotonic() - started:.1f}s")
    boot = json.loads(subprocess.run(
        [a.loader, "bootstrap", "--xds-address", f"127.0.0.1:{xds_port}", "--admin-address",
         f"127.0.0.1:{eadmin}", "--node-id", "bench", "-o", "json"],
        check=True, capture_output=True, text=True).stdout)
    boot["stats_flush_on_admin"] = True
    json.dump(boot, open(f"{work}/bootstrap.json", "w"))
    procs.append(subprocess.Popen(
        [a.envoy, "-c", f"{work}/bootstrap.json", "--concurrency", "2", "--base-id",
         str(random.randint(10000, 60000)), "--log-level", "info"],
        stdout=open(f"{work}/envoy.log", "w"), stderr=subprocess.STDOUT))
    epid = procs[-1].pid

    def envoy_current():
        status, body = http_get(ladmin, "/xds")
        if status != 200:
            return False
        x = json.loads(body)
        acked = [e.get("acked_version") for e in x.get("envoys", []) if e.get("node") == "bench"]
        return bool(acked) and acked[0] == x.get("snapshot_version")

    def vhds_pushed():
        return (loader_metric(ladmin, "backendtls_loader_xds_last_push_timestamp_seconds", "VHDS") or 0) > 0

    first_host = re.search(r"hostnames: \[([^\]]+)\]", open(template).read()).group(1)
    poll("Envoy to acknowledge everything", 1800,
         lambda: procs[-1].poll() is None and vhds_pushed() and envoy_current()
         and status_of(gw_port, first_host) not in (0, 404), interval=0.5)
    if procs[-1].poll() is not None:
        sys.exit("envoy exited; see " + work)
    log(f"converged in {time.monotonic() - started:.1f}s; envoy pid {epid}")
    tids = threads(epid)
    log("envoy threads:", sorted(set(c for c, _ in tids.values())))

    # Envoy's stats about routes (names and a per-vhost census), read line by line: at 100,000
    # backends /stats is 12.8 million lines.
    census = {"stats_total": 0, "vhost_stats": 0, "cluster_stats": 0, "route_related": []}
    with urllib.request.urlopen(f"http://127.0.0.1:{eadmin}/stats", timeout=600) as r:
        for raw in r:
            stat = raw.decode("utf-8", "replace").split(":")[0]
            census["stats_total"] += 1
            census["vhost_stats"] += stat.startswith("vhost.")
            census["cluster_stats"] += stat.startswith("cluster.")
            if re.search(r"rds|vhds|vhost|route", stat) and len(census["route_related"]) < 80:
                census["route_related"].append(stat)
    log(json.dumps(census, indent=1))
    prom_re = "rds|vhds"

    # Idle main-thread CPU over a measured interval (this is a measurement window, not a wait).
    t0 = threads(epid)
    time.sleep(a.idle_seconds)
    idle = cpu_by_class(epid, t0, threads(epid))
    log(f"idle {a.idle_seconds}s CPU ms: {idle}")

    perf = None
    if a.perf or a.perf_dwarf:
        # Recording starts disabled (-D -1) and is enabled only while an add is measured, through
        # perf's control FIFO, so that the admin requests between adds stay out of the profile.
        graph = ["--call-graph", "dwarf,16384"] if a.perf_dwarf else ["-g"]
        os.mkfifo(f"{work}/perf.ctl")
        os.mkfifo(f"{work}/perf.ack")
        perf = subprocess.Popen(["perf", "record", "-F", "499" if a.perf_dwarf else "999", *graph,
                                 "-D", "-1", "--control", f"fifo:{work}/perf.ctl,{work}/perf.ack",
                                 "-p", str(epid), "-o", f"{work}/perf.data"],
                                stdout=open(f"{work}/perf.log", "w"), stderr=subprocess.STDOUT)
        ctl = open(f"{work}/perf.ctl", "w")
        ack = open(f"{work}/perf.ack", "r")

        def perf_control(command):
            ctl.write(command + "\n")
            ctl.flush()
            answer = ack.readline()
            assert answer.strip("\x00\n ") == "ack", (command, answer)

    count = lambda st: sum(v for key, v in st.items() if "update_duration_count" in key)

    def settled_stats(before_stats):
        # Histograms are merged by the flush an admin request triggers (stats_flush_on_admin),
        # after that request was answered: ask until the update_duration count moved.
        prom(eadmin, prom_re)
        return poll("Envoy's histograms to merge", 120,
                    lambda: (lambda st: st if count(st) > count(before_stats) else None)(
                        prom(eadmin, prom_re)), interval=0.05)

    def deltas(before_stats, after_stats):
        # envoy_http_rds_update_duration_sum{envoy_rds_route_config="vhds.gw",...}
        #   -> vhds:update_duration_sum
        short = lambda key: ("vhds:" if 'route_config="vhds.' in key else "rds:") + re.sub(
            r"^envoy_http_rds_|\{.*", "", key)
        return {short(key): round(v - before_stats.get(key, 0), 3)
                for key, v in after_stats.items()
                if v != before_stats.get(key, 0) and "_bucket{" not in key
                and not re.search("version|timestamp|_time[{_]", key)}

    rows = []
    print("add,non404_ms,ok_ms,loader_cds_ms,loader_vhds_ms,acked_ms,main_cpu_ms,workers_cpu_ms,"
          "other_cpu_ms,stat_deltas")
    first_stats = before_stats = prom(eadmin, prom_re)
    for k in range(a.adds):
        path, body, host = added(k)
        # Admin requests run on Envoy's main thread, and the stats flush one triggers
        # (stats_flush_on_admin: merging histograms, then a snapshot of every stat) goes on after
        # the answer: wait until the main thread is idle before the add starts.
        quiesce(epid)
        before = threads(epid)
        if perf:
            perf_control("enable")
        tmp = f"{os.path.dirname(path)}/.next"
        open(tmp, "w").write(body)
        t_unix = time.time()
        t = time.monotonic()
        os.rename(tmp, path)
        non404 = None
        while True:
            s = status_of(gw_port, host)
            if s not in (0, 404) and non404 is None:
                non404 = (time.monotonic() - t) * 1000
            if s == 200:
                break
            if time.monotonic() - t > 600:
                sys.exit(f"no 200 for {host}: last {s}")
            time.sleep(0.002)
        ok = (time.monotonic() - t) * 1000
        poll("Envoy to acknowledge the add", 600, envoy_current, interval=0.005)
        acked = (time.monotonic() - t) * 1000
        after = threads(epid)
        if perf:
            perf_control("disable")
        cpu = cpu_by_class(epid, before, after)
        cds = loader_metric(ladmin, "backendtls_loader_xds_last_push_timestamp_seconds", "CDS")
        vhds = loader_metric(ladmin, "backendtls_loader_xds_last_push_timestamp_seconds", "VHDS")
        d = {}
        if a.stats_per_add:
            after_stats = settled_stats(before_stats)
            d = deltas(before_stats, after_stats)
            before_stats = after_stats
        row = dict(add=k, non404_ms=non404, ok_ms=ok, loader_cds_ms=(cds - t_unix) * 1000,
                   loader_vhds_ms=(vhds - t_unix) * 1000, acked_ms=acked,
                   main_cpu_ms=cpu["main"], workers_cpu_ms=cpu["workers"],
                   other_cpu_ms=cpu["other"], stat_deltas=d)
        rows.append(row)
        print(f"{k},{non404:.1f},{ok:.1f},{row['loader_cds_ms']:.1f},{row['loader_vhds_ms']:.1f},"
              f"{acked:.1f},{cpu['main']:.1f},{cpu['workers']:.1f},{cpu['other']:.1f},"
              f"\"{json.dumps(d)}\"", flush=True)
    # Over all adds: Envoy's VHDS update_duration sum / count.
    total = deltas(first_stats, settled_stats(first_stats) if not a.stats_per_add else before_stats)

    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait(120)

    med = lambda key: statistics.median(r[key] for r in rows)
    # Envoy's update_duration per VHDS update: the histogram's sum / count deltas, per add.
    upd = {}
    for r in rows:
        for key, v in r["stat_deltas"].items():
            upd.setdefault(key, []).append(v)
    summary = dict(
        n=n, adds=a.adds, idle_cpu_ms=idle, idle_seconds=a.idle_seconds, census={
            k: v for k, v in census.items() if k != "route_related"},
        median={k: med(k) for k in ("non404_ms", "ok_ms", "loader_cds_ms", "loader_vhds_ms",
                                    "acked_ms", "main_cpu_ms", "workers_cpu_ms", "other_cpu_ms")},
        stat_delta_medians={k: statistics.median(v) for k, v in upd.items()},
        stat_deltas_all_adds=total,
        vhds_update_duration_mean_ms=total.get("vhds:update_duration_sum", float("nan"))
        / max(total.get("vhds:update_duration_count", 0), 1),
        envoy_rss_mb=int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{epid}/status").read()).group(1)) / 1024,
        load=open("/proc/loadavg").read().split()[:3],
    )
    print(json.dumps(summary, indent=1))
    out = os.environ.get("VHDS_OUT", ".")
    json.dump(dict(summary=summary, rows=rows, census=census),
              open(f"{out}/vhds_adds_{n}.json", "w"), indent=1)
    if perf:
        for f in ("perf.data",):
            shutil.copy(f"{work}/{f}", f"{out}/vhds_perf_{n}.data")
        log(f"perf data: {out}/vhds_perf_{n}.data")


if __name__ == "__main__":
    main()
