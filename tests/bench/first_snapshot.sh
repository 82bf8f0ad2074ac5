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
source "$(dirname "$0")/serve_loader.sh"
start=$(date +%s.%N)
serve_loader "$loader" "$dir" "$log"
end=$(date +%s.%N)
echo "ready_s,$(python3 -c "print(round($end - $start, 2))"),load,$(cut -d' ' -f1-3 /proc/loadavg)"
grep -m1 "rebuild phases" "$log" | sed 's/.*rebuild phases//'
echo "peak_mb,$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' /proc/$pid/status)"
