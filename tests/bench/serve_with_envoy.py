#!/usr/bin/env python3
"""The serving loader's resident memory alone, with a real Envoy synced over delta ADS, and after
that Envoy left (BENCHMARKS.md, "Serving with an Envoy connected"), ROUNDS times (default 1).

Usage: tests/bench/serve_with_envoy.py LOADER DIR [loader serve flags...]
DIR is a generated directory (`backendtls-gen-backends DIR N`). Prints one line per step:
VmRSS and VmHWM in MB. Envoy is `envoy` from the repository's .venv (or $ENVOY).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, get_text

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENVOY = os.environ.get("ENVOY", os.path.join(ROOT, ".venv", "bin", "envoy"))


def memory_mb(pid):
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines())
    return tuple(int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM"))


def poll(what, check, process):
    """Polls `check` every 0.2 s until it is true; fails if `process` exits meanwhile."""
    while not check():
        if process.poll() is not None:
            sys.exit(f"exited while waiting for {what}")
        time.sleep(0.2)


def envoys(admin):
    body = get_text(admin, "/xds")
    return json.loads(body) if body else {"envoys": []}


def main():
    loader, directory, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    xds, admin = free_port(), free_port()
    log = tempfile.NamedTemporaryFile(prefix="serve-with-envoy-", suffix=".log", delete=False)
    served = subprocess.Popen(
        [loader, "serve", "--config-dir", directory, "--xds-address", f"127.0.0.1:{xds}",
         "--admin-address", f"127.0.0.1:{admin}", *extra], stdout=log, stderr=log)
    try:
        started = time.monotonic()
        poll("/readyz", lambda: get_text(admin, "/readyz") is not None, served)
        print(f"alone (ready after {time.monotonic() - started:.1f} s): "
              f"RSS {memory_mb(served.pid)[0]} MB, HWM {memory_mb(served.pid)[1]} MB", flush=True)
        for round in range(int(os.environ.get("ROUNDS", "1"))):
            envoy_admin = free_port()
            bootstrap = subprocess.run(
                [loader, "bootstrap", "--xds-address", f"127.0.0.1:{xds}", "--admin-address",
                 f"127.0.0.1:{envoy_admin}", "--node-id", f"round-{round}"],
                capture_output=True, text=True, check=True).stdout
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
                f.write(bootstrap)
            envoy = subprocess.Popen(
                [ENVOY, "-c", f.name, "--concurrency", "1", "--base-id", str(free_port()),
                 "-l", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started = time.monotonic()

            def synced():
                x = envoys(admin)
                return any(e.get("node") == f"round-{round}"
                           and e.get("acked_version") == x.get("snapshot_version")
                           for e in x["envoys"])
            poll("the Envoy to acknowledge everything", synced, envoy)
            rss, hwm = memory_mb(served.pid)
            print(f"round {round}: Envoy synced after {time.monotonic() - started:.1f} s: "
                  f"RSS {rss} MB, HWM {hwm} MB", flush=True)
            envoy.terminate()
            envoy.wait()
            poll("the stream to close", lambda: not envoys(admin)["envoys"], served)
            rss, hwm = memory_mb(served.pid)
            print(f"round {round}: Envoy gone: RSS {rss} MB, HWM {hwm} MB", flush=True)
            os.unlink(f.name)
    finally:
        served.terminate()
        served.wait()
        os.unlink(log.name)


if __name__ == "__main__":
    main()
