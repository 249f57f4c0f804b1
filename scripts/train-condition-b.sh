#!/usr/bin/env bash
# Trains the bundled model examples/data/condition-b.h5 on the real well in
# ../shared/data/condition_b_well_a4 (see its README), with isl's own commands:
#   isl dataset build -> isl model init -> isl train
# on every labelled pixel (columns 0..639, all rows): the recipe was chosen by the
# strip cross-validation of scripts/cv-condition-b.sh (docs/training.md, "Honest
# validation"), so no rows are held back here. The recipe ("frozen"): base depth 60, one
# crop of 378 per step, label weight 1, batch-norm statistics estimated once over 50
# training crops and frozen from the first step, Adam at 1e-3 dropped to 1e-4 at step
# 900, 1,200 steps, stochastic depth 0.2 (each residual branch skipped with probability
# up to 0.2, deeper ones more often), and the mean of the weights of steps 600..1,200
# written as the model.
# STEPS=600 trains the recipe of 0.10.1 (drop and average scale with the steps). Run it
# again after an interruption: it resumes from its checkpoint. About 26 minutes on one
# idle core of an AMD EPYC (Zen 5), 40 beside two other runs on two cores, with one thread
# (THREADS=1, the default, which wrote the bundled model). THREADS=2 finishes about 1.5x
# sooner on two idle cores, a model not bit for bit the same (docs/performance.md, "One
# run per core or one run with every core").
# KEEP_ACTIVATIONS=1 (the default) keeps the forward pass's batch-norm outputs for the
# backward pass: the same model bit for bit, about 5% sooner, 1.8 GB instead of 1.2 (0:
# recompute them, as isl before 0.17 did).
set -euo pipefail
cd "$(dirname "$0")/.."

data=${ISL_SHARED_DIR:-../shared}/data/condition_b_well_a4
run=${ISL_RUN_DIR:-runs/condition-b}
steps=${STEPS:-1200}
seed=${SEED:-1}   # another seed trains another member of an ensemble (README)
out=${OUT:-examples/data/condition-b.h5}
isl=${ISL:-build/tools/isl}

# shellcheck source=scripts/lib-condition-b.sh
. scripts/lib-condition-b.sh
condition_b_prepare train-condition-b "$data" "$isl" "$run"
if [ ! -f "$run/init.h5" ]; then
  "$isl" model init --base-depth 60 --num-z 13 \
    --heads dapi_confocal,map2_confocal,nfh_confocal --seed "$seed" -o "$run/init.h5"
fi

# Frozen statistics are the lever that made the recipe generalize best: with batch
# statistics the network learns to read each crop's own statistics at its coarse scales,
# which prediction does not have (docs/training.md, "Frozen statistics on the folds").
start=(--model "$run/init.h5")
if [ -f "$run/model.checkpoint.h5" ]; then
  start=(--resume "$run/model.checkpoint.h5")
fi
keep=()
[ "${KEEP_ACTIVATIONS:-1}" = 1 ] && keep=(--keep-activations)
OMP_WAIT_POLICY=passive "$isl" train --dataset "$run/data.h5" "${start[@]}" \
  --out "$run/model.h5" --steps "$steps" --crop 378 --batch 1 --label-weight 1 \
  --lr 1e-3 --lr-drop "$((steps * 3 / 4)):1e-4" --freeze-bn --bn-batches 50 \
  --average-from "$((steps / 2))" \
  --weight-decay "${WEIGHT_DECAY:-0}" --stochastic-depth "${STOCHASTIC_DEPTH:-0.2}" \
  --checkpoint-every 50 --seed "$seed" --threads "${THREADS:-1}" "${keep[@]}"
cp "$run/model.h5" "$out.tmp" && mv "$out.tmp" "$out"
echo "train-condition-b: wrote $out"
