#!/usr/bin/env bash
# The training benchmark: isl (build/bench/bench_train) and PyTorch eager
# (bench/bench_train_torch.py, the test oracle's network) train the same model on the same
# batch, back to back in the same run, for each base depth, crop/batch and label weight;
# then a table of steps/s, CPU-seconds per step and the ratios isl / PyTorch.
#
#   bench/run_train.sh
#
# Environment (defaults in brackets):
#   BUILD_DIR [build]            meson build directory holding bench/bench_train
#   THREADS [2]                  threads of both (isl_train_options_set_threads, torch.set_num_threads)
#   BASES ["100 400"]            base depths
#   CONFIGS ["250:4:2:5 378:2:1:3"]
#                                crop:batch:warmup:steps; crop 250 is the paper's, 378 (136 x 136
#                                outputs per crop) the larger fully convolutional crop
#   LABEL_WEIGHTS ["0.5 1"]      0.5: the paper (label + autoencoder); 1: labels only
#   PYTHON [/usr/bin/python3]
#   OMP_WAIT_POLICY [passive]    (spin-waiting OpenMP teams collapse when cores are shared)
# The defaults took 14 minutes on a 2-core machine with one core taken by another job (less
# when idle); PyTorch needs ~11 GB for base 400 at crop 378. See docs/performance.md.
set -uo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
THREADS=${THREADS:-2}
BASES=${BASES:-"100 400"}
CONFIGS=${CONFIGS:-"250:4:2:5 378:2:1:3"}
LABEL_WEIGHTS=${LABEL_WEIGHTS:-"0.5 1"}
PYTHON=${PYTHON:-/usr/bin/python3}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

die() { echo "run_train.sh: $*" >&2; exit 1; }
[ -d "$BUILD_DIR" ] || die "no build directory $BUILD_DIR (meson setup $BUILD_DIR; or set BUILD_DIR)"
ninja -C "$BUILD_DIR" bench/bench_train >/dev/null || die "ninja -C $BUILD_DIR bench/bench_train failed"
BENCH=$BUILD_DIR/bench/bench_train
[ -x "$BENCH" ] || die "$BENCH not built"
"$PYTHON" -c 'import torch, h5py, numpy' || die "$PYTHON lacks torch, h5py or numpy"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/isl-bench-train.XXXXXX") || die "mktemp failed"
trap 'rm -rf "$tmp"' EXIT

echo "== environment"
echo "date:        $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "host:        $(uname -srm)"
echo "cpu:         $(sed -n "s/^model name[[:space:]]*: //p" /proc/cpuinfo | head -1) (family $(sed -n "s/^cpu family[[:space:]]*: //p" /proc/cpuinfo | head -1), model $(sed -n "s/^model[[:space:]]*: //p" /proc/cpuinfo | head -1)), $(nproc) online"
grep -qw avx512f /proc/cpuinfo && echo "isa:         AVX-512$(grep -qw avx512_bf16 /proc/cpuinfo && echo ', AVX512-BF16')$(grep -qw amx_tile /proc/cpuinfo && echo ', AMX')"
echo "memory:      $(awk '/MemTotal/ {printf "%.1f GB total", $2 / 1048576} /MemAvailable/ {printf ", %.1f GB available", $2 / 1048576}' /proc/meminfo)"
echo "load:        $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at start"
echo "threads:     $THREADS   OMP_WAIT_POLICY=$OMP_WAIT_POLICY"
echo "isl:         $("$BENCH" --version)"
echo "source:      $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- lib include 2>/dev/null || echo " + uncommitted lib/include changes (diff sha1 $(git diff HEAD -- lib include | sha1sum | cut -c1-10))"), $BENCH"
"$PYTHON" - <<'EOF' || die "cannot query torch"
import re, torch
cfg = torch.__config__.show()
dnnl = re.search(r"MKL-DNN v([0-9.]+)", cfg)
cap = re.search(r"CPU capability usage: (\S+)", cfg)
print("pytorch:     %s (oneDNN %s, ATen CPU capability %s)" % (torch.__version__, dnnl.group(1) if dnnl else "?",
                                                           cap.group(1) if cap else "?"))
EOF
echo

failures=0
declare -a rows=()
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# run NAME CMD...: shows the run's output on stderr, returns its figures line; fails loudly.
run() {
  local tag=$1; shift
  echo "+ $*" >&2
  local out rc
  out=$("$@")
  rc=$?
  [ -n "$out" ] && echo "$out" >&2
  if [ $rc -ne 0 ]; then
    echo "run_train.sh: FAILED (exit $rc): $*" >&2
    return 1
  fi
  local line
  line=$(grep -E "^${tag} " <<<"$out" | tail -1)
  [ -n "$line" ] || { echo "run_train.sh: FAILED (no '$tag' line): $*" >&2; return 1; }
  echo "$line"
}

for base in $BASES; do
  for cfg in $CONFIGS; do
    IFS=: read -r crop batch warmup steps <<<"$cfg"
    [ -n "$steps" ] || die "bad CONFIGS entry '$cfg' (want crop:batch:warmup:steps)"
    for w in $LABEL_WEIGHTS; do
      echo "== base $base, crop $crop, batch $batch, label weight $w ($warmup warm-up + $steps timed steps)" >&2
      model=$tmp/model_$base.h5
      isl=$(run isl_train_bench "$BENCH" --base "$base" --crop "$crop" --batch "$batch" \
        --warmup "$warmup" --steps "$steps" --threads "$THREADS" --label-weight "$w" \
        --save-model "$model" --save-batch "$tmp/batch") || { failures=$((failures + 1)); isl=; }
      torch=
      if [ -n "$isl" ]; then
        torch=$(run torch_train_bench "$PYTHON" bench/bench_train_torch.py --model "$model" \
          --batch-prefix "$tmp/batch" --crop "$crop" --batch "$batch" --warmup "$warmup" \
          --steps "$steps" --threads "$THREADS" --label-weight "$w") || { failures=$((failures + 1)); torch=; }
      fi
      rm -f "$tmp"/batch.*
      rows+=("$base|$crop|$batch|$w|$isl|$torch")
      echo >&2
    done
  done
done

echo "load:        $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at end"
echo
echo "== training throughput: isl vs PyTorch eager, same model, batch and $THREADS threads; x = isl / PyTorch"
fmt='%-4s %-4s %-5s %-3s | %7s %7s | %7s %7s | %6s %6s | %7s %7s %6s | %8s %8s | %6s %6s | %s\n'
printf "$fmt" base crop batch w isl_s isl_min trc_s trc_min x x_min isl_cpu trc_cpu x_cpu isl_px/s trc_px/s isl_MB trc_MB "first loss isl / torch"
for r in "${rows[@]}"; do
  IFS='|' read -r base crop batch w isl torch <<<"$r"
  if [ -z "$isl" ] || [ -z "$torch" ]; then
    printf "$fmt" "$base" "$crop" "$batch" "$w" "$(field "$isl" sec_per_step)" "" FAILED "" "" "" "" "" "" "" "" "" "" ""
    continue
  fi
  printf "$fmt" "$base" "$crop" "$batch" "$w" \
    "$(field "$isl" sec_per_step)" "$(field "$isl" sec_per_step_min)" \
    "$(field "$torch" sec_per_step)" "$(field "$torch" sec_per_step_min)" \
    "$(ratio "$(field "$torch" sec_per_step)" "$(field "$isl" sec_per_step)")x" \
    "$(ratio "$(field "$torch" sec_per_step_min)" "$(field "$isl" sec_per_step_min)")x" \
    "$(field "$isl" cpu_sec_per_step)" "$(field "$torch" cpu_sec_per_step)" \
    "$(ratio "$(field "$torch" cpu_sec_per_step)" "$(field "$isl" cpu_sec_per_step)")x" \
    "$(field "$isl" out_px_per_s)" "$(field "$torch" out_px_per_s)" \
    "$(field "$isl" peak_rss_mb)" "$(field "$torch" peak_rss_mb)" \
    "$(field "$isl" loss_first) / $(field "$torch" loss_first)"
done
echo "isl_s, trc_s (PyTorch): wall seconds per step (mean over the timed steps), _min: the fastest step;"
echo "x, x_min: PyTorch's seconds per step over isl's (= isl/PyTorch in steps/s and pixels/s);"
echo "_cpu: user + system CPU seconds of all threads per step, x_cpu their ratio; px/s: output"
echo "pixels per second, batch * (crop - 242)^2 per step (input pixel positions: batch * crop^2);"
echo "MB: peak resident memory of the process;"
echo "first loss: total loss of the first step (before any update), which both must agree on."
if [ $failures -ne 0 ]; then
  echo "run_train.sh: $failures run(s) failed" >&2
  exit 1
fi
