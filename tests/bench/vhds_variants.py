#!/usr/bin/env python3
"""What one route table update costs Envoy per virtual host, for route configurations shaped as the
loader emits them and for variants we could emit instead (BENCHMARKS.md, "Add backend at 100,000:
where Envoy's time goes").

For each variant, one Envoy (static listener; its HTTP connection manager gets the route
configuration over RDS from a file, `path_config_source`) loads a route configuration of N virtual
hosts, then ROUNDS times gets the same configuration plus one virtual host (an "add") and back,
each file renamed into place as Envoy's file watch wants. Per update: from the rename until
Envoy's `http.l.rds.<name>.update_time` (the wall-clock ms it set once the update was applied: the
file watch firing, reading and decoding the file, validation, building the route table and posting
it to the workers; a file subscription records no `update_duration`), and the CPU time of Envoy's main thread and of its
workers (/proc/<pid>/task/<tid>/schedstat) from the rename until `update_success` moved.

Files are binary protobuf (`.pb`, a DiscoveryResponse encoded here by hand: a few fields of
RouteConfiguration, VirtualHost, Route, RouteMatch and RouteAction) so that decoding is cheap, as
over gRPC; `--json` also runs the loader's shape as a `.json` file to show what JSON parsing adds.

The loader's shape (`backendtls-loader render --config-dir DIR -o json` of a generated directory,
and what it serves over VHDS): route configuration `gateway_infra_bench_8080` with
`ignore_port_in_host_matching: true`; per backend one virtual host named `<route config>/<host>`
with `domains: [<host>]` and one route `{match: {prefix: /}, name:
<ns>/<route>/rule/0/match/0, route: {cluster: kube_<ns>_<svc>_443}}`.

Usage: tests/bench/vhds_variants.py ENVOY N [--rounds 5] [--variants a,b,...] [--json]
  e.g. tests/bench/vhds_variants.py \
       /work/main/.venv/lib/python3.11/site-packages/envoy/_bin/envoy 50000
Work files go to /tmp/vhds-variants.*, removed at the end. Prints one CSV row per variant.
"""

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, get_text, thread_class, threads

RC = "gateway_infra_bench_8080"
TYPE_URL = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def host(i):
    return f"svc-{i:05d}.team-{i // 1000:03d}.bench.example"


def loader_vhost(i):
    ns, svc = f"team-{i // 1000:03d}", f"svc-{i:05d}"
    return {
        "name": f"{RC}/{host(i)}",
        "domains": [host(i)],
        "routes": [{"match": {"prefix": "/"}, "name": f"{ns}/{svc}/rule/0/match/0",
                    "route": {"cluster": f"kube_{ns}_{svc}_443"}}],
    }


def short_name(i):
    v = loader_vhost(i)
    v["name"] = f"{i:x}"
    return v


def no_route_name(i):
    v = loader_vhost(i)
    del v["routes"][0]["name"]
    return v


def minimal(i):
    # Everything that can be short is: vhost name, no route name, short cluster name.
    return {"name": f"{i:x}", "domains": [host(i)],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": f"c{i:x}"}}]}


def no_routes(i):
    # A virtual host without routes (what is left when routes cost nothing).
    return {"name": f"{RC}/{host(i)}", "domains": [host(i)]}


# variant -> (virtual host of index i, ignore_port_in_host_matching, hosts per virtual host)
VARIANTS = {
    "loader": (loader_vhost, True, 1),
    "no_ignore_port": (loader_vhost, False, 1),
    "short_vhost_name": (short_name, True, 1),
    "no_route_name": (no_route_name, True, 1),
    "minimal": (minimal, False, 1),
    "no_routes": (no_routes, True, 1),
    "10_domains_per_vhost": (loader_vhost, True, 10),
}


def route_config(variant, n):
    """The route configuration of n hosts in this variant, as a dict (proto3 JSON)."""
    make, ignore_port, per = VARIANTS[variant]
    vhosts = []
    for first in range(0, n, per):
        v = make(first)
        v["domains"] = [host(i) for i in range(first, min(first + per, n))]
        vhosts.append(v)
    rc = {"name": RC, "virtual_hosts": vhosts}
    if ignore_port:
        rc["ignore_port_in_host_matching"] = True
    return rc


# Protobuf wire format, for the few fields used above.
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field, payload):
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def string(field, s):
    return ld(field, s.encode())


def encode_route(r):
    out = ld(1, string(1, r["match"]["prefix"]))  # Route.match, RouteMatch.prefix
    out += ld(2, string(1, r["route"]["cluster"]))  # Route.route, RouteAction.cluster
    if "name" in r:
        out += string(14, r["name"])  # Route.name
    return out


def encode_vhost(v):
    out = string(1, v["name"])
    out += b"".join(string(2, d) for d in v["domains"])
    out += b"".join(ld(3, encode_route(r)) for r in v.get("routes", []))
    return out


def encode_rc(rc):
    out = string(1, rc["name"])
    out += b"".join(ld(2, encode_vhost(v)) for v in rc["virtual_hosts"])
    if rc.get("ignore_port_in_host_matching"):
        out += varint(14 << 3 | 0) + varint(1)
    return out


def discovery_response(rc, version, fmt):
    if fmt == "json":
        return json.dumps({"version_info": version, "type_url": TYPE_URL,
                           "resources": [dict({"@type": TYPE_URL}, **rc)]}).encode()
    anything = string(1, TYPE_URL) + ld(2, encode_rc(rc))
    return string(1, version) + ld(2, anything) + string(4, TYPE_URL)



def admin(port, path):
    return get_text(port, path) or ""


def cpu(pid):
    """CPU ms of Envoy's main thread and of its workers."""
    ms = {"main": 0.0, "workers": 0.0, "other": 0.0}
    for tid, (comm, ns) in threads(pid).items():
        ms[thread_class(pid, tid, comm)] += ns / 1e6
    return ms["main"], ms["workers"]


def rds_stats(port):
    text = admin(port, "/stats/prometheus?filter=http.l.rds")
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"envoy_http_rds_(\w+?)(\{.*\})? (\S+)$", line)
        if m and "_bucket" not in m.group(1):
            out[m.group(1)] = float(m.group(3))
    return out


def measure(envoy, variant, n, rounds, fmt, work):
    path = f"{work}/rds.{'pb' if fmt == 'pb' else 'json'}"
    a = route_config(variant, n)
    b = route_config(variant, n + VARIANTS[variant][2])  # one more virtual host
    eport = free_port()
    boot = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": eport}}},
        "node": {"id": "vhds-variants", "cluster": "vhds-variants"},
        "stats_flush_on_admin": True,
        "static_resources": {"listeners": [{
            "name": "l",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network."
                             "http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "l",
                    "rds": {"route_config_name": RC, "config_source": {
                        "path_config_source": {"path": path}, "resource_api_version": "V3"}},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                }}]}],
        }]},
    }
    json.dump(boot, open(f"{work}/bootstrap.json", "w"))
    version = [0]

    def install(rc):
        version[0] += 1
        tmp = f"{work}/next"
        open(tmp, "wb").write(discovery_response(rc, str(version[0]), fmt))
        return tmp

    size = len(discovery_response(a, "0", fmt))
    os.rename(install(a), path)
    t = time.monotonic()
    proc = subprocess.Popen([envoy, "-c", f"{work}/bootstrap.json", "--concurrency", "2",
                             "--base-id", str(random.randint(10000, 60000)), "--log-level", "warn"],
                            stdout=open(f"{work}/envoy.log", "w"), stderr=subprocess.STDOUT)
    try:
        while admin(eport, "/ready") != "LIVE\n":
            if proc.poll() is not None:
                sys.exit(open(f"{work}/envoy.log").read())
            time.sleep(0.05)
        start_s = time.monotonic() - t
        rows = []
        for r in range(2 * rounds):
            rc = b if r % 2 == 0 else a
            tmp = install(rc)
            before = rds_stats(eport)
            c0 = cpu(proc.pid)
            t = time.monotonic()
            t_unix = time.time()
            os.rename(tmp, path)
            while True:
                now = rds_stats(eport)
                if now.get("update_rejected", 0) > before.get("update_rejected", 0):
                    sys.exit(f"{variant}: rejected\n" + open(f"{work}/envoy.log").read()[-3000:])
                if now.get("update_success", 0) > before.get("update_success", 0):
                    break
                time.sleep(0.01)
            wall = (time.monotonic() - t) * 1000
            c1 = cpu(proc.pid)
            rows.append(dict(
                update_ms=now["update_time"] - t_unix * 1000,
                wall_ms=wall, main_ms=c1[0] - c0[0], workers_ms=c1[1] - c0[1]))
        rss = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{proc.pid}/status").read()).group(1))
    finally:
        proc.terminate()
        proc.wait(60)
    med = lambda k: statistics.median(x[k] for x in rows)
    return dict(variant=variant, fmt=fmt, n=n, vhosts=len(a["virtual_hosts"]), file_bytes=size,
                start_s=start_s, update_ms=med("update_ms"), wall_ms=med("wall_ms"),
                main_ms=med("main_ms"), workers_ms=med("workers_ms"), rss_mb=rss / 1024)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("envoy")
    ap.add_argument("n", type=int)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="vhds-variants.", dir="/tmp")
    try:
        print("variant,format,hosts,vhosts,file_bytes,start_s,update_ms,wall_ms,main_cpu_ms,"
              "workers_cpu_ms,main_us_per_vhost,main_us_per_host,envoy_rss_mb", flush=True)
        runs = [(v, "pb") for v in a.variants.split(",")]
        if a.json:
            runs.append(("loader", "json"))
        for variant, fmt in runs:
            r = measure(a.envoy, variant, a.n, a.rounds, fmt, work)
            print(f"{variant},{fmt},{r['n']},{r['vhosts']},{r['file_bytes']},{r['start_s']:.2f},"
                  f"{r['update_ms']:.1f},{r['wall_ms']:.1f},{r['main_ms']:.1f},"
                  f"{r['workers_ms']:.1f},{1000 * r['main_ms'] / r['vhosts']:.2f},"
                  f"{1000 * r['main_ms'] / r['n']:.2f},"
                  f"{r['rss_mb']:.0f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
