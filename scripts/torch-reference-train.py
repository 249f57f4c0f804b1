#!/usr/bin/python3
"""Trains an isl model with PyTorch: the reference recipe of issue #15, to compare isl's
trainer with (docs/training.md, "PyTorch on the same fold"). PyTorch is a test oracle here,
never a dependency of isl.

The network is the test oracle's (tests/oracle/isl_torch.py loads the model file,
tests/oracle/train_torch.py's train_forward runs it in training mode); this script adds:

- crops from an isl dataset file (`isl dataset build`), drawn as `isl train` draws them:
  an output window of (crop - 242)^2 lying in the well and holding at least one usable
  target pixel (known, not held out), uniformly among such windows, a well in proportion
  to its usable label pixels; the input is the well reflect-padded by 121 pixels, so the
  crop sees what whole-well prediction sees. Held-out regions are `--validation` widened by
  `--validation-margin` and clipped to the well, exactly as `isl train` widens them;
  pixels in them are masked out of the loss;
- the augmentation: `--augment rot90` (default, issue #15: one of the four 90-degree
  rotations), `dihedral` (isl's default: rotations and mirrors) or `none`;
- `--sampler numpy` (default: numpy's PCG64 seeded with --seed) or `--sampler isl`, which
  reproduces `isl train --seed S`'s crops bit for bit (its splitmix64 stream, windows and
  dihedral transforms; use it with --augment dihedral or none, as isl train);
- the loss of docs/training.md with label weight 1: per label head the mean over the known
  pixels of the 256-bin cross-entropy / ln 256 (bins round(255 v)), their mean over heads;
- torch.optim.Adam (lr 3e-4, betas 0.9 / 0.999, eps 1e-8; `--lr-drop STEP:RATE`), or with
  `--weight-decay L` torch.optim.AdamW whose decay applies to the convolution weights
  only (the arrays named .../weight), as `isl train --weight-decay L`;
- batch-norm moving averages as isl keeps them: running = d running + (1 - d) batch with
  the unbiased batch variance, d = --bn-decay (0.99); every head (the autoencoder's too)
  follows the trunk's batch statistics, as in isl;
- a CSV log with the columns of `isl train`'s model.log.csv (one row per step, losses of
  the step's batch before its update);
- checkpoints every --checkpoint-every steps (temp file + fsync + rename); a run started
  again with the same arguments resumes from it (the log is cut back to its step);
- the trained weights and moving averages written into a copy of the initial model file
  (same layout; temp file + fsync + rename), for `isl predict` and examples/cv_report.py.

  scripts/torch-reference-train.py --dataset DATA.h5 --model INIT.h5 --out MODEL.h5 \\
      --steps 1100 [--crop 378] [--batch 1] [--lr 3e-4] [--bn-decay 0.99] \\
      [--validation X,Y,W,H [--validation-margin 121]] [--augment rot90] [--seed 1] \\
      [--threads 1] [--weight-decay 0] [--checkpoint CKPT] [--checkpoint-every 50] \\
      [--log LOG.csv]
"""
import argparse
import csv
import math
import os
import shutil
import sys
import time
import types

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "oracle"))
import isl_torch  # noqa: E402
import train_torch  # noqa: E402

PAD = isl_torch.MARGIN           # 121: the well is reflect-padded by this much
CONTEXT = 2 * PAD                # a crop of S pixels has S - 242 outputs
LN256 = math.log(256.0)
MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def fail(msg):
    sys.exit("torch-reference-train: error: " + msg)


# ----------------------------------------------------------------------------- dataset
def as_unit(a):
    """Samples as isl reads them: uint8 / 255, uint16 / 65535 (in double, then float)."""
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return (a.astype(np.float64) / 255.0).astype(np.float32)
    if a.dtype == np.uint16:
        return (a.astype(np.float64) / 65535.0).astype(np.float32)
    return a.astype(np.float32)


def load_wells(path, labels, num_z):
    """[{name, stack [nz, H, W], values [L, H, W], known [L, H, W] bool}] for the model's
    label heads `labels` (a label a well lacks is unknown everywhere there)."""
    wells = []
    with h5py.File(path, "r") as f:
        fmt = f.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != "isl-dataset":
            fail("%s is not an isl dataset file (format %r)" % (path, fmt))
        if int(f.attrs["num_z"]) != num_z:
            fail("the dataset has %d planes per stack but the model takes %d"
                 % (int(f.attrs["num_z"]), num_z))
        for i in range(len(f["wells"])):
            g = f["wells/%03d" % i]
            stack = as_unit(g["stack"][()])
            H, W = stack.shape[1:]
            values = np.zeros((len(labels), H, W), np.float32)
            known = np.zeros((len(labels), H, W), bool)
            for l, name in enumerate(labels):
                if "labels" in g and name in g["labels"]:
                    known[l] = g["labels"][name]["mask"][()] != 0
                    values[l] = np.where(known[l], as_unit(g["labels"][name]["values"][()]), 0)
            wells.append({"name": g.attrs["name"], "stack": stack, "values": values, "known": known})
    return wells


def held_out(well_shape, region, margin):
    """Bool [H, W]: the region X,Y,W,H grown by margin and clipped to the well (isl train's
    widen_region)."""
    H, W = well_shape
    x, y, w, h = region
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > W or y + h > H:
        fail("region %d,%d,%d,%d does not lie in the %dx%d well" % (x, y, w, h, W, H))
    x0, y0 = max(x - margin, 0), max(y - margin, 0)
    x1, y1 = min(x + w + margin, W), min(y + h + margin, H)
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


# ----------------------------------------------------------------------------- sampler
def splitmix64(state):
    """(new state, 64 random bits): lib/common/rng.h."""
    state = (state + GAMMA) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def isl_batch_seed(seed, step):
    """tools/cmd_train.c's batch_seed: the crop seed of a step (1-based)."""
    _, z = splitmix64(((seed - 1) * GAMMA + step + 0x632BE59BD9B4E019) & MASK64)
    return z


def dihedral(a, t):
    """isl's transform t of the last two axes (lib/train/sampler.c make_walk): bit 0 flips
    rows, bit 1 flips columns, bit 2 transposes (after the flips)."""
    if t & 1:
        a = a[..., ::-1, :]
    if t & 2:
        a = a[..., :, ::-1]
    if t & 4:
        a = np.swapaxes(a, -1, -2)
    return a


class Sampler:
    def __init__(self, wells, crop, held, augment):
        self.crop, self.out, self.augment = crop, crop - CONTEXT, augment
        self.wells = []
        for w, h in zip(wells, held):
            usable = w["known"] & ~h[None]                   # [L, H, W]
            H, W = h.shape
            if H < self.out or W < self.out:
                fail("well %s is %dx%d, smaller than the output window" % (w["name"], W, H))
            any_usable = usable.any(0).astype(np.int64)
            c = np.pad(np.cumsum(np.cumsum(any_usable, 0), 1), ((1, 0), (1, 0)))
            n = self.out
            counts = c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]   # [H-n+1, W-n+1]
            self.wells.append({
                "padded": np.pad(w["stack"], ((0, 0), (PAD, PAD), (PAD, PAD)), mode="reflect"),
                "values": np.where(usable, w["values"], 0).astype(np.float32),
                "usable": usable,
                "windows": np.flatnonzero(counts > 0),           # row-major, as isl's index
                "positions_x": counts.shape[1],
                "label_pixels": int(usable.sum()),
            })
        self.start = np.concatenate([[0], np.cumsum([w["label_pixels"] for w in self.wells])])
        if self.start[-1] == 0:
            fail("no usable label pixel (everything held out or unknown)")

    def crop_at(self, well, k, t):
        """(input [nz, S, S], targets [L, n, n], masks [L, n, n]) of window index k."""
        w = self.wells[well]
        oy, ox = divmod(int(w["windows"][k]), w["positions_x"])
        S, n = self.crop, self.out
        x = dihedral(w["padded"][:, oy:oy + S, ox:ox + S], t)
        v = dihedral(w["values"][:, oy:oy + n, ox:ox + n], t)
        m = dihedral(w["usable"][:, oy:oy + n, ox:ox + n], t)
        return np.ascontiguousarray(x), np.ascontiguousarray(v), np.ascontiguousarray(m), (oy, ox, t)

    def draw_isl(self, seed, batch):
        """isl_sampler_draw's crops of a seed (no unlabelled share, no contrast jitter)."""
        state, z = splitmix64(seed)
        state = z
        crops = []
        for _ in range(batch):
            state, z = splitmix64(state)
            well = int(np.searchsorted(self.start, (z * int(self.start[-1])) >> 64, "right") - 1)
            state, z = splitmix64(state)
            k = (z * len(self.wells[well]["windows"])) >> 64
            state, r = splitmix64(state)
            t = {"dihedral": r & 7, "none": 0}[self.augment]
            crops.append(self.crop_at(well, k, t))
        return crops

    def draw_numpy(self, rng, batch):
        crops = []
        for _ in range(batch):
            well = int(np.searchsorted(self.start, rng.integers(self.start[-1]), "right") - 1)
            k = int(rng.integers(len(self.wells[well]["windows"])))
            if self.augment == "rot90":   # np.rot90 k times = isl transforms 0, 6, 3, 5
                t = (0, 6, 3, 5)[int(rng.integers(4))]
            elif self.augment == "dihedral":
                t = int(rng.integers(8))
            else:
                t = 0
            crops.append(self.crop_at(well, k, t))
        return crops


# ----------------------------------------------------------------------------- network
_BNACT = train_torch._bnact   # forward swaps in TrainNet._bnact, which wraps this


class TrainNet(nn.Module):
    """The oracle's training-mode network with nn.Parameters and isl's moving averages."""

    def __init__(self, net, decay):
        super().__init__()
        self.net, self.decay = net, decay
        leaves = train_torch._leaves(net, torch.float32)  # {model-file path: tensor}
        self.paths = list(leaves)
        self.params = nn.ParameterList([nn.Parameter(v.detach().clone()) for v in leaves.values()])
        self.view = types.SimpleNamespace(mods=net.mods, head_names=net.label_heads)
        by_path = dict(zip(self.paths, self.params))
        # The stored statistics of each batch norm, found by its gamma: a module's are
        # updated by F.batch_norm itself (PyTorch keeps the unbiased variance, as isl);
        # every head normalizes the same trunk, whose statistics update every head's
        # averages, the autoencoder's included, once per step (lib/train/train_net.c).
        self.running = {}        # file path of the statistics' group -> [mean, var]
        self.module_bn = {}      # id(gamma) -> [mean, var] float32, updated in place
        for i, m in enumerate(net.mods):
            for bn in ("bn1", "bn2"):
                g = "/modules/%03d/%s" % (i, bn)
                self.running[g] = self._copy(getattr(m, bn), torch.float32)
                self.module_bn[id(by_path[g + "/gamma"])] = self.running[g]
        self.head_groups = ["/heads/%s/bn" % h for h in net.head_names]
        for h in net.head_names:
            self.running["/heads/%s/bn" % h] = self._copy(net.heads[h].bn, torch.float64)
        self.first_head = id(by_path["/heads/%s/bn/gamma" % net.label_heads[0]])

    @staticmethod
    def _copy(bn, dtype):
        return [bn.mean.detach().to(dtype).clone(), bn.var.detach().to(dtype).clone()]

    def _bnact(self, x, gamma, beta):
        d = self.decay
        run = self.module_bn.get(id(gamma))
        if run is not None and d < 1:
            y = F.batch_norm(x, run[0], run[1], gamma, beta, training=True, momentum=1 - d,
                             eps=isl_torch.EPS)
            return torch.cat([torch.relu(y), torch.tanh(y)], 1)
        if id(gamma) == self.first_head and d < 1:
            with torch.no_grad():
                var, mean = torch.var_mean(x.detach().double(), dim=(0, 2, 3), unbiased=True)
                for g in self.head_groups:
                    m, v = self.running[g]
                    m.mul_(d).add_((1 - d) * mean)
                    v.mul_(d).add_((1 - d) * var)
        return _BNACT(x, gamma, beta)

    def forward(self, x):
        saved = train_torch._bnact
        train_torch._bnact = self._bnact
        try:
            return train_torch.train_forward(self.view, dict(zip(self.paths, self.params)), x)
        finally:
            train_torch._bnact = saved


def losses_of(logits, heads, targets, masks):
    """(total, [loss per head (nan if none known)], label loss) of docs/training.md, w = 1."""
    per, present = [], []
    for l, h in enumerate(heads):
        m = masks[:, l]
        if not bool(m.any()):
            per.append(float("nan"))
            continue
        ce = F.cross_entropy(logits[h], train_torch.bins(targets[:, l]), reduction="none")
        lh = ce[m].mean() / LN256
        per.append(float(lh))
        present.append(lh)
    if not present:
        return None, per, float("nan")
    total = sum(present) / len(present)
    return total, per, float(total)


# ----------------------------------------------------------------------------- files
def fsync_replace(tmp, path):
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    d = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(d)
    finally:
        os.close(d)


def save_model(init_path, out_path, model):
    """The initial model file with the trained weights and moving averages put in."""
    tmp = out_path + ".tmp%d" % os.getpid()
    shutil.copyfile(init_path, tmp)
    try:
        with h5py.File(tmp, "r+") as f:
            for path, p in zip(model.paths, model.params):
                f[path][...] = p.detach().float().numpy().reshape(f[path].shape)
            for g, (m, v) in model.running.items():
                f[g + "/mean"][...] = m.float().numpy()
                f[g + "/var"][...] = v.float().numpy()
        fsync_replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path, step, model, opt, rng, elapsed):
    tmp = path + ".tmp%d" % os.getpid()
    torch.save({"step": step, "params": [p.detach().clone() for p in model.params],
                "running": model.running, "opt": opt.state_dict(),
                "rng": rng.bit_generator.state, "elapsed": elapsed}, tmp)
    fsync_replace(tmp, path)


def open_log(path, heads, resume_step):
    """The CSV log, cut back to the rows of steps <= resume_step when resuming."""
    header = (["step", "elapsed_s", "learning_rate"] + ["loss_" + h for h in heads] +
              ["loss_label", "loss_autoencoder", "loss_total"] + ["r_" + h for h in heads] +
              ["painted_" + h for h in heads])
    rows = []
    if resume_step and os.path.exists(path):
        with open(path) as f:
            rows = [r for r in csv.reader(f)][1:]
        rows = [r for r in rows if r and int(r[0]) <= resume_step]
    f = open(path, "w", newline="")
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
    f.flush()
    return f, w


def fmt(v):
    """A loss as isl's log writes it: 5 decimals, empty when not computed."""
    return "" if math.isnan(v) else "%.5f" % v


def parse_region(s):
    try:
        v = [int(t) for t in s.split(",")]
        assert len(v) == 4
        return v
    except (ValueError, AssertionError):
        fail("--validation wants X,Y,WIDTH,HEIGHT (well 0), not %r" % s)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True, help="initial model (isl model init)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--crop", type=int, default=378)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--lr-drop", help="STEP:RATE")
    p.add_argument("--bn-decay", type=float, default=0.99)
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="AdamW's decoupled decay of the convolution weights (default 0: Adam)")
    p.add_argument("--validation", action="append", default=[], help="X,Y,W,H of well 0")
    p.add_argument("--validation-margin", type=int, default=PAD)
    p.add_argument("--augment", choices=("rot90", "dihedral", "none"), default="rot90")
    p.add_argument("--sampler", choices=("numpy", "isl"), default="numpy")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint", help="default OUT with .torch-checkpoint.pt")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--log", help="default OUT with .log.csv")
    a = p.parse_args(argv)
    if (a.crop - 250) % 16 or a.crop < 250:
        fail("--crop must be 250 + 16m")
    if a.sampler == "isl" and a.augment == "rot90":
        fail("--sampler isl draws isl's transforms: use --augment dihedral or none")
    torch.set_num_threads(a.threads)
    stem = a.out[:-3] if a.out.endswith(".h5") else a.out
    ckpt = a.checkpoint or stem + ".torch-checkpoint.pt"
    log_path = a.log or stem + ".log.csv"
    drop = None
    if a.lr_drop:
        s, r = a.lr_drop.split(":")
        drop = (int(s), float(r))

    net = isl_torch.load_model(a.model, torch.float32)
    if isl_torch._s(net.attrs.get("input_normalization", "none")) != "none":
        fail("only models with input normalization 'none' are supported")
    heads = net.label_heads
    wells = load_wells(a.dataset, heads, net.nz)
    held = [np.zeros(w["stack"].shape[1:], bool) for w in wells]
    for s in a.validation:
        held[0] |= held_out(held[0].shape, parse_region(s), a.validation_margin)
    sampler = Sampler(wells, a.crop, held, a.augment)
    print("torch-reference-train: %d well(s), %d windows, %d usable label pixels"
          % (len(wells), sum(len(w["windows"]) for w in sampler.wells), sampler.start[-1]),
          file=sys.stderr)

    model = TrainNet(net, a.bn_decay)
    if a.weight_decay > 0:
        decays = [p_ for k, p_ in zip(model.paths, model.params) if k.endswith("/weight")]
        rest = [p_ for k, p_ in zip(model.paths, model.params) if not k.endswith("/weight")]
        opt = torch.optim.AdamW([{"params": decays, "weight_decay": a.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
    rng = np.random.Generator(np.random.PCG64(a.seed))
    step, elapsed = 0, 0.0
    if os.path.exists(ckpt):
        c = torch.load(ckpt, weights_only=False)
        with torch.no_grad():
            for p_, v in zip(model.params, c["params"]):
                p_.copy_(v)
        with torch.no_grad():   # in place: the batch norms hold these tensors
            for g, (m, v) in c["running"].items():
                model.running[g][0].copy_(m)
                model.running[g][1].copy_(v)
        opt.load_state_dict(c["opt"])
        rng.bit_generator.state = c["rng"]
        step, elapsed = c["step"], c["elapsed"]
        print("torch-reference-train: resumed from %s at step %d" % (ckpt, step), file=sys.stderr)
    logf, log = open_log(log_path, heads, step)

    t0, first = time.perf_counter() - elapsed, step
    while step < a.steps:
        step += 1
        lr = drop[1] if drop and step >= drop[0] else a.lr
        for g in opt.param_groups:
            g["lr"] = lr
        crops = (sampler.draw_isl(isl_batch_seed(a.seed, step), a.batch) if a.sampler == "isl"
                 else sampler.draw_numpy(rng, a.batch))
        x = torch.from_numpy(np.stack([c[0] for c in crops]))
        tg = torch.from_numpy(np.stack([c[1] for c in crops]))
        mk = torch.from_numpy(np.stack([c[2] for c in crops]))
        opt.zero_grad(set_to_none=True)
        total, per, label = losses_of(model(x), heads, tg, mk)
        if total is not None:
            total.backward()
            opt.step()
        el = time.perf_counter() - t0
        log.writerow([step, "%.2f" % el, "%g" % lr] + [fmt(v) for v in per] +
                     [fmt(label), "", fmt(label)] + [""] * (2 * len(heads)))
        logf.flush()
        if step % 10 == 0 or step == 1:
            print("step %d/%d  loss %s  %.2f s/step  crop %s" % (
                step, a.steps, " ".join("%.3f" % v for v in per), (el - elapsed) / (step - first),
                crops[0][3]), file=sys.stderr)
        if step % a.checkpoint_every == 0 or step == a.steps:
            save_checkpoint(ckpt, step, model, opt, rng, el)
    logf.close()
    save_model(a.model, a.out, model)
    print("wrote %s" % a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
