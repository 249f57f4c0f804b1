"""isl's training engine against PyTorch autograd (tests/oracle/train_torch.py): the
training-mode logits, the losses and every parameter's gradient of one batch.

The C side is `test_train --dump` (tests/test_train.c), which runs the engine's forward
and backward on a model file and a batch file and writes what it computed.

Environment: ISL_BUILD_DIR (default: <repository>/build).
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO_ROOT / "tests" / "oracle"))

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")
import isl_torch  # noqa: E402
import train_torch  # noqa: E402

BASE, NZ, LABELS, BATCH, SIDE = 8, 2, ("dapi_confocal", "nfh_confocal"), 2, 250
OUT = SIDE - 242


@pytest.fixture(scope="module")
def dump_bin():
    path = pathlib.Path(os.environ.get("ISL_BUILD_DIR", REPO_ROOT / "build")) / "tests" / "test_train"
    if not path.is_file():
        pytest.skip(f"{path} not built")
    return path


# Without dropout; dropout of single values of the heads' inputs; of whole channels.
DROPOUTS = [None, (0.3, 0, 91, 5), (0.5, 1, 92, 6)]


@pytest.fixture(scope="module", params=DROPOUTS, ids=["plain", "dropout", "spatial_dropout"])
def case(dump_bin, tmp_path_factory, request):
    """(torch results, isl results) for one random model and batch; the oracle draws
    the dropout mask with its own numpy splitmix64 (train_torch.dropout_mask)."""
    dropout = request.param
    tmp = tmp_path_factory.mktemp("train_oracle")
    torch.manual_seed(0)
    model = isl_torch.build_random(BASE, NZ, LABELS, seed=5)
    isl_torch.save_model(model, tmp / "model.h5")
    rng = np.random.default_rng(6)
    inputs = rng.random((BATCH, NZ, SIDE, SIDE), dtype=np.float32)
    targets = (rng.random((BATCH, len(LABELS), OUT, OUT)) ** 2).astype(np.float32)
    masks = np.ones((BATCH, len(LABELS), OUT, OUT), np.float32)
    masks[1, 1] = 0                              # label 1 unknown in image 1 ...
    masks[0, 1] = np.tri(OUT, dtype=np.float32)  # ... and on half of image 0
    with h5py.File(tmp / "batch.h5", "w") as f:
        g = f.create_group("batch")
        for k, v in (("batch", BATCH), ("height", SIDE), ("width", SIDE)):
            g.attrs.create(k, v, dtype=np.uint64)
        g["inputs"], g["targets"], g["masks"] = inputs, targets, masks
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    extra = [str(v) for v in dropout] if dropout else []
    r = subprocess.run([str(dump_bin), "--dump", str(tmp / "model.h5"), str(tmp / "batch.h5"),
                        str(tmp / "out.h5")] + extra, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    ref = train_torch.train_losses(isl_torch.load_model(tmp / "model.h5", torch.float64),
                                   inputs, targets, masks, dropout=dropout)
    with h5py.File(tmp / "out.h5", "r") as f:
        grads = {}
        f.visititems(lambda name, obj: grads.__setitem__("/" + name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return ref, grads


def test_logits_and_losses(case):
    (losses, logits, _, _), out = case
    for h, ref in logits.items():
        got = out["/logits/" + h]
        scale = np.abs(ref).max()
        assert scale > 0.1
        assert np.abs(got - ref).max() <= 2e-5 * scale, h
    np.testing.assert_allclose(out["/losses"], losses, rtol=2e-6, atol=2e-7, equal_nan=True)
    assert np.isnan(losses[:2]).sum() == 0 and losses[-1] > 0


def test_parameter_gradients(case):
    (_, _, grads, _), out = case
    assert len(grads) == 2 + 6 * 104 + 4 * (len(LABELS) + 1)
    worst, errs = 0.0, []
    for path, ref in grads.items():
        got = out[path]
        assert got.shape == ref.shape, path
        if path == "/projection/bias":
            # No effect in training mode (everything after it is batch-normalized or
            # shift-equivariant): 0 up to rounding, next to the weights' gradient.
            scale = np.abs(grads["/projection/weight"]).max()
            assert np.abs(got).max() < 1e-3 * scale and np.abs(ref).max() < 1e-6 * scale
            continue
        scale = np.abs(ref).max()
        err = np.abs(got - ref).max() / scale
        worst = max(worst, err)
        errs.append((err, path))
        # Float32 itself: PyTorch in float32 differs from float64 by up to 4.6e-3 of an
        # array's largest gradient on this case (rounding flips near-tied max-pool
        # choices and relu signs); isl's worst is 2.9e-3.
        assert err < 1e-2, (path, err, scale)
    print("largest relative gradient errors:", ", ".join(
        "%s %.1e" % (p, e) for e, p in sorted(errs, reverse=True)[:4]))


def test_input_gradient(case):
    (_, _, _, dx), out = case
    got = out["/input_grad"]
    assert np.abs(got - dx).max() < 1e-2 * np.abs(dx).max()


def test_running_statistics_have_no_gradient(case):
    _, out = case
    for path, g in out.items():
        if path.endswith("/mean") or path.endswith("/var"):
            assert not np.any(g), path
