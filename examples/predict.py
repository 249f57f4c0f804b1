#!/usr/bin/python3
"""Predict fluorescence labels from a transmitted-light TIFF z-stack with isl.

    predict.py MODEL STACK.tif OUT_PREFIX [--crop Y X H W] [--stats median,mean]

Writes OUT_PREFIX_<head>_<stat>.tif (float32, intensities in [0, 1]) for every label head
and OUT_PREFIX_overlay.png: the middle transmitted-light plane in gray with the first head
(e.g. predicted nuclei) in blue.

Needs the isl package (installed, or found in build/bindings/python of a source tree by
_isl_path.py), tifffile and PIL.
"""
import argparse
import sys

import numpy as np
import tifffile
from PIL import Image

import _isl_path  # noqa: F401  (finds build/ from a source tree)
import isl


def stretch(image: np.ndarray) -> np.ndarray:
    """Scales an image to [0, 1] between its 1st and 99th percentiles."""
    lo, hi = np.percentile(image, (1, 99))
    return np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)


def overlay(plane: np.ndarray, label: np.ndarray) -> Image.Image:
    """Gray transmitted light with the predicted label (scaled to its maximum) in blue."""
    gray = 0.7 * stretch(plane.astype(np.float32))
    blue = label / max(float(label.max()), 1e-6)
    rgb = np.stack([gray * (1 - blue), gray * (1 - blue), np.clip(gray + blue, 0, 1)], axis=-1)
    return Image.fromarray((rgb * 255 + 0.5).astype(np.uint8), mode="RGB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("stack")
    parser.add_argument("out_prefix")
    parser.add_argument("--crop", nargs=4, type=int, metavar=("Y", "X", "H", "W"),
                        help="predict only this region of the stack")
    parser.add_argument("--stats", default="median", help="comma-separated statistics")
    args = parser.parse_args()

    stack = tifffile.imread(args.stack)  # (z, y, x) uint8, uint16 or float32
    if args.crop:
        y, x, h, w = args.crop
        stack = stack[:, y:y + h, x:x + w]
    stats = args.stats.split(",")

    with isl.Model.load(args.model) as model:
        print("%s: %d planes of %d x %d -> %s" % (args.model, *stack.shape,
                                                  ", ".join(model.label_heads)))
        result = model.predict(stack, stats=stats,
                               progress=lambda done, total: print("tile %d/%d" % (done, total)))

    for head, images in result.items():
        for stat, image in images.items():
            path = "%s_%s_%s.tif" % (args.out_prefix, head, stat)
            tifffile.imwrite(path, image)
            print("wrote", path)

    first = next(iter(result))
    path = args.out_prefix + "_overlay.png"
    overlay(stack[stack.shape[0] // 2], result[first][stats[0]]).save(path)
    print("wrote", path, "(%s in blue)" % first)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except isl.IslError as e:
        sys.exit("error: %s (%s)" % (e, e.status.name))
