"""examples/cv_report.py, the report every cross-validation figure of docs/training.md comes
from: its per-fold r, painted background and r(|error|, entropy), their mean and spread,
and its CSV, against the same measures computed here from the issue's definitions
(numpy's corrcoef; the painted share written out anew) on predictions made in-process.

The "well" is 256 x 640 pixels built from the demo stack (the stack, its mirror image and
half of it again), so folds 0 and 1 hold out different content; the targets are made so
that every measure is far from trivial: DAPI the prediction shifted by 40 columns, with
noise (the model's bright nuclei fall on dark target: painted), MAP2 the prediction with
noise, NFH a smoothed input plane.
"""
import shutil
import sys

import numpy as np
import pytest

from .conftest import BUNDLED_HEADS as LABELS, BUNDLED_MODEL as MODEL, DEMO_STACK as STACK
from .conftest import SOURCE_DIR, THREADS, run

EXAMPLE = SOURCE_DIR / "examples" / "cv_report.py"
STRIP = 160


def painted(pred, target):
    """The issue's background check: the share of the target's pixels below its median that
    the prediction puts above the target's 90th percentile."""
    dark = target < np.median(target)
    return np.count_nonzero(pred[dark] > np.percentile(target, 90)) / np.count_nonzero(dark)


def as_u16(image):
    return np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def well(islpy, tmp_path_factory):
    """(data dir, run dir, median and entropy images, targets as cv_report reads them)."""
    tifffile = pytest.importorskip("tifffile")
    ndimage = pytest.importorskip("scipy.ndimage")
    demo = tifffile.imread(STACK)
    stack = np.ascontiguousarray(np.concatenate([demo, demo[:, :, ::-1], demo[:, :, :128]],
                                                axis=2))
    assert stack.shape[1:] == (256, 640)
    with islpy.Model.load(MODEL) as model:
        pred = model.predict(stack, stats=("median", "entropy"), heads=LABELS,
                             threads=THREADS)
    rng = np.random.default_rng(7)
    plane = ndimage.gaussian_filter(stack[6].astype(np.float64), 4)
    targets = {
        "dapi_confocal": np.roll(pred["dapi_confocal"]["median"], 40, axis=1)
        + rng.normal(0, 0.01, (256, 640)),
        "map2_confocal": pred["map2_confocal"]["median"] + rng.normal(0, 0.05, (256, 640)),
        "nfh_confocal": (plane - plane.min()) / (plane.max() - plane.min()),
    }
    base = tmp_path_factory.mktemp("cv_report")
    data = base / "data"
    data.mkdir()
    tifffile.imwrite(data / "phase_contrast_z13.tif", stack)
    for name, image in targets.items():
        tifffile.imwrite(data / (name + "_train_cols0-639.tif"), as_u16(image))
    runs = base / "runs"
    for fold, seed in ((0, 1), (1, 1), (0, 2)):
        (runs / ("fold%d-seed%d" % (fold, seed))).mkdir(parents=True)
        shutil.copy(MODEL, runs / ("fold%d-seed%d" % (fold, seed)) / "model.h5")
    (runs / "fold1-seed2").mkdir()  # a run still training: no model.h5 yet
    # The targets as cv_report reads them: 16-bit pages scaled to 0..1.
    read = {n: as_u16(t).astype(np.float32) / 65535.0 for n, t in targets.items()}
    return data, runs, pred, read


def expected(well, fold):
    _, _, pred, target = well
    cols = slice(fold * STRIP, (fold + 1) * STRIP)
    out = {}
    for name in LABELS:
        m = pred[name]["median"][:, cols].astype(np.float64)
        t = target[name][:, cols].astype(np.float64)
        e = pred[name]["entropy"][:, cols].astype(np.float64)
        out[name] = (np.corrcoef(m.ravel(), t.ravel())[0, 1], painted(m, t),
                     np.corrcoef(np.abs(m - t).ravel(), e.ravel())[0, 1])
    return out


def test_cv_report_figures_match_the_definitions(well, tmp_path):
    data, runs, _, _ = well
    csv = tmp_path / "cv.csv"
    png = tmp_path / "cv.png"
    result = run([sys.executable, EXAMPLE, runs, "--data", data, "--csv", csv, "--png", png,
                  "--threads", THREADS])
    folds = {0: expected(well, 0), 1: expected(well, 1)}
    # The premises: every measure is informative.
    assert folds[0]["dapi_confocal"][0] < 0.5 and folds[0]["dapi_confocal"][1] > 0.01
    assert 0.3 < folds[0]["map2_confocal"][0] < 0.99
    assert folds[0]["nfh_confocal"][0] != pytest.approx(folds[1]["nfh_confocal"][0], abs=0.05)

    rows = [line.split(",") for line in csv.read_text().splitlines()[1:]]
    assert len(rows) == 3 * len(LABELS), rows  # folds 0 and 1 of seed 1, fold 0 of seed 2
    for fold, seed, name, r, share, r_entropy in rows:
        want = folds[int(fold)][name]
        assert [float(r), float(share), float(r_entropy)] == pytest.approx(want, abs=2e-4), \
            (fold, seed, name)

    table = {line.split("|")[1].strip(): line for line in result.stdout.splitlines()
             if line.startswith("| ") and line.split("|")[1].strip() in LABELS}
    for name in LABELS:
        per_run = np.array([folds[0][name], folds[1][name], folds[0][name]])
        mean, sd = per_run.mean(axis=0), per_run.std(axis=0, ddof=1)
        cells = [c.strip() for c in table[name].split("|")[2:6]]
        assert cells[0] == "%.3f +- %.3f" % (mean[0], sd[0]), table[name]
        assert cells[1] == "%.2f%% +- %.2f%%" % (100 * mean[1], 100 * sd[1]), table[name]
        assert cells[3] == "%.2f%%" % (100 * per_run[:, 1].max()), table[name]

    from PIL import Image
    with Image.open(png) as im:  # targets, an 8-pixel gap, the out-of-fold predictions
        assert im.size == (640 + 8 + 640, 256)
    assert "folds [0, 1] only" in result.stdout
    assert "skipping fold1-seed2: no model.h5" in result.stderr


def test_cv_report_ensemble_of_copies_of_one_model_scores_as_the_model(well):
    """Two seeds of fold 0 hold the same model: their ensemble predicts what either does."""
    data, runs, _, _ = well
    result = run([sys.executable, EXAMPLE, runs, "--data", data, "--ensemble",
                  "--threads", THREADS])
    assert "fold 0: ensemble of 2 models" in result.stdout
    assert "fold 1: ensemble of 1 models" in result.stdout
    line = next(l for l in result.stdout.splitlines() if l.startswith("fold 0 seed 0:"))
    r_dapi = float(line.split("DAPI r ")[1].split()[0])
    assert r_dapi == pytest.approx(expected(well, 0)["dapi_confocal"][0], abs=1e-3)
