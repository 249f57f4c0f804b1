#!/usr/bin/python3
"""The whole well beside its targets: the README's picture of what a model does on the
part of the field it never saw. Every model predicts the whole 1024 x 1024 field; the
figure puts the targets (labelled columns 0..639 only; black beyond) and each model's
median prediction side by side, as composites (DAPI blue, MAP2 green, NFH red, as in the
paper's figures), each label stretched to its target's 0.5 and 99.5 percentiles so that
every panel shares one contrast, and reduced by --reduce (mean of blocks).

  examples/whole_field_figure.py --model OLD.h5 --model NEW.h5 --png whole-field.png

With one --model it shows the targets and that model. It also prints, per model and
label, the share of the unlabelled columns 640..1023 predicted above the labelled
targets' 90th percentile (in the labelled columns the truth has 10% there by definition;
docs/training.md, "The bundled model since 0.8").
"""
import argparse
import os

import numpy as np
from PIL import Image

import _isl_path  # noqa: F401  (finds build/ from a source tree)
import isl
from validation_figure import LABELS, read_pages, to_u8  # (this folder)

HERE = os.path.dirname(os.path.abspath(__file__))

LABELLED = 640


def reduce(a, k):
    h, w = a.shape[0] // k * k, a.shape[1] // k * k
    return a[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="repeatable")
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data",
                                                  "condition_b_well_a4"))
    p.add_argument("--png", required=True)
    p.add_argument("--reduce", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()

    stack = read_pages(os.path.join(args.data, "phase_contrast_z13.tif"))
    targets = [read_pages(os.path.join(args.data, name + "_train_cols0-639.tif"))[0]
               for name in LABELS]
    limits = [(np.percentile(t, 0.5), np.percentile(t, 99.5)) for t in targets]
    h, w = stack.shape[1:]
    panels = []
    whole = [np.zeros((h, w), np.float32) for _ in LABELS]
    for k, t in enumerate(targets):
        whole[k][:, :t.shape[1]] = t
    panels.append(whole)
    for path in args.model:
        with isl.Model.load(path) as model:
            pred = model.predict(stack, stats="median", heads=LABELS, threads=args.threads)
        medians = [pred[name]["median"] for name in LABELS]
        shares = [float((m[:, LABELLED:] > np.percentile(t, 90)).mean())
                  for m, t in zip(medians, targets)]
        print("%s: columns %d..%d above the targets' 90th percentile: %s" % (
            path, LABELLED, w - 1, " / ".join("%.1f%%" % (100 * s) for s in shares)))
        panels.append(medians)
    gap = 6
    tiles = []
    for panel in panels:
        dapi, map2, nfh = (to_u8(reduce(a, args.reduce), *limits[k]) for k, a in enumerate(panel))
        tiles.append(np.stack([nfh, map2, dapi], -1))
    ph, pw = tiles[0].shape[:2]
    canvas = np.full((ph, len(tiles) * pw + (len(tiles) - 1) * gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        canvas[:, i * (pw + gap):i * (pw + gap) + pw] = tile
    os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
    Image.fromarray(canvas).save(args.png, optimize=True)
    print("wrote %s (left: targets; then %s)" % (args.png, ", ".join(args.model)))


if __name__ == "__main__":
    main()
