#!/bin/bash
# The serving loader's own time per change, without Envoy (BENCHMARKS.md, "Incremental
# resolution"): serve a generated directory, then ROUNDS times switch one backend's CA to another
# valid CA and back, add a backend file and remove it, each after the previous rebuild was logged.
# Prints one line per change: what, reload, resolve and whole rebuild (until the snapshot is
# published) in ms, and how it was resolved; then the loader's peak RSS.
# Usage: tests/bench/rebuild_phases.sh LOADER GEN DIR N [ROUNDS]
set -euo pipefail
loader=$1 gen=$2 dir=$3 n=$4 rounds=${5:-5}
# Beside DIR (same file system, so that a rename into DIR is one event), not inside it.
work=$(mktemp -d "$(dirname "$dir")/rebuild-phases.XXXX") pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
rm -rf "$dir"
"$gen" "$dir" "$n" >/dev/null
file=$(find "$dir" -path '*team-*' -name '*.yaml' -print -quit)
cp "$file" "$work/orig.yaml"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/ca.key" \
    -out "$work/ca.pem" -subj /CN=other-ca -days 30 2>/dev/null
python3 - "$work" <<'EOF'
import re, sys
work = sys.argv[1]
text = open(f"{work}/orig.yaml").read()
pem = open(f"{work}/ca.pem").read().strip().split("\n")
swap = lambda m: m.group(1) + "".join(f"    {line}\n" for line in pem)
open(f"{work}/alt.yaml", "w").write(re.sub(r"(  ca.crt: \|\n)((?:    .*\n)+)", swap, text, count=1))
name = re.search(r"name: (svc-\d+)", text).group(1)
open(f"{work}/new.yaml", "w").write(text.replace(name, name.replace("svc-", "svc-new-")))
EOF
added="$(dirname "$file")/added-backend.yaml"
log="$work/serve.log"
source "$(dirname "$0")/serve_loader.sh"
serve_loader "$loader" "$dir" "$log"
builds() { grep -c "rebuild phases" "$log" || true; }
change() { # what, then the command that makes the change
    local what=$1 before
    before=$(builds)
    shift
    "$@"
    until [ "$(builds)" -gt "$before" ]; do sleep 0.05; done
    grep "rebuild phases" "$log" | tail -1 | python3 -c '
import re, sys
line = sys.stdin.read()
ms = lambda key: (lambda v, u: float(v) * {"s": 1000, "ms": 1, "µs": 0.001}[u])(*re.search(key + r"=([0-9.]+)(s|ms|µs)", line).groups())
build = re.search(r"build=(.*)", line)
build = build.group(1) if build else "Full (a loader without incremental resolution)"
reload, resolved, whole = ms("reloaded"), ms("resolved_at"), ms("elapsed")
print(f"{sys.argv[1]},{reload:.1f},{resolved - reload:.1f},{whole:.1f},{build}")' "$what"
}
echo "change,reload_ms,resolve_ms,rebuild_ms,build"
# Written aside and renamed into place, as editors and `kubectl cp` do: one event, whole content.
install() { cp "$1" "$work/next.yaml" && mv "$work/next.yaml" "$2"; }
for _ in $(seq "$rounds"); do
    change ca install "$work/alt.yaml" "$file"
    change ca install "$work/orig.yaml" "$file"
    change add install "$work/new.yaml" "$added"
    change remove rm "$added"
done
echo "peak_mb,$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' /proc/$pid/status)"
