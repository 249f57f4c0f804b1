#!/usr/bin/python3
"""Trains the shipped condition-B model on ../shared/data with the isl C trainer.

Training pixels: rows 0..767 of columns 0..639 (the labelled part of the well).
Validation: rows 768..1023 of columns 0..639 (163,840 pixels), never trained on.
The input context of a crop may read anywhere in the stack (the whole field is
transmitted light; only targets are held out).

Resumable: the run directory keeps checkpoint.h5 (weights, Adam state, step, the
trainer's random generator, from which every crop is drawn) and log.csv.
"""
import argparse
import csv
import os
import sys
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "build", "bindings", "python"))
import isl  # noqa: E402

LABELS = ("dapi_confocal", "map2_confocal", "nfh_confocal")
TRAIN_ROWS, VAL_ROWS, COLS = (0, 768), (768, 1024), (0, 640)
CONTEXT = 121


def read_stack(path):
    im = Image.open(path)
    planes = []
    for i in range(im.n_frames):
        im.seek(i)
        planes.append(np.array(im, dtype=np.float32) / 65535.0)
    return np.stack(planes)


def pearson(a, b):
    a = a.ravel().astype(np.float64) - a.mean()
    b = b.ravel().astype(np.float64) - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


class Data:
    def __init__(self, root):
        self.stack = read_stack(os.path.join(root, "phase_contrast_z13.tif"))
        self.padded = np.pad(self.stack, ((0, 0), (CONTEXT, CONTEXT), (CONTEXT, CONTEXT)),
                             mode="reflect")
        self.targets = np.stack([
            read_stack(os.path.join(root, "%s_train_cols0-639.tif" % name))[0]
            for name in LABELS])

    def batch(self, draw, batch, crop):
        out = crop - 2 * CONTEXT
        inputs = np.empty((batch, self.stack.shape[0], crop, crop), np.float32)
        targets = np.empty((batch, len(LABELS), out, out), np.float32)
        for b in range(batch):
            oy = TRAIN_ROWS[0] + draw() % (TRAIN_ROWS[1] - TRAIN_ROWS[0] - out + 1)
            ox = COLS[0] + draw() % (COLS[1] - COLS[0] - out + 1)
            x = self.padded[:, oy:oy + crop, ox:ox + crop]
            t = self.targets[:, oy:oy + out, ox:ox + out]
            k, flip = draw() % 4, draw() % 2
            x, t = np.rot90(x, k, axes=(1, 2)), np.rot90(t, k, axes=(1, 2))
            if flip:
                x, t = x[:, :, ::-1], t[:, :, ::-1]
            inputs[b], targets[b] = x, t
        return inputs, targets


def validate(model, data, threads):
    pred = model.predict(data.stack, stats=("median", "mean"), threads=threads)
    rows = slice(*VAL_ROWS)
    cols = slice(*COLS)
    result = {}
    for i, name in enumerate(LABELS):
        target = data.targets[i, rows, cols]
        result[name + "_median_r"] = pearson(pred[name]["median"][rows, cols], target)
        result[name + "_mean_r"] = pearson(pred[name]["mean"][rows, cols], target)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data",
                                                  "condition_b_well_a4"))
    p.add_argument("--run", required=True)
    p.add_argument("--base-depth", type=int, default=100)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=378)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--drop-at", type=int, default=0)
    p.add_argument("--drop-to", type=float, default=2e-5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--validate-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    os.makedirs(args.run, exist_ok=True)
    ckpt = os.path.join(args.run, "checkpoint.h5")
    opts = dict(learning_rate=args.lr, label_weight=1.0, seed=args.seed, bn_decay=0.99,
                threads=args.threads,
                rate_drop=(args.drop_at, args.drop_to) if args.drop_at else None)
    data = Data(args.data)
    if os.path.exists(ckpt):
        trainer = isl.Trainer.load(ckpt, **opts)
        print("resumed at step", trainer.step_count, flush=True)
    else:
        init = isl.Model.create(base_depth=args.base_depth, num_z=13, heads=LABELS,
                                seed=args.seed)
        trainer = isl.Trainer(init, **opts)
    log_path = os.path.join(args.run, "log.csv")
    new_log = not os.path.exists(log_path)
    log = open(log_path, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "seconds"] + list(LABELS) + ["label", "validation"])
    t0 = time.time()
    start = trainer.step_count
    ema = None
    while trainer.step_count < args.steps:
        inputs, targets = data.batch(trainer.random, args.batch, args.crop)
        losses = trainer.step(inputs, targets)
        step = trainer.step_count
        ema = losses["label"] if ema is None else 0.98 * ema + 0.02 * losses["label"]
        writer.writerow([step, "%.2f" % (time.time() - t0)]
                        + ["%.5f" % losses[n] for n in LABELS] + ["%.5f" % losses["label"], ""])
        if step % 20 == 0:
            rate = (step - start) / (time.time() - t0)
            print("step %d  label loss %.4f (avg %.4f)  %.2f steps/s  eta %.0f min" % (
                step, losses["label"], ema, rate, (args.steps - step) / rate / 60), flush=True)
            log.flush()
        if step % args.checkpoint_every == 0:
            trainer.save(ckpt)
        if step % args.validate_every == 0:
            with trainer.model() as snapshot:
                r = validate(snapshot, data, args.threads)
                snapshot.save(os.path.join(args.run, "model-%06d.h5" % step))
            print("validation at step %d: %s" % (step, "  ".join(
                "%s %.3f" % kv for kv in r.items())), flush=True)
            writer.writerow([step, "%.2f" % (time.time() - t0)] + [""] * (len(LABELS) + 1)
                            + [" ".join("%s=%.4f" % kv for kv in r.items())])
            log.flush()
    trainer.save(ckpt)


if __name__ == "__main__":
    main()
