#!/bin/bash
# The serving loader's first build (BENCHMARKS.md, "Translation and snapshots at the cost of the
# change"): serve DIR (already generated, e.g. by rebuild_phases.sh), print the seconds from start
# until /readyz answers (the first snapshot is published), the first build's `rebuild phases`
# debug line (reloaded, resolved_at, translated_at, elapsed) and the peak RSS.
# Usage: tests/bench/first_snapshot.sh LOADER DIR
set -euo pipefail
loader=$1 dir=$2 pid=
log=$(mktemp)
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -f "$log"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
admin=$(port)
start=$(date +%s.%N)
RUST_LOG=backendtls_loader=debug "$loader" serve --config-dir "$dir" --xds-address "127.0.0.1:$(port)" \
    --admin-address "127.0.0.1:$admin" >"$log" 2>&1 &
pid=$!
until curl -sf "127.0.0.1:$admin/readyz" >/dev/null; do
    kill -0 $pid || { cat "$log"; exit 1; }
    sleep 0.05
done
end=$(date +%s.%N)
echo "ready_s,$(python3 -c "print(round($end - $start, 2))"),load,$(cut -d' ' -f1-3 /proc/loadavg)"
grep -m1 "rebuild phases" "$log" | sed 's/.*rebuild phases//'
echo "peak_mb,$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' /proc/$pid/status)"
