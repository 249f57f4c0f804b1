#!/usr/bin/python3
"""Training-mode oracle: the network of isl_torch.py with batch statistics and the spec's
training loss, differentiated by PyTorch autograd (docs/training.md).

Used ONLY as a test oracle for isl's training engine (tests/python/cli/test_train_oracle.py).

API:
  train_losses(model, inputs, targets, masks, label_weight=0.5, dtype=torch.float64)
      -> (losses [L + 3] as isl_train_step reports them, logits {head: [B, ch, h, w]},
          grads {hdf5 path: array}, input_grad [B, nz, H, W])
  inputs [B, nz, H, W] in [0, 1]; targets, masks [B, L, H - 242, W - 242] (masks nonzero = known)
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

import isl_torch

EPS = isl_torch.EPS
LN256 = math.log(256.0)


def _bnact(x, gamma, beta):
    """[relu(y), tanh(y)], y batch-normalized with the batch's statistics (biased variance)."""
    y = F.batch_norm(x, None, None, gamma, beta, training=True, eps=EPS)
    return torch.cat([torch.relu(y), torch.tanh(y)], 1)


def _module(m, p, x):
    """One module in training mode; p: its parameters as autograd leaves."""
    a = _bnact(x, p["bn1/gamma"], p["bn1/beta"])
    if m.kind == "in":
        e = torch.cat([F.conv2d(a, p["expand/weight"]), F.max_pool2d(x, 3, 1)], 1)
        res = x[:, :, 1:-1, 1:-1]
    elif m.kind == "down":
        e = torch.cat([F.conv2d(a, p["expand/weight"], stride=2), F.max_pool2d(x, 4, 2)], 1)
        res = F.avg_pool2d(x[:, :, 1:-1, 1:-1], 2, 2)
    else:
        e = F.conv_transpose2d(a, p["expand/weight"], stride=2)
        res = F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (1, 1, 1, 1), mode="replicate")
    r = F.conv2d(_bnact(e, p["bn2/gamma"], p["bn2/beta"]), p["reduce/weight"])
    if m.kind == "up":
        k = min(r.shape[1], res.shape[1])
        return res[:, :k] + r[:, :k]
    if r.shape[1] >= res.shape[1]:
        return r + F.pad(res, (0, 0, 0, 0, 0, r.shape[1] - res.shape[1]))
    return res + F.pad(r, (0, 0, 0, 0, 0, res.shape[1] - r.shape[1]))


def _leaves(model, dtype):
    """Trainable parameters as autograd leaves, keyed by their model-file paths."""
    def leaf(t):
        return t.detach().to(dtype).clone().requires_grad_(True)

    p = {"/projection/weight": leaf(model.proj_w), "/projection/bias": leaf(model.proj_b)}
    for i, m in enumerate(model.mods):
        for bn in ("bn1", "bn2"):
            for k in ("gamma", "beta"):
                p["/modules/%03d/%s/%s" % (i, bn, k)] = leaf(getattr(getattr(m, bn), k))
        p["/modules/%03d/expand/weight" % i] = leaf(m.expand)
        p["/modules/%03d/reduce/weight" % i] = leaf(m.reduce)
    for h in model.head_names:
        hd = model.heads[h]
        for k in ("gamma", "beta"):
            p["/heads/%s/bn/%s" % (h, k)] = leaf(getattr(hd.bn, k))
        p["/heads/%s/weight" % h] = leaf(hd.weight)
        p["/heads/%s/bias" % h] = leaf(hd.bias)
    return p


_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(state):
    """splitmix64's output for state (numpy uint64, wrapping): the draw after state."""
    with np.errstate(over="ignore"):
        z = state + _GAMMA
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def dropout_mask(rate, whole, seed, step, head, shape):
    """The keep mask [B, C, h, w] isl draws for a head's input in a step (lib/train/
    dropout.h, written again here): key = splitmix64 over seed ^ step ^ head; value i (plain
    [n, c, y, x] order, or [n, c] with whole channels) is kept when draw i of the stream
    seeded with key, as a 53-bit uniform, is at least the rate."""
    key = _splitmix(np.uint64(seed))
    key = _splitmix(key ^ np.uint64(step))
    key = _splitmix(key ^ np.uint64(head))
    B, C, h, w = shape
    count = B * C if whole else B * C * h * w
    with np.errstate(over="ignore"):
        draws = _splitmix(key + np.arange(count, dtype=np.uint64) * _GAMMA)
    keep = (draws >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 >= rate
    keep = keep.reshape((B, C, 1, 1) if whole else shape)
    return np.broadcast_to(keep, shape)


def train_forward(model, p, x, dropout=None):
    """{head: logits} of every head, training-mode batch norm; dropout: (rate, whole, seed,
    step) of the heads' inputs, or None."""
    proj = F.conv2d(x, p["/projection/weight"], p["/projection/bias"])
    outs = []
    for s in range(5):
        o = (isl_torch.PATCH - isl_torch.TOWER_SIZES[s]) // 2
        t = proj[:, :, o:proj.shape[2] - o, o:proj.shape[3] - o]
        for i in range(18 * s, 18 * (s + 1)):
            m = model.mods[i]
            mp = {k[len("/modules/%03d/" % i):]: v for k, v in p.items()
                  if k.startswith("/modules/%03d/" % i)}
            t = _module(m, mp, t)
            if m.kind == "up":
                t = t[:, :, 2:-2, 2:-2]
        outs.append(t)
    t = torch.cat(outs, 1)
    for i in range(90, len(model.mods)):
        mp = {k[len("/modules/%03d/" % i):]: v for k, v in p.items()
              if k.startswith("/modules/%03d/" % i)}
        t = _module(model.mods[i], mp, t)
    logits = {}
    for h in model.head_names:
        a = _bnact(t, p["/heads/%s/bn/gamma" % h], p["/heads/%s/bn/beta" % h])
        if dropout is not None:
            rate, whole, seed, step = dropout
            keep = dropout_mask(rate, whole, seed, step, model.head_names.index(h), a.shape)
            a = a * torch.as_tensor(keep, dtype=a.dtype) / (1 - rate)
        logits[h] = F.conv2d(a, p["/heads/%s/weight" % h], p["/heads/%s/bias" % h])
    return logits


def bins(v):
    """round(255 v), ties to even, clamped to [0, 255]."""
    return torch.clamp(torch.round(torch.as_tensor(v, dtype=torch.float64) * 255), 0, 255).long()


def train_losses(model, inputs, targets, masks, label_weight=0.5, dtype=torch.float64,
                 dropout=None):
    x = torch.as_tensor(np.asarray(inputs), dtype=dtype).clone().requires_grad_(True)
    p = _leaves(model, dtype)
    logits = train_forward(model, p, x, dropout)
    labels = model.label_heads
    L, nz = len(labels), model.nz
    B, _, oh, ow = logits[model.head_names[-1]].shape
    losses, present, label = [], 0, 0
    total = torch.zeros((), dtype=dtype)
    for l, h in enumerate(labels):
        m = torch.as_tensor(np.asarray(masks)[:, l] != 0)
        if not bool(m.any()):
            losses.append(float("nan"))
            continue
        ce = F.cross_entropy(logits[h], bins(np.asarray(targets)[:, l]), reduction="none") / LN256
        lh = ce[m].mean()
        losses.append(float(lh))
        label = label + lh
        present += 1
    label_loss = label / present if present else None
    ae = logits["autoencoder"].reshape(B, nz, 256, oh, ow).transpose(1, 2)   # [B, 256, nz, h, w]
    c = (inputs.shape[2] - oh) // 2
    ae_t = bins(np.asarray(inputs)[:, :, c:c + oh, c:c + ow])
    ae_loss = (F.cross_entropy(ae, ae_t, reduction="none") / LN256).mean()
    if label_loss is not None:
        total = total + label_weight * label_loss
    total = total + (1 - label_weight) * ae_loss
    total.backward()
    losses += [float(label_loss) if label_loss is not None else float("nan"), float(ae_loss),
               float(total)]
    grads = {k: v.grad.detach().numpy() for k, v in p.items()}
    return (np.array(losses), {h: v.detach().numpy() for h, v in logits.items()}, grads,
            x.grad.detach().numpy())
