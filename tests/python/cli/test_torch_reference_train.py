"""scripts/torch-reference-train.py (the PyTorch reference trainer of docs/training.md,
"PyTorch on the same fold") against `isl train`: with `--sampler isl` the script draws the
crops isl draws, so from the same initial model every step's losses and the written model
(weights and batch-norm moving averages) must agree. This checks the script's wiring end
to end: dataset reading (uint16 scaling, masks, a partial target), held-out regions and
their margin, crop positions and orientations, target binning, Adam, the moving
statistics and the model file it writes. isl's gradients themselves are checked against
PyTorch in test_train_oracle.py.

Needs torch (skips otherwise) and the built isl binary; no shared data. A few seconds.
"""
import csv
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tifffile

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
SCRIPT = REPO_ROOT / "scripts" / "torch-reference-train.py"
NZ, H, W = 2, 200, 180
# Columns 0..29 and rows 0..39 held out with a margin of 20: targets of columns 0..49 and
# rows 0..59 never train, so every drawable window holds known pixels of both labels.
COMMON = ("--crop", 250, "--batch", 2, "--lr", 1e-3, "--bn-decay", 0.9, "--seed", 4,
          "--threads", 1, "--validation", "0,0,30,200", "--validation", "0,0,180,40",
          "--validation-margin", 20)


@pytest.fixture(scope="module")
def data(tmp_path_factory, run_isl):
    d = tmp_path_factory.mktemp("torchref")
    rng = np.random.default_rng(11)
    stack = rng.integers(0, 65536, size=(NZ, H, W), dtype=np.uint16)
    smooth = stack.astype(np.float64).mean(0) / 65535
    a = np.clip(smooth * 2 - 0.5, 0, 1)
    tifffile.imwrite(d / "stack.tif", stack, photometric="minisblack")
    tifffile.imwrite(d / "a.tif", np.round(a * 65535).astype(np.uint16))
    # b on rows 60.. only, known on bands of 3 rows: an 8-row output window always holds
    # some (a head absent from a batch: the last test).
    tifffile.imwrite(d / "b.tif", (1 - a[60:, :]).astype(np.float32))
    tifffile.imwrite(d / "bmask.tif", ((np.arange(H - 60) // 3) % 2 == 0)[:, None]
                     .repeat(W, 1).astype(np.uint8))
    r = run_isl("dataset", "build", "--input", d / "stack.tif", "--target", f"a={d / 'a.tif'}",
                "--target", f"b={d / 'b.tif'}:0,60", "--mask", f"b={d / 'bmask.tif'}",
                "-o", d / "data.h5")
    assert r.returncode == 0, r.stderr
    r = run_isl("model", "init", "--base-depth", 5, "--num-z", NZ, "--heads", "a,b",
                "--seed", 3, "-o", d / "init.h5")
    assert r.returncode == 0, r.stderr
    return d


def torch_train(data, out, steps, *extra):
    r = subprocess.run([sys.executable, str(SCRIPT), "--dataset", str(data / "data.h5"),
                        "--model", str(data / "init.h5"), "--out", str(out), "--steps",
                        str(steps), *map(str, COMMON), *map(str, extra)],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    return r


def log_losses(path):
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["loss_total"] != ""]
    return np.array([[float(r[k]) for k in ("loss_a", "loss_b", "loss_label", "loss_total")]
                     for r in rows])


def arrays(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                     and not n.startswith("optimizer") else None)
    return out


@pytest.fixture(scope="module")
def runs(data, run_isl, tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    for name, steps in (("isl", 3), ("isl1", 1)):
        r = run_isl("train", "--dataset", data / "data.h5", "--model", data / "init.h5",
                    "--out", d / (name + ".h5"), "--steps", steps, "--label-weight", 1,
                    "--validate-every", 0, *COMMON)
        assert r.returncode == 0, r.stderr
    for name, steps in (("torch", 3), ("torch1", 1)):
        torch_train(data, d / (name + ".h5"), steps, "--sampler", "isl", "--augment", "dihedral")
    return d


def test_losses_match_isl_train_step_by_step(runs):
    isl, ref = log_losses(runs / "isl.log.csv"), log_losses(runs / "torch.log.csv")
    assert isl.shape == ref.shape == (3, 4)
    assert np.all(np.isfinite(isl)) and np.all(isl > 0.5)     # both heads known in each batch
    np.testing.assert_allclose(ref[0], isl[0], atol=2e-5)   # same weights: the same loss
    # After updates, float sums in another order move Adam's first, sign-like steps of
    # the weights with the smallest gradients: a drift of about 1e-4 by step 3 (a
    # missing update of one head gives 7e-4).
    np.testing.assert_allclose(ref[1:], isl[1:], atol=2e-4)
    assert abs(isl[2, 3] - isl[0, 3]) > 1e-3   # the weights moved: later steps test Adam too


def test_written_model_matches_isl_train(runs, data):
    """After one step (the same weights in both forwards, so the same batch statistics)."""
    isl, ref, init = arrays(runs / "isl1.h5"), arrays(runs / "torch1.h5"), arrays(data / "init.h5")
    assert set(isl) == set(ref) == set(init)
    stats = [k for k in isl if k.endswith("/mean") or k.endswith("/var")]
    assert len(stats) > 400
    for k in stats:   # moving averages after a step of decay 0.9: 0.1 of the way to the batch's
        np.testing.assert_allclose(ref[k], isl[k], rtol=2e-4, atol=2e-6, err_msg=k)
    assert max(np.abs(isl[k] - init[k]).max() for k in stats) > 0.01
    # Weights: Adam moves each by about lr per step whatever the gradient's size, so a
    # weight whose gradient is near 0 may differ by up to a step; nearly all must agree.
    moved = bad = total = 0
    for k in isl:
        if k in stats or isl[k].dtype.kind != "f":
            continue
        d = np.abs(ref[k] - isl[k])
        bad += int((d > 3e-5).sum())
        total += d.size
        moved += int((np.abs(isl[k] - init[k]) > 5e-4).sum())   # lr 1e-3
    assert moved > total // 2 and bad <= total // 200, (moved, bad, total)


def test_resume_continues_the_run(data, tmp_path):
    full = tmp_path / "full.h5"
    torch_train(data, full, 3, "--checkpoint-every", 1)
    part = tmp_path / "part.h5"
    torch_train(data, part, 2, "--checkpoint-every", 1)
    r = torch_train(data, part, 3, "--checkpoint-every", 1)
    assert "resumed" in r.stderr
    np.testing.assert_array_equal(log_losses(tmp_path / "part.log.csv"),
                                  log_losses(tmp_path / "full.log.csv"))
    a, b = arrays(full), arrays(part)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_rot90_augment_draws_rotations_only(data):
    import importlib.util
    spec = importlib.util.spec_from_file_location("torchref", SCRIPT)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    well = {"name": "w", "stack": np.zeros((1, 40, 40), np.float32),
            "values": np.zeros((1, 40, 40), np.float32), "known": np.ones((1, 40, 40), bool)}
    held = np.zeros((40, 40), bool)
    held[:, :20] = True
    s = m.Sampler([well], 250, [held], "rot90")   # outputs 8 x 8: windows x0 >= 13 only
    rng = np.random.default_rng(0)
    seen = {c[3][2] for c in s.draw_numpy(rng, 400)}
    xs = {c[3][1] for c in s.draw_numpy(rng, 400)}
    assert seen == {0, 3, 5, 6}                   # identity and the three rotations
    assert min(xs) == 13 and max(xs) == 32
    a = np.arange(9).reshape(3, 3)
    assert [any((m.dihedral(a, t) == np.rot90(a, k)).all() for t in seen) for k in range(4)] == [True] * 4


def test_weight_decay_is_adamw_on_the_convolution_weights(runs, data, run_isl, tmp_path):
    """`isl train --weight-decay L` after one step: every convolution weight is the
    undecayed step's minus lr * L times its initial value (the first gradient is taken at
    the initial weights either way), everything else is the undecayed step's; and it is
    what torch.optim.AdamW with the decay on the .../weight arrays computes. With label
    weight 1 the autoencoder head has no gradient and, as in PyTorch, neither steps nor
    decays."""
    decay, lr = 20.0, 1e-3
    r = run_isl("train", "--dataset", data / "data.h5", "--model", data / "init.h5",
                "--out", tmp_path / "isl.h5", "--steps", 1, "--label-weight", 1,
                "--validate-every", 0, "--weight-decay", decay, *COMMON)
    assert r.returncode == 0, r.stderr
    torch_train(data, tmp_path / "torch.h5", 1, "--sampler", "isl", "--augment", "dihedral",
                "--weight-decay", decay)
    wd, plain, init = arrays(tmp_path / "isl.h5"), arrays(runs / "isl1.h5"), arrays(data / "init.h5")
    ref = arrays(tmp_path / "torch.h5")
    weights = [k for k in wd if k.endswith("/weight") and "autoencoder" not in k]
    assert len(weights) > 100
    for k in wd:
        if wd[k].dtype.kind != "f":
            continue
        if k in weights:
            np.testing.assert_allclose(wd[k], plain[k] - lr * decay * init[k], rtol=0,
                                       atol=2e-7, err_msg=k)
        else:
            np.testing.assert_array_equal(wd[k], plain[k], err_msg=k)
    shrink = max(np.abs(lr * decay * init[k]).max() for k in weights)
    assert shrink > 1e-3                       # the decay is far above the tolerance below
    bad = total = 0
    for k in weights:
        d = np.abs(ref[k] - wd[k])
        bad += int((d > 3e-5).sum())
        total += d.size
    assert bad <= total // 200, (bad, total)
    r = run_isl("train", "--dataset", data / "data.h5", "--model", data / "init.h5",
                "--out", tmp_path / "bad.h5", "--steps", 1, "--weight-decay", -1, *COMMON)
    assert r.returncode == 2 and "--weight-decay" in r.stderr and not (tmp_path / "bad.h5").exists()


def test_a_head_absent_from_a_batch_is_bias_corrected_by_its_own_updates(data, run_isl,
                                                                        tmp_path):
    """A head without a known pixel in a batch takes no Adam update, and its first update
    later is bias-corrected as a first update, as torch.optim.Adam does for a parameter
    without gradient (each parameter counts its own steps). Label b known on rows 150..
    only: with crop seed 6 the first batch holds none of it, the second does. Bias
    correction by the trainer's step count instead (isl before 0.10.2) moves b's weights by
    0.74 lr at step 2, 2.6e-4 away from PyTorch's."""
    d = tmp_path
    with tifffile.TiffFile(data / "a.tif") as f:
        a = f.asarray().astype(np.float64) / 65535
    tifffile.imwrite(d / "b.tif", (1 - a[150:, :]).astype(np.float32))
    r = run_isl("dataset", "build", "--input", data / "stack.tif",
                "--target", f"a={data / 'a.tif'}", "--target", f"b={d / 'b.tif'}:0,150",
                "-o", d / "data.h5")
    assert r.returncode == 0, r.stderr
    common = [str(x) for x in COMMON]
    common[common.index("--seed") + 1] = "6"
    r = run_isl("train", "--dataset", d / "data.h5", "--model", data / "init.h5",
                "--out", d / "isl.h5", "--steps", 2, "--label-weight", 1,
                "--validate-every", 0, *common)
    assert r.returncode == 0, r.stderr
    with open(d / "isl.log.csv", newline="") as f:
        losses = list(csv.DictReader(f))
    assert [row["loss_b"] != "" for row in losses if row["loss_total"] != ""] == [False, True]
    r = subprocess.run([sys.executable, str(SCRIPT), "--dataset", str(d / "data.h5"),
                        "--model", str(data / "init.h5"), "--out", str(d / "torch.h5"),
                        "--steps", "2", *common, "--sampler", "isl", "--augment", "dihedral"],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    isl, ref, init = arrays(d / "isl.h5"), arrays(d / "torch.h5"), arrays(data / "init.h5")
    head_b = [k for k in isl if k.startswith("heads/b/") and isl[k].dtype.kind == "f"
              and not k.endswith("/mean") and not k.endswith("/var")]
    assert head_b
    moved = bad = total = 0
    for k in head_b:
        step = np.abs(isl[k] - init[k])
        moved += int((np.abs(step - 1e-3) < 1e-5).sum())   # a first update: lr sign(g)
        bad += int((np.abs(ref[k] - isl[k]) > 3e-5).sum())
        total += step.size
    assert moved > total * 9 // 10 and bad <= total // 200, (moved, bad, total)
