#!/usr/bin/env bash
# The prediction benchmark: isl (FP32, then bf16) and the same network in PyTorch eager
# (tests/oracle/isl_torch.py) on the same machine in the same run; prints each run's
# figures and the ratios. Takes several minutes (the PyTorch pass alone needs ~15 GB).
#   bench/run.sh [SIZE=1024] [BASE=400] [THREADS=2]
# BENCH_JOBS selects runs (default "isl_fp32 torch isl_bf16"); BUILD_DIR the build (build).
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1024}
base=${2:-400}
threads=${3:-2}
jobs=" ${BENCH_JOBS:-isl_fp32 torch isl_bf16} "
build=${BUILD_DIR:-build}
ninja -C "$build" bench/bench_predict >/dev/null

# Shows a run's output on stderr and returns its last figures line.
run() {
  echo "+ $*" >&2
  local out
  out=$("$@")
  echo "$out" >&2
  grep -E '^(isl|torch)_bench' <<<"$out" | tail -1
}

isl_fp32= torch= isl_bf16=
[[ $jobs == *" isl_fp32 "* ]] &&
  isl_fp32=$(run "$build"/bench/bench_predict --base "$base" --size "$size" --threads "$threads" --repeat 2)
[[ $jobs == *" torch "* ]] &&
  torch=$(run /usr/bin/python3 tests/oracle/isl_torch.py bench --base "$base" --size "$size" --threads "$threads")
[[ $jobs == *" isl_bf16 "* ]] &&
  isl_bf16=$(run "$build"/bench/bench_predict --base "$base" --size "$size" --threads "$threads" --repeat 2 \
    --precision bf16 --peak-gflops 666 || true)

field() { sed -n "s/.* $2=\([0-9.]*\).*/\1/p" <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "size ${size}x${size}, base $base, 3 label heads, $threads threads"
printf '%-12s %10s %12s %12s %10s\n' run seconds cpu_seconds peak_rss_mb GFLOP/s
for name in isl_fp32 torch isl_bf16; do
  line=${!name}
  [ -n "$line" ] || continue
  printf '%-12s %10s %12s %12s %10s\n' "$name" "$(field "$line" seconds)" \
    "$(field "$line" cpu_seconds)" "$(field "$line" peak_rss_mb)" "$(field "$line" gflops)"
done
if [ -n "$torch" ]; then
  [ -n "$isl_fp32" ] && echo "speed-up of isl FP32 over PyTorch eager: $(ratio "$(field "$torch" seconds)" "$(field "$isl_fp32" seconds)")x"
  [ -n "$isl_bf16" ] && echo "speed-up of isl bf16 over PyTorch eager: $(ratio "$(field "$torch" seconds)" "$(field "$isl_bf16" seconds)")x"
fi
if [ -n "$isl_fp32" ] && [ -n "$isl_bf16" ]; then
  echo "speed-up of isl bf16 over isl FP32: $(ratio "$(field "$isl_fp32" seconds)" "$(field "$isl_bf16" seconds)")x" \
    "in seconds, $(ratio "$(field "$isl_fp32" cpu_seconds)" "$(field "$isl_bf16" cpu_seconds)")x in CPU-seconds"
fi
exit 0
