#!/usr/bin/python3
"""Training throughput of PyTorch eager on the isl network: the reference for bench_train.

The network is the test oracle's (tests/oracle/isl_torch.py loads the model file,
tests/oracle/train_torch.py's train_forward runs it in training mode: batch statistics,
[relu, tanh] activations, the same modules and heads); this script only makes its
parameters an nn.Module's, adds the loss of docs/training.md in float32 and steps
torch.optim.Adam (lr 1e-4, betas 0.9 / 0.999, eps 1e-8: isl's defaults).

Same model and batch as isl: bench_train --save-model M.h5 --save-batch PREFIX writes them.

  bench_train_torch.py --model M.h5 --batch-prefix PREFIX --crop 250 --batch 4
                       [--steps 5] [--warmup 2] [--threads 2] [--label-weight 0.5]

Prints one line (fields as bench_train's):
  torch_train_bench base=.. crop=.. batch=.. label_weight=.. threads=.. steps=.. warmup=..
    sec_per_step=.. sec_per_step_median=.. sec_per_step_min=.. steps_per_s=.. out_px_per_s=.. in_px_per_s=..
    cpu_sec_per_step=.. peak_rss_mb=.. loss_first=.. loss_last=.. torch=..

Differences in work from isl, all in PyTorch's favour: no batch-norm moving averages are
updated, and the total loss is not copied to the host except after the first and last step.
"""
import argparse
import math
import os
import resource
import sys
import time
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "oracle"))
import isl_torch  # noqa: E402
import train_torch  # noqa: E402

LN256 = math.log(256.0)


class TrainNet(nn.Module):
    """The oracle's training-mode network with its parameters as nn.Parameters."""

    def __init__(self, net, with_autoencoder):
        super().__init__()
        self.net = net
        leaves = train_torch._leaves(net, torch.float32)  # {model-file path: tensor}
        self.paths = list(leaves)
        self.params = nn.ParameterList([nn.Parameter(v.detach().clone()) for v in leaves.values()])
        heads = net.label_heads + (["autoencoder"] if with_autoencoder else [])
        # train_forward reads only .mods and .head_names: a view without the autoencoder
        # head when it does not train (label weight 1), as isl skips it.
        self.view = types.SimpleNamespace(mods=net.mods, head_names=heads)

    def forward(self, x):
        return train_torch.train_forward(self.view, dict(zip(self.paths, self.params)), x)


def total_loss(logits, label_heads, tgt_bins, ae_bins, nz, w):
    """w * (mean over heads of the mean cross-entropy / ln 256) + (1 - w) * autoencoder's."""
    label = sum(F.cross_entropy(logits[h], tgt_bins[:, l]) for l, h in enumerate(label_heads))
    total = w * label / (len(label_heads) * LN256)
    if w < 1:
        ae = logits["autoencoder"]
        B, _, oh, ow = ae.shape
        # [B, nz*256, h, w] -> [B*nz, 256, h, w]: a view, same mean over planes and pixels
        ae_loss = F.cross_entropy(ae.reshape(B * nz, 256, oh, ow), ae_bins) / LN256
        total = total + (1 - w) * ae_loss
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--batch-prefix", required=True)
    p.add_argument("--crop", type=int, default=250)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--label-weight", type=float, default=0.5)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    net = isl_torch.load_model(a.model, torch.float32)
    nz, L = net.nz, len(net.label_heads)
    S, B, out = a.crop, a.batch, a.crop - 242
    inputs = np.fromfile(a.batch_prefix + ".inputs.f32", np.float32).reshape(B, nz, S, S)
    targets = np.fromfile(a.batch_prefix + ".targets.f32", np.float32).reshape(B, L, out, out)
    x = torch.from_numpy(inputs)
    c = (S - out) // 2
    tgt_bins = train_torch.bins(targets)                                          # [B, L, h, w]
    ae_bins = train_torch.bins(inputs[:, :, c:c + out, c:c + out]).reshape(B * nz, out, out)

    model = TrainNet(net, a.label_weight < 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = total_loss(model(x), net.label_heads, tgt_bins, ae_bins, nz, a.label_weight)
        loss.backward()
        opt.step()
        return loss.detach()

    loss_first = None
    t_warm = time.perf_counter()
    for i in range(a.warmup):
        t0 = time.perf_counter()
        loss = float(step())
        loss_first = loss if loss_first is None else loss_first
        print("bench_train_torch: warm-up step %d: %.3f s, loss %.6f" % (i, time.perf_counter() - t0, loss),
              file=sys.stderr)
    t_warm = time.perf_counter() - t_warm

    per = []
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        per.append(time.perf_counter() - t0)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    sps = wall / a.steps
    print("torch_train_bench base=%d crop=%d batch=%d label_weight=%g threads=%d steps=%d warmup=%d "
          "sec_per_step=%.4f sec_per_step_median=%.4f sec_per_step_min=%.4f steps_per_s=%.4f out_px_per_s=%.0f in_px_per_s=%.0f "
          "cpu_sec_per_step=%.4f peak_rss_mb=%.0f warmup_seconds=%.2f loss_first=%.6f loss_last=%.6f torch=%s"
          % (net.base, S, B, a.label_weight, torch.get_num_threads(), a.steps, a.warmup, sps,
             float(np.median(per)), min(per), 1 / sps, B * out * out / sps, B * S * S / sps, cpu / a.steps,
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, t_warm, loss_first, float(loss),
             torch.__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
