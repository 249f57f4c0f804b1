#!/usr/bin/python3
"""Cross-validation report of a recipe run by scripts/cv-condition-b.sh: every fold's
model predicts the whole well, and its held-out strip (columns 160k .. 160k + 159 of the
labelled columns 0..639) is compared with the targets. Per label it prints, for each fold
and seed and then as mean and standard deviation over them:

- Pearson r of the median prediction against the target (numpy's corrcoef);
- the background check: the fraction of the target's dark pixels (below its median) that
  the prediction paints bright (above the target's 90th percentile);
- whether the prediction's uncertainty marks its errors: Pearson r between the per-pixel
  absolute error |median - target| and the entropy of the predicted distribution.

--compare MODEL also scores MODEL (e.g. a model trained on rows 0..767 of all labelled
columns, as the bundled model was until 0.6) against the fold models on the pixels neither
trained on: rows 768..1023 of each held-out strip.

--ensemble averages, per fold, the predicted distributions of all its seeds' models (one
ensemble per fold, reported as seed 0); --flip-average also predicts the three mirror
images of the input and averages the four distributions (test-time augmentation).
--point mean scores the mean of the predicted distribution instead of its median (r and
the background check).

--oof-dir DIR writes the out-of-fold prediction of the lowest seed (or of the ensembles)
as `isl predict` would name it, DIR/<label>_<median|entropy|std>.tif over the labelled
columns 0..639, for `isl evaluate` / `isl report` (docs/evaluation.md).

--png writes the out-of-fold picture: every strip predicted by the model that never
trained near it, stitched beside the targets (composite DAPI blue, MAP2 green, NFH red),
the honest view of what the recipe does on unseen parts of the field.

  examples/cv_report.py runs/cv [--png docs/images/cv-plain.png] [--csv cv.csv]
"""
import argparse
import glob
import os
import re
import sys

import numpy as np
from PIL import Image

import _isl_path  # noqa: F401  (finds build/ from a source tree)
import isl
from validation_figure import LABELS, read_pages  # (this folder)

HERE = os.path.dirname(os.path.abspath(__file__))

SHORT = {"dapi_confocal": "DAPI", "map2_confocal": "MAP2", "nfh_confocal": "NFH"}
STRIP = 160


def painted_background(pred, target):
    """Fraction of target pixels below the target's median predicted above its 90th
    percentile (numpy's linear percentiles)."""
    t = target.astype(np.float64).ravel()
    p = pred.astype(np.float64).ravel()
    dark = t < np.median(t)
    return float(np.mean(p[dark] > np.percentile(t, 90)))


def fold_metrics(pred, target, cols, rows=slice(None), point="median"):
    out = {}
    for name in LABELS:
        t = target[name][rows, cols]
        m = pred[name][point][rows, cols]
        e = pred[name]["entropy"][rows, cols]
        out[name] = {
            "r": float(np.corrcoef(m.ravel(), t.ravel())[0, 1]),
            "painted": painted_background(m, t),
            "r_error_entropy": float(np.corrcoef(np.abs(m - t).ravel(), e.ravel())[0, 1]),
        }
    return out


def to_u8(a, lo, hi):
    return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def composite(images, limits):
    rgb = [to_u8(images[name], *limits[name]) for name in ("nfh_confocal", "map2_confocal",
                                                           "dapi_confocal")]
    return np.stack(rgb, axis=-1)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the ISL_RUN_DIR of scripts/cv-condition-b.sh")
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data",
                                                  "condition_b_well_a4"))
    p.add_argument("--model-name", default="model.h5",
                   help="file in each fold directory (default model.h5)")
    p.add_argument("--png", help="write the out-of-fold picture here")
    p.add_argument("--csv", help="write one row per fold, seed and label here")
    p.add_argument("--compare", metavar="MODEL",
                   help="also score MODEL on rows 768..1023 of each strip")
    p.add_argument("--ensemble", action="store_true",
                   help="one ensemble of all seeds per fold instead of one run per seed")
    p.add_argument("--flip-average", action="store_true",
                   help="average the predictions of the input's four mirror images")
    p.add_argument("--oof-dir", help="write the out-of-fold prediction images here")
    p.add_argument("--point", choices=("median", "mean"), default="median",
                   help="the point prediction scored (default median, as the paper's "
                   "images; the mean is the distribution's least-squares estimate)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()

    runs = []
    for d in sorted(glob.glob(os.path.join(args.run, "fold*-seed*"))):
        m = re.search(r"fold(\d+)-seed(\d+)$", d)
        if not m:
            continue
        if not os.path.isfile(os.path.join(d, args.model_name)):
            # A run still training (or stopped) has no model yet: say so, not silently.
            print("cv_report: skipping %s: no %s (still training?)"
                  % (os.path.basename(d), args.model_name), file=sys.stderr)
            continue
        runs.append((int(m.group(1)), int(m.group(2)), os.path.join(d, args.model_name)))
    if not runs:
        sys.exit("cv_report: no fold*-seed*/%s under %s" % (args.model_name, args.run))
    jobs = [(fold, seed, [path]) for fold, seed, path in runs]
    if args.ensemble:  # seed 0 stands for the ensemble of every seed of the fold
        folds = sorted({fold for fold, _, _ in runs})
        jobs = [(fold, 0, [path for f, _, path in runs if f == fold]) for fold in folds]
        for fold, _, paths in jobs:
            print("fold %d: ensemble of %d models" % (fold, len(paths)))

    stack = read_pages(os.path.join(args.data, "phase_contrast_z13.tif"))
    target = {n: read_pages(os.path.join(args.data, n + "_train_cols0-639.tif"))[0]
              for n in LABELS}
    rows, oof = [], {}  # oof[seed][label][stat]: out-of-fold images of columns 0..639
    stats = ("median", "entropy", "std") if args.oof_dir else ("median", "entropy")
    if args.point not in stats:
        stats += (args.point,)
    compared = []  # (fold, seed, label, fold model's metrics, MODEL's) on rows 768..1023
    other = None
    if args.compare:
        with isl.Model.load(args.compare) as model:
            other = model.predict(stack, stats=stats, heads=LABELS,
                                  threads=args.threads)
    for fold, seed, paths in jobs:
        cols = slice(fold * STRIP, (fold + 1) * STRIP)
        models = [isl.Model.load(path) for path in paths]
        try:
            pred = models[0].predict(stack, stats=stats, heads=LABELS,
                                     threads=args.threads, ensemble=models[1:],
                                     flip_average=args.flip_average)
        finally:
            for model in models:
                model.close()
        metrics = fold_metrics(pred, target, cols, point=args.point)
        if other is not None:
            bottom = slice(768, 1024)
            a = fold_metrics(pred, target, cols, bottom, args.point)
            b = fold_metrics(other, target, cols, bottom, args.point)
            compared += [(fold, seed, n, a[n], b[n]) for n in LABELS]
        for name in LABELS:
            rows.append((fold, seed, name, metrics[name]))
            for stat in stats:
                image = oof.setdefault(seed, {}).setdefault(name, {}).setdefault(
                    stat, np.zeros_like(target[name]))
                image[:, cols] = pred[name][stat][:, cols]
        print("fold %d seed %d: " % (fold, seed) + "  ".join(
            "%s r %.3f painted %.1f%% err~entropy %.2f"
            % (SHORT[n], metrics[n]["r"], 100 * metrics[n]["painted"],
               metrics[n]["r_error_entropy"]) for n in LABELS), flush=True)

    print("\nmean +- sd over %d runs (folds x %s):"
          % (len(jobs), "ensembles of seeds" if args.ensemble else "seeds"))
    print("| label | r | painted dark background | r(|error|, entropy) | worst fold painted |")
    print("|---|---|---|---|---|")
    for name in LABELS:
        sel = [m for _, _, n, m in rows if n == name]
        col = {k: np.array([m[k] for m in sel]) for k in sel[0]}
        sd = lambda a: a.std(ddof=1) if len(a) > 1 else 0.0  # noqa: E731
        print("| %s | %.3f +- %.3f | %.2f%% +- %.2f%% | %.2f +- %.2f | %.2f%% |"
              % (name, col["r"].mean(), sd(col["r"]), 100 * col["painted"].mean(),
                 100 * sd(col["painted"]), col["r_error_entropy"].mean(),
                 sd(col["r_error_entropy"]), 100 * col["painted"].max()))

    if compared:
        print("\nrows 768..1023 of the strips (held out by both), fold models vs %s:"
              % args.compare)
        print("| label | fold models r | %s r | fold models painted | %s painted |"
              % ((os.path.basename(args.compare),) * 2))
        print("|---|---|---|---|---|")
        for name in LABELS:
            sel = [(a, b) for _, _, n, a, b in compared if n == name]
            ra, rb = np.array([a["r"] for a, _ in sel]), np.array([b["r"] for _, b in sel])
            pa = np.array([a["painted"] for a, _ in sel])
            pb = np.array([b["painted"] for _, b in sel])
            print("| %s | %.3f | %.3f | %.2f%% | %.2f%% |" % (name, ra.mean(), rb.mean(),
                                                           100 * pa.mean(), 100 * pb.mean()))

    if args.csv:
        with open(args.csv, "w") as f:
            f.write("fold,seed,label,r,painted,r_error_entropy\n")
            for fold, seed, name, m in rows:
                f.write("%d,%d,%s,%.5f,%.5f,%.5f\n" % (fold, seed, name, m["r"], m["painted"],
                                                      m["r_error_entropy"]))
    if args.png:
        folds = {f for f, _, _ in jobs}
        seed = min(oof)
        if folds != {0, 1, 2, 3}:
            print("cv_report: folds %s only; the picture shows zeros elsewhere" % sorted(folds))
        limits = {n: (np.percentile(target[n], 0.5), np.percentile(target[n], 99.5))
                  for n in LABELS}
        gap = np.full((target[LABELS[0]].shape[0], 8, 3), 255, np.uint8)
        picture = np.concatenate([composite(target, limits), gap,
                                  composite({n: oof[seed][n]["median"] for n in LABELS},
                                            limits)], axis=1)
        for k in range(1, 4):  # strip borders on the prediction
            picture[:, 640 + 8 + k * STRIP - 1, :] = 255
        Image.fromarray(picture).save(args.png)
        print("cv_report: wrote %s (targets left, out-of-fold predictions of seed %d right)"
              % (args.png, seed))
    if args.oof_dir:
        import tifffile
        seed = min(oof)
        os.makedirs(args.oof_dir, exist_ok=True)
        for name in LABELS:
            for stat in stats:
                tifffile.imwrite(os.path.join(args.oof_dir, "%s_%s.tif" % (name, stat)),
                                 oof[seed][name][stat].astype(np.float32))
        print("cv_report: wrote the out-of-fold prediction of %s to %s"
              % ("the ensembles" if seed == 0 else "seed %d" % seed, args.oof_dir))


if __name__ == "__main__":
    main()
