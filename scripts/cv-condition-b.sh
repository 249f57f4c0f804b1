#!/usr/bin/env bash
# Cross-validates a training recipe on the real well in ../shared/data/condition_b_well_a4
# over vertical strips of its labelled columns 0..639 (docs/training.md, "Honest
# validation"): fold k holds out columns 160k .. 160k + 159 (all rows) and, with
# `isl train --validation-margin 121`, keeps the targets within 121 pixels of the strip out
# of training as well, so no trained output's receptive field reaches a held-out pixel.
# Every fold and seed is a separate run under $ISL_RUN_DIR/fold<k>-seed<s>; run the script
# again after an interruption and each run resumes from its checkpoint. Afterwards
# examples/cv_report.py predicts each fold's strip and reports mean and spread.
#
#   FOLDS="0 1 2 3" SEEDS="1 2" scripts/cv-condition-b.sh
#
# The recipe is set by environment variables (defaults: the frozen recipe of
# docs/training.md, that of the bundled model): BASE, BATCH, CROP, STEPS (default 1,200),
# LR, LR_DROP (STEP:RATE, empty for none; default 1e-4 for the last quarter of the
# steps), BN_ARGS (how batch norms train; default frozen statistics estimated over 50
# crops, and the mean of the weights of the second half; empty: batch statistics),
# BN_DECAY, LABEL_WEIGHT, STOCHASTIC_DEPTH (default 0.2 since 0.16.1), AUGMENT_ARGS,
# EXTRA_ARGS (more `isl train` options), THREADS (default 1), KEEP_ACTIVATIONS (default 1:
# `isl train --keep-activations`, the same models about 5% sooner for 1.8 GB a run instead
# of 1.2; 0 for an isl before 0.17), ISL (the isl binary). Older
# recipes, all with STOCHASTIC_DEPTH=0: that of 0.10.3 to 0.16.0 (nothing else); the
# frozen recipe until 0.10.2: STEPS=600; the fast recipe (batch statistics): STEPS=600
# LR=3e-3 LR_DROP=450:3e-4 BN_ARGS=; the plain recipe of issue #15: STEPS=1100 LR=3e-4
# LR_DROP= BN_ARGS=
set -euo pipefail
cd "$(dirname "$0")/.."

data=${ISL_SHARED_DIR:-../shared}/data/condition_b_well_a4
run=${ISL_RUN_DIR:-runs/cv}
isl=${ISL:-build/tools/isl}
folds=${FOLDS:-0 1 2 3}
seeds=${SEEDS:-1}
strip=160
steps=${STEPS:-1200}
# Frozen statistics from the start, and the mean of the weights of the last half.
bn_args=${BN_ARGS---freeze-bn --bn-batches 50 --average-from $((steps / 2))}
lr_drop=${LR_DROP-$((steps * 3 / 4)):1e-4}

# shellcheck source=scripts/lib-condition-b.sh
. scripts/lib-condition-b.sh
condition_b_prepare cv-condition-b "$data" "$isl" "$run"

for seed in $seeds; do
  for fold in $folds; do
    dir="$run/fold$fold-seed$seed"
    mkdir -p "$dir"
    [ -f "$dir/model.h5" ] && continue
    if [ ! -f "$dir/init.h5" ]; then
      "$isl" model init --base-depth "${BASE:-60}" --num-z 13 \
        --heads dapi_confocal,map2_confocal,nfh_confocal --seed "$seed" -o "$dir/init.h5"
    fi
    start=(--model "$dir/init.h5")
    drop=()
    [ -n "$lr_drop" ] && drop=(--lr-drop "$lr_drop")
    keep=()
    [ "${KEEP_ACTIVATIONS:-1}" = 1 ] && keep=(--keep-activations)
    [ -f "$dir/model.checkpoint.h5" ] && start=(--resume "$dir/model.checkpoint.h5")
    # shellcheck disable=SC2086
    OMP_WAIT_POLICY=passive "$isl" train --dataset "$run/data.h5" "${start[@]}" \
      --out "$dir/model.h5" --steps "$steps" --crop "${CROP:-378}" \
      --batch "${BATCH:-1}" --lr "${LR:-1e-3}" "${drop[@]}" --bn-decay "${BN_DECAY:-0.99}" \
      --label-weight "${LABEL_WEIGHT:-1}" --stochastic-depth "${STOCHASTIC_DEPTH:-0.2}" \
      --validation "$((fold * strip)),0,$strip,1024" \
      --validation-margin 121 --validate-every "${VALIDATE_EVERY:-250}" \
      --checkpoint-every 100 --seed "$seed" --threads "${THREADS:-1}" "${keep[@]}" \
      $bn_args ${AUGMENT_ARGS:-} ${EXTRA_ARGS:-}
  done
done
echo "cv-condition-b: models in $run/fold*-seed*/model.h5; report: examples/cv_report.py $run"
