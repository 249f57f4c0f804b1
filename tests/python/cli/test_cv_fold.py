"""Long test (meson -Dlong_tests=true, `ISL_LONG_TESTS=1 scripts/test.sh`): the frozen
recipe of docs/training.md ("Frozen statistics on the folds"), the recipe of the bundled
model, retrained on one cross-validation fold of the real well reaches, on the strip it
never saw, what the recorded run reached.

Fold 1 holds out columns 160..319 of the labelled columns 0..639 (all rows) and, with the
121-pixel margin, trains on columns 0..38 and 441..639 only: the fold where the plain
recipe painted 43.6% of the strip's dark background bright (issue #15), so a regression
towards it fails here. `isl train` validates on the strip at the end (the mean of the
weights with the frozen statistics, the model it writes). Its r per label must reach the
recorded thresholds and its painted share of the strip's dark background may not exceed
the recorded one by more than a point (nor 2% where the recorded run stayed under it).
The run takes about 13 minutes on one idle core (AMD EPYC, Zen 5).

Run: ISL_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/cli/test_cv_fold.py -q
"""
import csv
import os
import pathlib

import pytest

from .conftest import REPO_ROOT as REPO

LABELS = ("dapi_confocal", "map2_confocal", "nfh_confocal")
# Recorded by scripts/cv-condition-b.sh (fold 1, seed 1, isl 0.10.0 on an AMD EPYC Zen 5,
# one thread), less a margin for runs that sum floats in another order: another build or
# CPU drifts from the recorded run after a few hundred steps.
FOLD1_R = {"dapi_confocal": 0.738, "map2_confocal": 0.749, "nfh_confocal": 0.361}
MARGIN = 0.06
# The recorded run painted 2.3% / 0.2% / 0.0%: its DAPI share is over the 2% bound.
# Those pixels lie one intensity bin (1/255) above the background level, which the strip's
# 90th percentile exceeds by only 0.0045 (docs/training.md).
FOLD1_PAINTED = {"dapi_confocal": 0.023, "map2_confocal": 0.002, "nfh_confocal": 0.0}
PAINTED_LIMIT = 0.02


def well():
    root = pathlib.Path(os.environ.get("ISL_SHARED_DIR", REPO.parent / "shared"))
    data = root / "data" / "condition_b_well_a4"
    if not (data / "phase_contrast_z13.tif").is_file():
        pytest.skip("the real well is not at %s (set ISL_SHARED_DIR)" % data)
    return data


def test_fold1_generalizes_to_its_strip(run_isl, tmp_path):
    data = well()
    targets = []
    for name in LABELS:
        targets += ["--target", "%s=%s:0,0" % (name, data / (name + "_train_cols0-639.tif"))]
    r = run_isl("dataset", "build", "--input", data / "phase_contrast_z13.tif", *targets,
                "-o", tmp_path / "data.h5")
    assert r.returncode == 0, r.stderr
    r = run_isl("model", "init", "--base-depth", 60, "--num-z", 13, "--heads",
                ",".join(LABELS), "--seed", 1, "-o", tmp_path / "init.h5")
    assert r.returncode == 0, r.stderr
    r = run_isl("train", "--dataset", tmp_path / "data.h5", "--model", tmp_path / "init.h5",
                "--out", tmp_path / "m.h5", "--steps", 600, "--crop", 378, "--batch", 1,
                "--lr", 1e-3, "--lr-drop", "450:1e-4", "--freeze-bn", "--bn-batches", 50,
                "--average-from", 300, "--label-weight", 1, "--validation", "160,0,160,1024",
                "--validation-margin", 121, "--validate-every", 0, "--seed", 1, "--threads", 1, timeout=4 * 3600)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "m.log.csv", newline="") as f:
        last = [row for row in csv.DictReader(f) if row["loss_total"] == ""][-1]
    for name in LABELS:
        got, painted = float(last["r_" + name]), float(last["painted_" + name])
        assert got >= FOLD1_R[name] - MARGIN, (name, got, FOLD1_R[name])
        assert painted <= max(PAINTED_LIMIT, FOLD1_PAINTED[name] + 0.01), (name, painted)
