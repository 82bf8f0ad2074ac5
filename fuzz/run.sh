#!/usr/bin/env bash
# `make fuzz`: every fuzz target under AFL++ for FUZZ_SECONDS (default 60) each, on the stable
# toolchain, then one line per target with executions, corpus size, crashes and hangs. Exits 1
# when any target crashed; the crashing inputs are kept in target/fuzz/<target>/crashes/ (add
# them to fuzz/corpus/<target>/ once fixed, so `make unit` replays them).
#
#   FUZZ_SECONDS=300 make fuzz                 # a longer run
#   FUZZ_TARGETS="pipeline x509_differential" make fuzz
#   FUZZ_MINIMIZE=1 make fuzz                  # then afl-cmin the queue into fuzz/corpus/<target>/
#
# Needs cargo-afl (installed from crates.io on first use; it builds AFL++ from the source it
# ships, with the system C compiler: no Debian afl++ package and no nightly toolchain).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${FUZZ_SECONDS:-60}
base_target_dir=${CARGO_TARGET_DIR:-$root/target}
# Instrumented builds get their own target directory: their flags differ from every other build.
afl_target_dir=$base_target_dir/afl
out_root=$base_target_dir/fuzz
bin=$afl_target_dir/fuzz/backendtls-fuzz-afl
cargo=${CARGO:-cargo}

if ! command -v cargo-afl >/dev/null; then
  "$cargo" install cargo-afl --version 0.18.2 --locked
fi
# Builds AFL++ for this rustc once; it refuses (harmlessly) when that is already done.
"$cargo" afl config --build >/dev/null 2>&1 || true

(cd "$root" && CARGO_TARGET_DIR=$afl_target_dir "$cargo" afl build --profile fuzz \
  -p backendtls-fuzz --features afl --bin backendtls-fuzz-afl)

if [[ -n ${FUZZ_TARGETS:-} ]]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  # The binary lists its targets in its usage line.
  targets=($({ "$bin" 2>&1 || true; } | sed -n 's/.*targets: //p' | tr -d ','))
fi

# No UI, no CPU frequency or core-dump checks (containers), one core each, bounded by -V.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
  AFL_NO_AFFINITY=1 AFL_FAST_CAL=1
failed=0
summary=()
for target in "${targets[@]}"; do
  corpus=$root/fuzz/corpus/$target
  out=$out_root/$target
  rm -rf "$out"
  mkdir -p "$out"
  echo "== $target: ${seconds}s"
  # -t: a run slower than 1 s counts as a hang; -c -: no CMPLOG binary (one instance).
  "$cargo" afl fuzz -V "$seconds" -t 1000 -c - -i "$corpus" -o "$out" -- "$bin" "$target" \
    >"$out/afl.log" 2>&1 || { echo "afl-fuzz failed for $target:"; tail -20 "$out/afl.log"; exit 2; }
  stats=$out/default/fuzzer_stats
  stat() { sed -n "s/^$1 *: //p" "$stats"; }
  execs=$(stat execs_done)
  crashes=$(stat saved_crashes)
  hangs=$(stat saved_hangs)
  corpus_count=$(stat corpus_count)
  per_second=$(stat execs_per_sec)
  if [[ $crashes != 0 ]]; then
    failed=1
    mkdir -p "$out/crashes"
    cp "$out"/default/crashes/id:* "$out/crashes/" 2>/dev/null || true
  fi
  summary+=("$(printf '%-18s %12s execs %9s/s  corpus %5s  crashes %s  hangs %s' \
    "$target" "$execs" "$per_second" "$corpus_count" "$crashes" "$hangs")")
  if [[ ${FUZZ_MINIMIZE:-0} == 1 ]]; then
    # The smallest set of inputs with the same coverage, named by content.
    minimized=$out/minimized
    rm -rf "$minimized"
    "$cargo" afl cmin -i "$out/default/queue" -o "$minimized" -- "$bin" "$target" >"$out/cmin.log" 2>&1
    # Seeds (seed-*) and fixed crashes (crash-*) stay as named; the rest is replaced.
    find "$corpus" -maxdepth 1 -type f -name 'input-*' -delete
    for file in "$minimized"/*; do
      case $file in *orig:seed-* | *orig:crash-*) continue ;; esac
      cp "$file" "$corpus/input-$(sha1sum "$file" | cut -c1-16)"
    done
  fi
done

echo
echo "fuzzing: ${seconds}s per target (AFL++ via cargo-afl $(cargo afl --version 2>/dev/null | awk '{print $2}'))"
printf '%s\n' "${summary[@]}"
if [[ $failed == 1 ]]; then
  echo "CRASHES: inputs in $out_root/<target>/crashes/" >&2
  exit 1
fi
