#!/usr/bin/python3
"""Which of several models trained alike to trust on a field without its labels.

    agreement.py MODEL MODEL MODEL [...] --stack STACK.tif [--crop Y X H W] [--threads N]

Every model predicts the same transmitted-light stack; per label head, each model's median
image is compared (Pearson r) with the mean of the other models' median images. Runs of
one recipe that differ only in their seed mostly agree with each other; a run that failed
to learn agrees least (docs/training.md, "Choosing among seeds without labels": on the
strip folds of the real well, computed over each strip's inputs, the lowest agreement
marked the one failed run in twelve, and the model that agreed most was as good a choice
as the labels would have made for nuclei and dendrites). Agreement finds a run unlike
the others, not a wrong one: with five seeds on the hardest strip, two failed runs
painted the same false nucleus and agreed with each other, and a good run agreed least.
Train enough seeds that good runs are the majority, and look at the pictures. No target
image is read: give the stack of the field the models will be used on.

Prints one row per model (r per head and their mean), then the model that agrees most
(the one to keep when one model is wanted) and, when the least agreeing model stands
FAILED_GAP or more below the next, that one as the model to leave out of an ensemble
(`isl predict --model A --model B`). Needs at least three models with the same label
heads; a constant median image counts as r = 0.
"""
import argparse
import sys

import numpy as np
import tifffile

import _isl_path  # noqa: F401  (finds build/ from a source tree)
import isl

# On the strip folds of the real well, the one failed run of twelve agreed 0.054 less than
# the next model of its fold; on the other folds the least agreeing model was at most
# 0.014 below the next. With five seeds, a weak run (not a failed one) stood 0.063 apart
# on one strip, and two failed runs that agreed with each other did not stand apart.
FAILED_GAP = 0.03


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two images, 0 when either is constant (nothing to agree on)."""
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    norm = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / norm) if norm > 0 else 0.0


def agreement(medians: list) -> np.ndarray:
    """medians[k][head]: model k's median image. Returns r[k, h] of model k's image of head h
    against the mean of the other models' images of head h."""
    heads = list(medians[0])
    r = np.zeros((len(medians), len(heads)))
    for k, own in enumerate(medians):
        for h, head in enumerate(heads):
            others = np.mean([m[head] for j, m in enumerate(medians) if j != k], axis=0)
            r[k, h] = pearson(own[head], others)
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument("--stack", required=True, help="transmitted-light z-stack (TIFF)")
    parser.add_argument("--crop", nargs=4, type=int, metavar=("Y", "X", "H", "W"),
                        help="compare only this region of the stack")
    parser.add_argument("--threads", type=int, default=0, help="threads per prediction")
    args = parser.parse_args()
    if len(args.models) < 3:
        parser.error("needs at least three models (with two, each agrees with the other "
                     "equally)")

    stack = tifffile.imread(args.stack)
    if args.crop:
        y, x, h, w = args.crop
        stack = stack[:, y:y + h, x:x + w]
    medians, heads = [], None
    for path in args.models:
        with isl.Model.load(path) as model:
            if heads is None:
                heads = list(model.label_heads)
            elif list(model.label_heads) != heads:
                parser.error("%s has heads %s, the first model %s" % (
                    path, ", ".join(model.label_heads), ", ".join(heads)))
            result = model.predict(stack, stats=("median",), threads=args.threads)
        medians.append({head: result[head]["median"] for head in heads})
        print("%s: predicted" % path, file=sys.stderr, flush=True)

    r = agreement(medians)
    mean = r.mean(axis=1)
    width = max(len(p) for p in args.models)
    print("r of each model's median image with the mean of the others' (per head):")
    print("%-*s  %s   mean" % (width, "model", "  ".join(heads)))
    for k, path in enumerate(args.models):
        print("%-*s  %s  %.3f" % (width, path, "  ".join(
            "%*.3f" % (len(head), v) for head, v in zip(heads, r[k])), mean[k]))
    print("agrees most: %s (keep it when one model is wanted)" % args.models[int(mean.argmax())])
    order = np.argsort(mean)
    gap = mean[order[1]] - mean[order[0]]
    if gap >= FAILED_GAP:
        print("stands apart: %s agrees %.3f less than the next model; leave it out of an "
              "ensemble, or look at its prediction" % (args.models[order[0]], gap))
    else:
        print("no model stands apart: the least agreeing, %s, is %.3f below the next "
              "(a lone failed run stood %.2f or more apart; runs that fail alike do not)"
              % (args.models[order[0]], gap, FAILED_GAP))
    return 0


if __name__ == "__main__":
    sys.exit(main())
