#!/usr/bin/env bash
# One run with every core, or one run per core? Times build/bench/bench_train in the
# folds' and the bundled model's recipe three ways, alternated ROUNDS times in one run:
#   1 thread alone, N threads alone (N = the cores), N one-thread runs side by side
#   (each pinned to its own core with taskset)
# and prints seconds per step and the throughput of each way (steps/s summed over the
# runs) as a ratio to one thread alone. docs/performance.md, "One run per core or one run
# with every core".
#
#   bench/run_threads.sh
#
# Environment (defaults in brackets): BUILD_DIR [build], ROUNDS [3], STEPS [15],
# WARMUP [3], CORES [nproc], OMP_WAIT_POLICY [passive],
# ARGS [the recipe: --base 60 --crop 378 --batch 1 --label-weight 1 --freeze-bn 1
#       --stochastic-depth 0.2 --keep-activations 1]
set -euo pipefail
cd "$(dirname "$0")/.."

bench=${BUILD_DIR:-build}/bench/bench_train
rounds=${ROUNDS:-3}
cores=${CORES:-$(nproc)}
read -r -a args <<< "${ARGS:---base 60 --crop 378 --batch 1 --label-weight 1 --freeze-bn 1 --stochastic-depth 0.2 --keep-activations 1}"
args+=(--steps "${STEPS:-15}" --warmup "${WARMUP:-3}")
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
[ -x "$bench" ] || { echo "run_threads: $bench not built (ninja -C ${BUILD_DIR:-build})" >&2; exit 1; }
command -v taskset > /dev/null || { echo "run_threads: taskset missing (util-linux)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Median seconds per step of one bench_train run: bench_train prints it as
# sec_per_step_median=S on its last line.
step_time() { sed -n 's/.* sec_per_step_median=\([0-9.]*\).*/\1/p' "$1"; }

echo "run_threads: $(lscpu | sed -n 's/^Model name: *//p'), $cores cores; bench_train ${args[*]}"
printf '%-6s %-12s %-22s %-24s %s\n' round "1 thread" "$cores threads" "$cores x 1 thread" \
  "throughput vs 1 thread: $cores threads / $cores runs"
for round in $(seq "$rounds"); do
  OMP_NUM_THREADS=1 "$bench" "${args[@]}" --threads 1 > "$tmp/one" 2> /dev/null
  OMP_NUM_THREADS=$cores "$bench" "${args[@]}" --threads "$cores" > "$tmp/all" 2> /dev/null
  for c in $(seq 0 $((cores - 1))); do
    OMP_NUM_THREADS=1 taskset -c "$c" "$bench" "${args[@]}" --threads 1 > "$tmp/side$c" 2> /dev/null &
  done
  wait
  one=$(step_time "$tmp/one"); all=$(step_time "$tmp/all")
  side=$(for c in $(seq 0 $((cores - 1))); do step_time "$tmp/side$c"; done | paste -sd' ')
  awk -v r="$round" -v one="$one" -v all="$all" -v side="$side" 'BEGIN {
    n = split(side, s, " "); rate = 0
    for (i = 1; i <= n; i++) rate += 1 / s[i]
    printf "%-6d %-12s %-22s %-24s %.2fx / %.2fx\n", r, one " s", all " s", side " s",
      one / all, rate * one }'
done
