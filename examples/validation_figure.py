#!/usr/bin/python3
"""Validation of a condition-B model on the held-out rows of the real well: Pearson r per
label (median prediction vs target, numpy's corrcoef) and a PNG figure with targets and
predictions side by side. The r on the training rows is printed too, for comparison: a
large gap between the two means the model learned this field more than the task.

  examples/validation_figure.py --model MODEL.h5 \
      --data ../shared/data/condition_b_well_a4 --png validation.png

With --ensemble M2.h5 [M3.h5 ...], the prediction is that of the ensemble: the models'
distributions are averaged (isl's ensemble prediction) before the median is taken. With
--flip-average, each model also predicts the stack's three mirror images, averaged too.

The validation region is rows 768..1023 of columns 0..639 (163,840 pixels), which the
bundled model until isl 0.7 never trained on (`isl train --validation 0,768,640,256`).
The bundled model since 0.8 trained on every labelled pixel: judge a recipe by strips
instead (scripts/cv-condition-b.sh, examples/cv_report.py; docs/training.md).
"""
import argparse
import os

import numpy as np
from PIL import Image

import _isl_path  # noqa: F401  (finds build/ from a source tree)
import isl

HERE = os.path.dirname(os.path.abspath(__file__))

LABELS = ("dapi_confocal", "map2_confocal", "nfh_confocal")
ROWS, COLS = slice(768, 1024), slice(0, 640)
TRAIN_ROWS = slice(0, 768)


def read_pages(path):
    im = Image.open(path)
    pages = []
    for i in range(im.n_frames):
        im.seek(i)
        pages.append(np.array(im, dtype=np.float32) / 65535.0)
    return np.stack(pages)


def to_u8(a, lo=None, hi=None):
    """Contrast stretch to the 0.5 and 99.5 percentiles (of `a`, or the given limits)."""
    lo = np.percentile(a, 0.5) if lo is None else lo
    hi = np.percentile(a, 99.5) if hi is None else hi
    return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data",
                                                  "condition_b_well_a4"))
    p.add_argument("--ensemble", nargs="+", default=[], metavar="MODEL",
                   help="other models averaged with --model")
    p.add_argument("--flip-average", action="store_true",
                   help="average the predictions of the stack's four mirror images")
    p.add_argument("--png", help="write the figure here")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()

    stack = read_pages(os.path.join(args.data, "phase_contrast_z13.tif"))
    others = [isl.Model.load(m) for m in args.ensemble]
    with isl.Model.load(args.model) as model:
        pred = model.predict(stack, stats="median", heads=LABELS, threads=args.threads,
                             ensemble=others, flip_average=args.flip_average)
    for m in others:
        m.close()
    rows = []  # (target, prediction) per label, 8-bit with the target's contrast
    for name in LABELS:
        whole = read_pages(os.path.join(args.data, name + "_train_cols0-639.tif"))[0]
        fit = np.corrcoef(pred[name]["median"][TRAIN_ROWS, COLS].ravel(),
                          whole[TRAIN_ROWS, COLS].ravel())[0, 1]
        target, median = whole[ROWS, COLS], pred[name]["median"][ROWS, COLS]
        r = np.corrcoef(median.ravel(), target.ravel())[0, 1]
        print("%s: Pearson r %.3f over %d pixels (training rows 0..767: %.3f)"
              % (name, r, target.size, fit))
        lo, hi = np.percentile(target, 0.5), np.percentile(target, 99.5)
        rows.append((to_u8(target, lo, hi), to_u8(median, lo, hi)))
    if args.png:
        # Left column: targets; right: predictions. Top row: composites (DAPI blue, MAP2
        # green, NFH red, as in the paper's figures), then each label in grey. 4 px gaps.
        h, w, gap = 256, 640, 4
        canvas = np.full((4 * h + 3 * gap, 2 * w + gap, 3), 255, np.uint8)

        def put(row, col, rgb):
            canvas[row * (h + gap):row * (h + gap) + h, col * (w + gap):col * (w + gap) + w] = rgb

        for col in range(2):
            dapi, map2, nfh = (rows[k][col] for k in range(3))
            put(0, col, np.stack([nfh, map2, dapi], -1))
            for k in range(3):
                put(k + 1, col, np.repeat(rows[k][col][..., None], 3, -1))
        os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
        Image.fromarray(canvas).save(args.png, optimize=True)
        print("wrote %s (left: targets, right: predictions; rows: composite, %s)"
              % (args.png, ", ".join(LABELS)))

if __name__ == "__main__":
    main()
