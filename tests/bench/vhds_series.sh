#!/bin/bash
# Runs tests/bench/vhds_adds.py at several N, one after another (one loader + Envoy at a time),
# keeping each run's CSV and summary in OUT (vhds_adds_N.csv / .json).
# Usage: tests/bench/vhds_series.sh LOADER GEN ENVOY OUT N... [-- extra vhds_adds.py args]
#   e.g. tests/bench/vhds_series.sh /work/bench100k/loader-final \
#        /work/baseline/backendtls-gen-backends \
#        /work/main/.venv/lib/python3.11/site-packages/envoy/_bin/envoy /tmp/vhds-out \
#        10000 25000 50000 100000
set -euo pipefail
loader=$1 gen=$2 envoy=$3 out=$4
shift 4
sizes=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do sizes+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
mkdir -p "$out"
for n in "${sizes[@]}"; do
    echo "== N=$n $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    VHDS_OUT=$out "$(dirname "$0")/vhds_adds.py" "$loader" "$gen" "$envoy" "$n" "$@" \
        >"$out/vhds_adds_$n.csv" 2>"$out/vhds_adds_$n.log"
    sed -n '/^add,/,/^{/p' "$out/vhds_adds_$n.csv" | cut -d, -f1-9 >&2
done
