#!/usr/bin/python3
"""Independent PyTorch re-implementation of docs/network-spec.md (In Silico Labeling).

Used ONLY as a test oracle and benchmark reference for the C library; not shipped.
Run with Debian's /usr/bin/python3 (torch, numpy, h5py, tifffile).

API:
  load_model(path, dtype=torch.float32) -> IslNet (eval mode)
  forward(model, x, heads=None, autoencoder=False) -> {head: logits [N, ch, H-242, W-242]}
  predict_image(model, stack[nz,H,W], ...) -> {head: logits [ch, H, W]} (or stats)
  stats(logits[256, ...]) -> {median, mean, mode, std, entropy, p_nonzero}
  build_random(base, nz, heads, seed) -> IslNet;  save_model(model, path)
  count_flops(model, H, W, heads=None, autoencoder=False) -> 2 * MACs of one pass
CLI:
  isl_torch.py predict --model M.h5 --input X.tif --out OUT.h5 [--double] [--stats] [--autoencoder]
  isl_torch.py bench --base 400 --size 1024 --threads 2 [--tile N]
  isl_torch.py random --base 32 --nz 13 --heads a,b --seed 0 --out M.h5
"""
import argparse
import math
import resource
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-3
NUM_CLASSES = 256
PROJ_DEPTH = 16
TOWER_SIZES = [72, 102, 146, 202, 250]  # S_s for a 250 x 250 patch
PATCH, OUT_PATCH, MARGIN = 250, 8, 121  # 250 -> 8; padding 121 per side


# ----------------------------------------------------------------------------- architecture
def next_even(v):
    n = math.ceil(v)
    return n + (n & 1)


def depths(base, size):
    """(E, R) requested for a module whose output size (after the pair, for pairs) is size."""
    r = math.ceil(base / size)
    return next_even(211 / 39 * r), next_even(r)


def tower_plan(s):
    """[(kind, F)] for tower s, F = the size that sets the module's depths (250 patch)."""
    n, plan = TOWER_SIZES[s], []
    for _ in range(s):                     # down, in pairs
        n = (n - 4) // 2 + 1 - 2
        plan += [("down", n), ("in", n)]
    for _ in range(18 - 4 * s):            # in stack
        n -= 2
        plan.append(("in", n))
    for _ in range(s):                     # up (+crop 4), in pairs
        n = 2 * n + 2 - 4 - 2
        plan += [("up", n), ("in", n)]
    assert n == 36 and len(plan) == 18, (s, n, len(plan))
    return plan


def upper_plan():
    return [("in", 36 - 2 * (i + 1)) for i in range(14)]


# ----------------------------------------------------------------------------- layers
class BNAct(nn.Module):
    def __init__(self, c):
        super().__init__()
        for name, v in (("gamma", 1.0), ("beta", 0.0), ("mean", 0.0), ("var", 1.0)):
            self.register_buffer(name, torch.full((c,), v))

    def forward(self, x):
        scale = self.gamma / torch.sqrt(self.var + EPS)
        shift = self.beta - self.mean * scale
        y = torch.addcmul(shift[None, :, None, None], x, scale[None, :, None, None])
        n, c = y.shape[:2]
        out = y.new_empty((n, 2 * c) + y.shape[2:])  # [relu(y), tanh(y)] without a cat copy
        torch.clamp(y, min=0, out=out[:, :c])
        torch.tanh(y, out=out[:, c:])
        return out


class Module(nn.Module):
    """One in / down / up module with explicit channel counts (C in, E expand, R reduce)."""

    def __init__(self, kind, c, e, r):
        super().__init__()
        self.kind, self.c, self.e, self.r = kind, c, e, r
        ech = e if kind == "up" else e + c
        self.bn1 = BNAct(c)
        wshape = (2 * c, e, 4, 4) if kind == "up" else (e, 2 * c, *((3, 3) if kind == "in" else (4, 4)))
        self.register_buffer("expand", torch.zeros(wshape))
        self.bn2 = BNAct(ech)
        self.register_buffer("reduce", torch.zeros(r, 2 * ech, 1, 1))
        self.out_ch = min(r, c) if kind == "up" else max(r, c)

    def forward(self, x):
        a = self.bn1(x)
        if self.kind == "in":
            e = torch.cat([F.conv2d(a, self.expand), F.max_pool2d(x, 3, 1)], 1)
            p = x[:, :, 1:-1, 1:-1]
        elif self.kind == "down":
            e = torch.cat([F.conv2d(a, self.expand, stride=2), F.max_pool2d(x, 4, 2)], 1)
            p = F.avg_pool2d(x[:, :, 1:-1, 1:-1], 2, 2)
        else:
            e = F.conv_transpose2d(a, self.expand, stride=2)
            p = F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (1, 1, 1, 1), mode="replicate")
        del a
        r = F.conv2d(self.bn2(e), self.reduce)
        del e
        if self.kind == "up":
            k = min(r.shape[1], p.shape[1])
            return p[:, :k] + r[:, :k]
        if r.shape[1] == p.shape[1]:
            return r + p
        if r.shape[1] > p.shape[1]:
            r[:, : p.shape[1]] += p
            return r
        p = p.clone()
        p[:, : r.shape[1]] += r
        return p

    def flops(self, h, w):
        """(2 * MACs, h_out, w_out) for an input of h x w (before any crop after up)."""
        ech = self.bn2.gamma.numel()
        if self.kind == "up":
            ho, wo = 2 * h + 2, 2 * w + 2
            mac = h * w * 2 * self.c * self.e * 16
        else:
            k, st = (3, 1) if self.kind == "in" else (4, 2)
            ho, wo = (h - k) // st + 1, (w - k) // st + 1
            mac = ho * wo * self.e * 2 * self.c * k * k
        mac += ho * wo * self.r * 2 * ech
        return 2 * mac, ho, wo


class Head(nn.Module):
    def __init__(self, c, out):
        super().__init__()
        self.bn = BNAct(c)
        self.register_buffer("weight", torch.zeros(out, 2 * c, 1, 1))
        self.register_buffer("bias", torch.zeros(out))

    def forward(self, x):
        return F.conv2d(self.bn(x), self.weight, self.bias)


class IslNet(nn.Module):
    def __init__(self, base, nz, head_names, module_specs, attrs=None):
        """module_specs: 104 (kind, C, E, R) in forward order; head_names includes 'autoencoder'."""
        super().__init__()
        self.base, self.nz, self.head_names = base, nz, list(head_names)
        self.attrs = dict(attrs or {})
        self.register_buffer("proj_w", torch.zeros(PROJ_DEPTH, nz, 1, 1))
        self.register_buffer("proj_b", torch.zeros(PROJ_DEPTH))
        assert len(module_specs) == 5 * 18 + 14, len(module_specs)
        self.mods = nn.ModuleList([Module(*m) for m in module_specs])
        c_top = self.mods[-1].out_ch
        self.heads = nn.ModuleDict({h: Head(c_top, nz * NUM_CLASSES if h == "autoencoder" else NUM_CLASSES)
                                    for h in self.head_names})

    @property
    def label_heads(self):
        return [h for h in self.head_names if h != "autoencoder"]

    def trunk(self, x):
        proj = F.conv2d(x, self.proj_w, self.proj_b)
        outs = []
        for s in range(5):
            o = (PATCH - TOWER_SIZES[s]) // 2
            t = proj[:, :, o:proj.shape[2] - o, o:proj.shape[3] - o]
            for m in self.mods[18 * s:18 * (s + 1)]:
                t = m(t)
                if m.kind == "up":
                    t = t[:, :, 2:-2, 2:-2]
            outs.append(t)
        del proj
        t = torch.cat(outs, 1)
        del outs
        for m in self.mods[90:]:
            t = m(t)
        return t

    def forward(self, x, heads=None, autoencoder=False):
        heads = list(self.label_heads if heads is None else heads)
        if autoencoder and "autoencoder" not in heads:
            heads.append("autoencoder")
        t = self.trunk(x)
        return {h: self.heads[h](t) for h in heads}


# ----------------------------------------------------------------------------- I/O
def _s(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def load_model(path, dtype=torch.float32):
    with h5py.File(path, "r") as f:
        a = f.attrs
        assert _s(a["format"]) == "isl-model" and int(a["format_version"]) == 1, "not an isl-model v1 file"
        nz, base = int(a["num_z"]), int(a["base_depth"])
        head_names = [_s(h) for h in a["heads"]]
        g = f["modules"]
        specs = []
        for i in range(len(g)):
            m = g["%03d" % i]
            kind = _s(m.attrs["kind"])
            w = m["expand/weight"].shape
            c, e = (w[0] // 2, w[1]) if kind == "up" else (w[1] // 2, w[0])
            specs.append((kind, c, e, m["reduce/weight"].shape[0]))
        net = IslNet(base, nz, head_names, specs, {k: a[k] for k in a})
        st = {"proj_w": f["projection/weight"][()], "proj_b": f["projection/bias"][()]}
        for i in range(len(g)):
            m = g["%03d" % i]
            for bn in ("bn1", "bn2"):
                for k in ("gamma", "beta", "mean", "var"):
                    st["mods.%d.%s.%s" % (i, bn, k)] = m[bn][k][()]
            st["mods.%d.expand" % i] = m["expand/weight"][()]
            st["mods.%d.reduce" % i] = m["reduce/weight"][()]
        for h in head_names:
            for k in ("gamma", "beta", "mean", "var"):
                st["heads.%s.bn.%s" % (h, k)] = f["heads"][h]["bn"][k][()]
            st["heads.%s.weight" % h] = f["heads"][h]["weight"][()]
            st["heads.%s.bias" % h] = f["heads"][h]["bias"][()]
    net.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in st.items()}, strict=True)
    return net.to(dtype).eval()


def save_model(model, path, input_normalization=None):
    def put(g, name, t):
        g.create_dataset(name, data=t.detach().cpu().float().numpy())

    def put_bn(g, bn):
        for k in ("gamma", "beta", "mean", "var"):
            put(g, k, getattr(bn, k))

    with h5py.File(path, "w") as f:
        a = f.attrs
        a["format"] = "isl-model"
        a["format_version"] = np.int32(1)
        a["base_depth"] = np.int32(model.base)
        a["num_z"] = np.int32(model.nz)
        a["num_classes"] = np.int32(NUM_CLASSES)
        a["projection_depth"] = np.int32(PROJ_DEPTH)
        a["heads"] = np.array(model.head_names, dtype=h5py.string_dtype())
        a["input_normalization"] = input_normalization or _s(model.attrs.get("input_normalization", "none"))
        g = f.create_group("projection")
        put(g, "weight", model.proj_w)
        put(g, "bias", model.proj_b)
        for i, m in enumerate(model.mods):
            g = f.create_group("modules/%03d" % i)
            g.attrs["kind"] = m.kind
            put_bn(g.create_group("bn1"), m.bn1)
            put(g.create_group("expand"), "weight", m.expand)
            put_bn(g.create_group("bn2"), m.bn2)
            put(g.create_group("reduce"), "weight", m.reduce)
        for h in model.head_names:
            g = f.create_group("heads/" + h)
            put_bn(g.create_group("bn"), model.heads[h].bn)
            put(g, "weight", model.heads[h].weight)
            put(g, "bias", model.heads[h].bias)


def architecture(base):
    """Module specs (kind, C, E, R) from the spec's depth rules (channel counts follow C)."""
    specs, tops = [], []
    plans = [tower_plan(s) for s in range(5)]
    for s in range(6):
        c = PROJ_DEPTH if s < 5 else sum(tops)
        for kind, size in (plans[s] if s < 5 else upper_plan()):
            e, r = depths(base - 4 if kind == "up" else base, size)
            if kind != "up":
                e, r = max(e, c), max(r, c)
            specs.append((kind, c, e, r))
            c = min(r, c) if kind == "up" else max(r, c)
        if s < 5:
            tops.append(c)
    return specs


def build_random(base, nz, heads, seed=0, dtype=torch.float32, head_gain=1.0):
    """Random weights and random BN statistics (every parameter matters). heads: label names.

    Scales mimic the golden model (weights ~ N(0, 0.7^2 / fan_in), gamma and var ~ U(0.5, 1.5),
    beta and mean ~ U(-0.2, 0.2)); head_gain keeps logits moderate so softmax is not one-hot.
    """
    names = list(heads) + ["autoencoder"]
    net = IslNet(base, nz, names, architecture(base), {"input_normalization": "none"})
    g = torch.Generator().manual_seed(seed)

    def u(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64) * (hi - lo) + lo)

    def normal(t, fan_in, gain):
        t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64) * gain / math.sqrt(fan_in))

    for name, b in net.named_buffers():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("gamma", "var"):
            u(b, 0.5, 1.5)
        elif leaf in ("beta", "mean", "bias", "proj_b"):
            u(b, -0.2, 0.2)
    normal(net.proj_w, nz, 0.75)
    for m in net.mods:  # fan-in of a transposed 4x4 stride-2 conv output: 2C x 2 x 2 taps
        normal(m.expand, m.expand.shape[0] * 4 if m.kind == "up" else m.expand[0].numel(), 0.7)
        normal(m.reduce, m.reduce.shape[1], 0.7)
    for h in net.heads.values():
        normal(h.weight, h.weight.shape[1], head_gain)
    return net.to(dtype).eval()


# ----------------------------------------------------------------------------- inference
@torch.no_grad()
def forward(model, x, heads=None, autoencoder=False):
    """x: [N, nz, H, W] (H, W = 250 + 16m). Returns {head: logits [N, ch, H-242, W-242]}."""
    dt = next(model.buffers()).dtype
    return model(x.to(dt), heads, autoencoder)


def pad_amounts(n):
    e = (PATCH - (n + 2 * MARGIN)) % 16
    return MARGIN, MARGIN + e


def pad_image(stack):
    """Reflect-pad [nz, H, W] by 121 top/left and 121+e bottom/right (size = 250 mod 16)."""
    (t, b), (l, r) = pad_amounts(stack.shape[1]), pad_amounts(stack.shape[2])
    return np.pad(np.asarray(stack), ((0, 0), (t, b), (l, r)), mode="reflect")


def _tiles(n_in, tile):
    """Input tile origins along one axis: tiles of size t = 250 + 16k stepping by 16k."""
    t = min(n_in, tile)
    t = PATCH + 16 * ((t - PATCH) // 16)
    step = t - PATCH  # = 16k: consecutive tiles' outputs (8 + 16k each) overlap by 8
    assert step > 0 or t == n_in, "tile input size must be >= 266"
    origins = list(range(0, n_in - t + 1, step)) if step > 0 else [0]
    if origins[-1] != n_in - t:
        origins.append(n_in - t)
    return origins, t


@torch.no_grad()
def predict_image(model, stack, heads=None, autoencoder=False, tile=None, reduce=None):
    """Whole-image prediction of stack [nz, H, W] (float, in [0,1]) -> {head: [ch, H, W]}.

    One padded pass, or aligned tiles of input size <= tile (same result up to rounding).
    reduce: optional fn(head, logits[ch, h, w]) -> dict of arrays [.., h, w] applied per tile
    (e.g. stats) so full logits are never held; the result is then {head: {name: [.., H, W]}}.
    """
    nz, H, W = stack.shape
    dt = next(model.buffers()).dtype
    xp = torch.from_numpy(pad_image(np.asarray(stack, np.float64))).to(dt)[None]
    Hp, Wp = xp.shape[2:]
    oy, ty = _tiles(Hp, tile or Hp)
    ox, tx = _tiles(Wp, tile or Wp)
    names = list(model.label_heads if heads is None else heads)
    if autoencoder and "autoencoder" not in names:
        names.append("autoencoder")
    out = {}
    for y in oy:
        for x in ox:
            trunk = model.trunk(xp[:, :, y:y + ty, x:x + tx])
            for h in names:  # one head at a time keeps peak memory low
                lg = model.heads[h](trunk)[0]
                h0, w0 = lg.shape[1:]
                yy, xx = min(H - y, h0), min(W - x, w0)  # outputs beyond H, W are dropped
                if yy <= 0 or xx <= 0:
                    continue
                lg = lg[:, :yy, :xx]
                vals = reduce(h, lg) if reduce else {None: lg}
                for k, v in vals.items():
                    dst = out.setdefault(h, {})
                    if k not in dst:
                        dst[k] = torch.empty(v.shape[:-2] + (H, W), dtype=v.dtype)
                    dst[k][..., y:y + yy, x:x + xx] = v
                del lg, vals
            del trunk
    return {h: (d if reduce else d[None]) for h, d in out.items()}


def median(logits):
    """Smallest k with cumulative softmax probability >= 0.5, / 255 (class axis first)."""
    cdf = torch.cumsum(torch.softmax(torch.as_tensor(logits), 0), 0)
    return (cdf < 0.5).sum(0).clamp(max=NUM_CLASSES - 1).to(cdf.dtype) / 255


def stats(logits):
    """logits [256, ...] (class axis first) -> dict of statistics [...] (median, mean in [0,1])."""
    logits = torch.as_tensor(logits)
    p = torch.softmax(logits, 0)
    k = torch.arange(NUM_CLASSES, dtype=p.dtype).reshape((-1,) + (1,) * (p.dim() - 1))
    mean_k = (p * k).sum(0)
    cdf = torch.cumsum(p, 0)
    median_k = (cdf < 0.5).sum(0).clamp(max=NUM_CLASSES - 1)  # smallest k with cdf >= 0.5
    var = (p * (k - mean_k) ** 2).sum(0)
    logp = torch.log_softmax(logits, 0)
    ent = -(p * logp).sum(0) / math.log(NUM_CLASSES)
    return {"median": median_k.to(p.dtype) / 255, "mean": mean_k / 255, "mode": logits.argmax(0).to(p.dtype) / 255,
            "std": var.sqrt() / 255, "entropy": ent, "p_nonzero": 1 - p[0]}


def count_flops(model, H, W, heads=None, autoencoder=False):
    """2 * MACs of every conv / transposed conv (projection, modules, heads) for an H x W pass."""
    fl = 2 * H * W * PROJ_DEPTH * model.nz
    for s in range(5):
        o = (PATCH - TOWER_SIZES[s]) // 2
        h, w = H - 2 * o, W - 2 * o
        for m in model.mods[18 * s:18 * (s + 1)]:
            f, h, w = m.flops(h, w)
            fl += f
            if m.kind == "up":
                h, w = h - 4, w - 4
    for m in model.mods[90:]:
        f, h, w = m.flops(h, w)
        fl += f
    heads = list(model.label_heads if heads is None else heads) + (["autoencoder"] if autoencoder else [])
    for hd in heads:
        fl += 2 * h * w * model.heads[hd].weight[:, :, 0, 0].numel()
    return fl


def num_floats(model, with_heads=True):
    return sum(b.numel() for n, b in model.named_buffers() if with_heads or not n.startswith("heads."))


def read_stack(path):
    import tifffile
    a = tifffile.imread(path)
    if a.ndim == 2:
        a = a[None]
    if a.dtype == np.uint16:
        return a.astype(np.float64) / 65535
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255
    return a.astype(np.float64)


# ----------------------------------------------------------------------------- CLI
def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cmd_predict(a):
    dt = torch.float64 if a.double else torch.float32
    model = load_model(a.model, dt)
    stack = read_stack(a.input)
    assert stack.shape[0] == model.nz, "input has %d planes, model wants %d" % (stack.shape[0], model.nz)
    heads = a.heads.split(",") if a.heads else None
    red = (lambda h, lg: stats(lg) if h != "autoencoder" else
           {"plane%d_%s" % (z, k): v for z in range(model.nz)
            for k, v in stats(lg[z * NUM_CLASSES:(z + 1) * NUM_CLASSES]).items()}) if a.stats else None
    res = predict_image(model, stack, heads, a.autoencoder, a.tile, red)
    with h5py.File(a.out, "w") as f:
        for h, d in res.items():
            for k, v in (d.items() if red else [("logits", d)]):
                f.create_dataset("%s/%s" % (h, k), data=v.numpy())
    print("wrote", a.out, {h: list(d) if red else ["logits"] for h, d in res.items()})


def cmd_random(a):
    m = build_random(a.base, a.nz, a.heads.split(","), a.seed)
    save_model(m, a.out)
    print("wrote", a.out, "floats:", num_floats(m))


def cmd_bench(a):
    heads = ["label%d" % i for i in range(a.heads)]
    model = build_random(a.base, a.nz, heads, a.seed, torch.float64 if a.double else torch.float32)
    stack = np.random.default_rng(0).random((a.nz, a.size, a.size))
    Hp = a.size + sum(pad_amounts(a.size))
    flops = count_flops(model, Hp, Hp)
    print("params(floats, with heads)=%d padded=%d flops_padded_pass=%.1f GFLOP" % (num_floats(model), Hp, flops / 1e9))
    t0, c0 = time.perf_counter(), time.process_time()
    res = predict_image(model, stack, heads, False, a.tile, lambda h, lg: {"median": median(lg)})
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert all(r["median"].shape == (a.size, a.size) for r in res.values())
    print("torch_bench seconds=%.2f cpu_seconds=%.2f peak_rss_mb=%.0f gflops=%.2f base=%d size=%d nz=%d heads=%d "
          "threads=%d tile=%s" % (sec, cpu, _peak_rss_mb(), flops / sec / 1e9, a.base, a.size, a.nz, a.heads,
                                  torch.get_num_threads(), a.tile or "whole"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("predict")
    q.add_argument("--model", required=True)
    q.add_argument("--input", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--double", action="store_true")
    q.add_argument("--stats", action="store_true", help="write statistics instead of logits")
    q.add_argument("--autoencoder", action="store_true")
    q.add_argument("--heads", help="comma-separated label heads (default: all)")
    q.add_argument("--tile", type=int, help="max tile input size (aligned tiles)")
    q.add_argument("--threads", type=int, default=2)
    q.set_defaults(fn=cmd_predict)
    q = sub.add_parser("bench")
    q.add_argument("--base", type=int, default=400)
    q.add_argument("--size", type=int, default=1024)
    q.add_argument("--nz", type=int, default=13)
    q.add_argument("--heads", type=int, default=3)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--tile", type=int)
    q.add_argument("--double", action="store_true")
    q.add_argument("--threads", type=int, default=2)
    q.set_defaults(fn=cmd_bench)
    q = sub.add_parser("random")
    q.add_argument("--base", type=int, default=32)
    q.add_argument("--nz", type=int, default=13)
    q.add_argument("--heads", default="dapi_confocal,nfh_confocal")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.add_argument("--threads", type=int, default=2)
    q.set_defaults(fn=cmd_random)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
