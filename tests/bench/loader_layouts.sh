#!/bin/sh
# check and render of the loader at several sizes and namespace layouts (BENCHMARKS.md, "Loader
# layouts"). Usage: tests/bench/loader_layouts.sh LOADER GEN OUT_DIR [SIZES] [LAYOUTS]
# LAYOUTS: per<N> (N backends per namespace), ns<N> (N namespaces), f<N> (N namespaces, one
# multi-document file each). Prints CSV: layout,backends,command,wall_s,user_s,sys_s,peak_mb.
set -eu
loader=$1 gen=$2 out=$3
sizes=${4:-10000,20000,40000,100000}
layouts=${5:-per100,ns1,ns50,ns10000,f50}
mkdir -p "$out"
echo "layout,backends,command,wall_s,user_s,sys_s,peak_mb"
for layout in $(echo "$layouts" | tr , ' '); do
    for n in $(echo "$sizes" | tr , ' '); do
        dir="$out/$layout-$n"
        rm -rf "$dir"
        case $layout in
            f*) "$gen" --layout "ns${layout#f}" --file-per-namespace "$dir" "$n" ;;
            *) "$gen" --layout "$layout" "$dir" "$n" ;;
        esac
        for command in check render; do
            /usr/bin/time -f "$layout,$n,$command,%e,%U,%S,%M" -o "$out/time" \
                "$loader" "$command" --config-dir "$dir" -o json >/dev/null || true
            awk -F, '{ printf "%s,%s,%s,%s,%s,%s,%.0f\n", $1, $2, $3, $4, $5, $6, $7 / 1024 }' "$out/time"
        done
        rm -rf "$dir"
    done
done
