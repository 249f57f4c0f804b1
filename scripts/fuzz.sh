#!/usr/bin/env bash
# Fuzzes isl's file readers with libFuzzer under ASan + UBSan (docs/fuzzing.md): each
# harness of tests/fuzz/ for FUZZ_SECONDS (default 60), one process at a time, niced.
# New crashes are minimized and copied into tests/fuzz/crashes/<harness>/, which every
# build replays as a test (fix the bug, then commit the input). The corpus grown by
# fuzzing stays in the build directory, so runs add up; seeds are tests/fuzz/corpus/.
#
#   scripts/fuzz.sh [HARNESS...]      harnesses: tiff_stack model_load dataset_load (all)
#   FUZZ_SECONDS=600 scripts/fuzz.sh model_load
#   FUZZ_BUILD=dir    build directory (default build-fuzz; configured with clang if new)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
build=${FUZZ_BUILD:-build-fuzz}
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(tiff_stack model_load dataset_load)

scripts/setup-debian.sh >/dev/null
if [ ! -d "$build" ]; then
  CC=clang meson setup "$build" --buildtype=debugoptimized -Dfuzz=true \
    -Db_sanitize=address,undefined -Db_lundef=false -Dpython=disabled -Djava=disabled \
    -Ddocs=disabled
fi
targets=()
for h in "${harnesses[@]}"; do targets+=("tests/fuzz/fuzz_$h"); done
nice ninja -C "$build" "${targets[@]}"

# Leaks are bugs too (lsan.supp lists HDF5's own); UBSan findings stop the run like
# ASan's; a huge allocation returns NULL (the reader must cope) instead of aborting.
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export LSAN_OPTIONS=suppressions=$PWD/tests/fuzz/lsan.supp
export OMP_NUM_THREADS=1

status=0
for h in "${harnesses[@]}"; do
  bin="$build/tests/fuzz/fuzz_$h"
  work="$build/fuzz-work/$h"
  mkdir -p "$work/corpus" "$work/artifacts" "tests/fuzz/crashes/$h"
  echo "fuzz: $h for ${seconds}s ($(lscpu | sed -n 's/^Model name: *//p'))"
  # One process (fork mode re-runs the corpus per job: a third of the speed here); after
  # a crash it starts again until the time is up (at most 100 times: a crash in the
  # corpus itself would otherwise repeat).
  : >"$work/log.txt"
  end=$((SECONDS + seconds))
  for ((restart = 0; restart < 100 && SECONDS < end; restart++)); do
    nice "$bin" "$work/corpus" "tests/fuzz/corpus/$h" -timeout=20 -rss_limit_mb=2560 \
      -max_total_time=$((end - SECONDS)) -artifact_prefix="$work/artifacts/" \
      >>"$work/log.txt" 2>&1 && break
  done
  # Executions: the last "#N" status line of each run (a run starts with "INFO: Seed:").
  runs=$(awk '/^INFO: Seed:/ {sum += last; last = 0} /^#[0-9]+/ {last = substr($1, 2)}
              END {print sum + last}' "$work/log.txt")
  cov=$(grep -o 'cov: [0-9]*' "$work/log.txt" | tail -1)
  echo "fuzz: $h: ${runs:-0} executions, $cov, corpus $(ls "$work/corpus" | wc -l) inputs"
  shopt -s nullglob
  for a in "$work/artifacts"/crash-* "$work/artifacts"/leak-* "$work/artifacts"/oom-* \
           "$work/artifacts"/timeout-*; do
    name=$(basename "$a")
    dest="tests/fuzz/crashes/$h/$name"
    # Known already: minimized into crashes/, or kept as is in hdf5-crashes/ (README there).
    [ -e "$dest" ] && continue
    sha1sum "tests/fuzz/crashes/$h"/* "tests/fuzz/hdf5-crashes/$h"/* 2>/dev/null |
      grep -q "^${name#*-} " && continue
    # Crashes and leaks: the smallest input that still fails, within two minutes (falls
    # back to the original; timeout ends the minimizer's whole process group); a timeout
    # or out-of-memory input is kept as it is.
    case $name in
      crash-* | leak-*)
        timeout 120 "$bin" -minimize_crash=1 -runs=20000 -timeout=20 -max_total_time=60 \
          -exact_artifact_path="$dest" "$a" >"$work/minimize-$name.txt" 2>&1 || true ;;
    esac
    [ -s "$dest" ] || cp "$a" "$dest"
    echo "fuzz: $h: NEW $name -> $dest"
    status=1
  done
  shopt -u nullglob
done
exit $status
