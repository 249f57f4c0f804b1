"""End-to-end tests of `isl train` (tools/cmd_train.c): a short run, its outputs and log,
validation, resume equivalence, interruption, transfer learning, and bad input.

Run: ISL_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/cli/test_train_cli.py -q
"""
import csv
import math
import os
import re
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import tifffile

from .test_cli import assert_one_error_line

NZ, H, W = 3, 300, 300
CROP = 266  # outputs 24 x 24
# One thread: bitwise reproducible runs, and no OpenMP spinning on a loaded machine.
COMMON = ("--threads", 1, "--crop", CROP, "--batch", 2, "--bn-batches", 2)


def smooth(a):
    k = np.ones(5) / 5
    a = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 0, a)
    return np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, a)


@pytest.fixture(scope="module")
def data(tmp_path_factory, run_isl):
    """A 3-plane well with label 'a' everywhere and label 'b' on rows 100.. only, both
    functions of the input (learnable), plus a base-8 model with heads a, b."""
    d = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(3)
    stack = rng.random((NZ, H, W)).astype(np.float32)
    a = np.clip(smooth(stack[1]) * 1.5 - 0.25, 0, 1).astype(np.float32)
    b = np.clip(1 - smooth(stack[0]), 0, 1).astype(np.float32)[100:, :]
    tifffile.imwrite(d / "stack.tif", stack, photometric="minisblack")
    tifffile.imwrite(d / "a.tif", a)
    tifffile.imwrite(d / "b.tif", b)
    r = run_isl("dataset", "build", "--input", d / "stack.tif", "--target", f"a={d / 'a.tif'}",
                "--target", f"b={d / 'b.tif'}:0,100", "-o", d / "data.h5")
    assert r.returncode == 0, r.stderr
    r = run_isl("model", "init", "--base-depth", 8, "--num-z", NZ, "--heads", "a,b", "--seed", 5,
                "-o", d / "init.h5")
    assert r.returncode == 0, r.stderr
    return d


def read_log(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [r for r in rows if r["loss_total"] != ""]
    validations = [r for r in rows if r["loss_total"] == ""]
    return steps, validations


def model_arrays(path):
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer"):
            out[name] = obj[()]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def train(run_isl, data, out, *extra, steps=6, **kw):
    return run_isl("train", "--dataset", data / "data.h5", "--out", out, "--steps", steps,
                   *COMMON, *extra, **kw)


def test_help(run_isl):
    r = run_isl("train", "--help")
    assert r.returncode == 0
    for option in ("--dataset", "--resume", "--validation", "--add-head", "--checkpoint-every"):
        assert option in r.stdout
    # The library's defaults, as include/isl.h documents them, read by the help.
    for line in ("Adam learning rate (default 0.0001)", "autoencoder (default 0.5)",
                 "moving averages (default 0.99)", "seed of the crops (default 0)"):
        assert line in r.stdout, line


def test_short_run_writes_model_log_and_validation(run_isl, data, tmp_path):
    out = tmp_path / "m.h5"
    r = train(run_isl, data, out, "--model", data / "init.h5", "--validation", "0,200,300,100",
              "--validate-every", 3, "--checkpoint-every", 2, "--lr", 1e-3)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {out}"
    assert "validation at step 3" in r.stderr
    info = run_isl("model", "info", out)
    assert info.returncode == 0 and "a" in info.stdout
    steps, validations = read_log(tmp_path / "m.log.csv")
    assert [int(s["step"]) for s in steps] == [1, 2, 3, 4, 5, 6]
    for s in steps:
        # A head without known pixels in a batch has no loss (empty), the others always.
        for k in ("loss_a", "loss_b", "loss_label", "loss_autoencoder", "loss_total"):
            if k != "loss_b" or s[k]:
                v = float(s[k])
                assert 0 < v < 3, (k, v)
        # total = 0.5 label + 0.5 autoencoder, as logged
        assert math.isclose(float(s["loss_total"]),
                            0.5 * float(s["loss_label"]) + 0.5 * float(s["loss_autoencoder"]),
                            abs_tol=2e-5)
    # Validation at step 3 and at the end (after the batch-norm re-estimation).
    assert [int(v["step"]) for v in validations] == [3, 6]
    for v in validations:
        for k in ("r_a", "r_b"):
            assert -1 <= float(v[k]) <= 1
    # The best validation's model is kept: its mean r is the highest logged.
    means = [(float(v["r_a"]) + float(v["r_b"])) / 2 for v in validations]
    assert (tmp_path / "m.best.h5").is_file()
    saved = [float(x) for x in re.findall(r"best validation so far \(mean r ([-0-9.]+)\)", r.stderr)]
    assert saved and abs(saved[-1] - max(means)) < 2e-4, (saved, means)
    # The checkpoint is complete and resumable; the model differs from the initial one.
    assert (tmp_path / "m.checkpoint.h5").is_file()
    with h5py.File(tmp_path / "m.checkpoint.h5", "r") as f:
        assert f["optimizer"].attrs["step"] == 6
    init, trained = model_arrays(data / "init.h5"), model_arrays(out)
    assert init.keys() == trained.keys()
    assert any(not np.array_equal(init[k], trained[k]) for k in init)


def test_validation_pearson_matches_independent_computation(run_isl, data, tmp_path):
    """The logged r equals numpy's Pearson r of `isl predict`'s median against the target
    over the held-out region."""
    out = tmp_path / "m.h5"
    region = (20, 180, 250, 120)  # x0, y0, width, height
    r = train(run_isl, data, out, "--model", data / "init.h5", "--validation",
              ",".join(map(str, region)), "--validate-every", 0, steps=2)
    assert r.returncode == 0, r.stderr
    _, validations = read_log(tmp_path / "m.log.csv")
    logged = float(validations[-1]["r_b"]), float(validations[-1]["r_a"])
    p = run_isl("predict", "--model", out, "--input", data / "stack.tif", "--output-dir",
                tmp_path / "pred", "--threads", 1)
    assert p.returncode == 0, p.stderr
    x0, y0, w, h = region
    target_b = np.zeros((H, W), np.float32)
    target_b[100:] = tifffile.imread(data / "b.tif")
    expected, painted = [], []
    for name, target in (("b", target_b), ("a", tifffile.imread(data / "a.tif"))):
        pred = tifffile.imread(tmp_path / "pred" / f"{name}_median.tif")
        p = pred[y0:y0 + h, x0:x0 + w].ravel().astype(np.float64)
        t = target[y0:y0 + h, x0:x0 + w].ravel().astype(np.float64)
        expected.append(np.corrcoef(p, t)[0, 1])
        # The background check: dark target pixels (below the median) predicted bright
        # (above the target's 90th percentile).
        dark = t < np.median(t)
        painted.append(np.mean(p[dark] > np.percentile(t, 90)))
    np.testing.assert_allclose(logged, expected, atol=1e-4)
    logged_painted = float(validations[-1]["painted_b"]), float(validations[-1]["painted_a"])
    np.testing.assert_allclose(logged_painted, painted, atol=1e-4)
    assert "dark background painted bright" in r.stderr


def test_unlabelled_share_trains_the_autoencoder_on_unlabelled_crops(run_isl, data, tmp_path):
    """Label a is known on rows 0..299 and b on rows 100..299; held out with the margin,
    rows 79..299 leave only a's rows 0..78. With an unlabelled share of 1 every crop is
    drawn anywhere not held out, so crops whose window lies in rows 0..78 still carry a;
    nothing else changes the run but the crops: the losses differ from the plain run's."""
    common = ("--model", data / "init.h5", "--validation", "0,200,300,100",
              "--validate-every", 0)
    r = train(run_isl, data, tmp_path / "u.h5", *common, "--unlabelled-share", 1, steps=4)
    assert r.returncode == 0, r.stderr
    r = train(run_isl, data, tmp_path / "p.h5", *common, steps=4)
    assert r.returncode == 0, r.stderr
    u, _ = read_log(tmp_path / "u.log.csv")
    p, _ = read_log(tmp_path / "p.log.csv")
    assert all(s["loss_autoencoder"] != "" for s in u)
    assert [s["loss_total"] for s in u] != [s["loss_total"] for s in p]


@pytest.mark.parametrize("margin", [None, 0])
def test_validation_margin_keeps_nearby_targets_out(run_isl, data, tmp_path, margin):
    """Label b is known on rows 100..299. Holding out rows 200..299 with the default margin
    of 121 pixels also keeps rows 79..199 out, so b is never trained (its loss is empty in
    every step); with --validation-margin 0 rows 100..199 of b train."""
    extra = () if margin is None else ("--validation-margin", margin)
    r = train(run_isl, data, tmp_path / "m.h5", "--model", data / "init.h5", "--validation",
              "0,200,300,100", "--validate-every", 0, *extra, steps=8)
    assert r.returncode == 0, r.stderr
    steps, _ = read_log(tmp_path / "m.log.csv")
    trained_b = [s["loss_b"] != "" for s in steps]
    assert any(trained_b) == (margin == 0), trained_b


@pytest.mark.parametrize("jitter", [(), ("--contrast-jitter", "0.5"),
                                    ("--gamma-jitter", "0.3", "--blur", "1.5", "--noise", "0.03"),
                                    ("--scale-jitter", "0.2"), ("--dropout", "0.3"),
                                    ("--spatial-dropout", "0.2"), ("--stochastic-depth", "0.5")])
def test_resume_gives_the_same_run(run_isl, data, tmp_path, jitter):
    """Also with the photometric options, given again on --resume as the help says; they
    change the run (its losses differ from the plain run's)."""
    straight = tmp_path / "straight.h5"
    r = train(run_isl, data, straight, "--model", data / "init.h5", "--checkpoint-every", 100,
              *jitter)
    assert r.returncode == 0, r.stderr
    split = tmp_path / "split.h5"
    r = train(run_isl, data, split, "--model", data / "init.h5", *jitter, steps=3)
    assert r.returncode == 0, r.stderr
    r = train(run_isl, data, split, "--resume", tmp_path / "split.checkpoint.h5", *jitter)
    assert r.returncode == 0, r.stderr
    a, _ = read_log(tmp_path / "straight.log.csv")
    b, _ = read_log(tmp_path / "split.log.csv")
    if jitter:
        plain = tmp_path / "plain.h5"
        assert train(run_isl, data, plain, "--model", data / "init.h5", steps=1).returncode == 0
        c, _ = read_log(tmp_path / "plain.log.csv")
        assert c[0]["loss_total"] != a[0]["loss_total"]
    assert [s["step"] for s in b] == ["1", "2", "3", "4", "5", "6"]
    cols = ("loss_a", "loss_b", "loss_autoencoder", "loss_total")
    assert [[s[c] for c in cols] for s in a] == [[s[c] for c in cols] for s in b]
    ma, mb = model_arrays(straight), model_arrays(split)
    for k in ma:
        np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)


def test_keep_activations_changes_nothing(run_isl, data, tmp_path):
    """--keep-activations (the forward pass's batch-norm outputs kept for the backward
    pass) gives the run of the same command without it, bit for bit, also when only the
    resumed half keeps them: losses in the log and the model's arrays."""
    opts = ("--stochastic-depth", "0.5", "--dropout", "0.3")
    plain, kept, mixed = tmp_path / "plain.h5", tmp_path / "kept.h5", tmp_path / "mixed.h5"
    for out, extra in ((plain, ()), (kept, ("--keep-activations",))):
        r = train(run_isl, data, out, "--model", data / "init.h5", *opts, *extra)
        assert r.returncode == 0, r.stderr
    r = train(run_isl, data, mixed, "--model", data / "init.h5", *opts, steps=3)
    assert r.returncode == 0, r.stderr
    r = train(run_isl, data, mixed, "--resume", tmp_path / "mixed.checkpoint.h5", *opts,
              "--keep-activations")
    assert r.returncode == 0, r.stderr
    cols = ("loss_a", "loss_b", "loss_autoencoder", "loss_total")
    logs = [read_log(tmp_path / f"{name}.log.csv")[0] for name in ("plain", "kept", "mixed")]
    assert [[s[c] for c in cols] for s in logs[1]] == [[s[c] for c in cols] for s in logs[0]]
    assert [[s[c] for c in cols] for s in logs[2]] == [[s[c] for c in cols] for s in logs[0]]
    reference = model_arrays(plain)
    for other in (kept, mixed):
        arrays = model_arrays(other)
        for k in reference:
            np.testing.assert_array_equal(arrays[k], reference[k], err_msg=k)


@pytest.fixture(scope="module")
def sparse(tmp_path_factory, run_isl):
    """The well of `data` with label 'a' known in a 2 x 2 block only ('dot'), or in one
    pixel ('pixel'): zoomed crops often (2 x 2) or always (one pixel: a target needs four
    known neighbours) hold no known target."""
    d = tmp_path_factory.mktemp("sparse")
    rng = np.random.default_rng(4)
    tifffile.imwrite(d / "stack.tif", rng.random((NZ, H, W)).astype(np.float32),
                     photometric="minisblack")
    for name, side in (("dot", 2), ("pixel", 1)):
        tifffile.imwrite(d / f"{name}.tif", np.full((side, side), 0.7, np.float32))
        r = run_isl("dataset", "build", "--input", d / "stack.tif", "--target",
                    f"a={d / (name + '.tif')}:150,150", "-o", d / f"{name}.h5")
        assert r.returncode == 0, r.stderr
    r = run_isl("model", "init", "--base-depth", 8, "--num-z", NZ, "--heads", "a", "--seed", 5,
                "-o", d / "init.h5")
    assert r.returncode == 0, r.stderr
    return d


def sparse_train(run_isl, d, name, out, *extra, steps=6):
    return run_isl("train", "--dataset", d / f"{name}.h5", "--out", out, "--steps", steps,
                   "--threads", 1, "--crop", CROP, "--batch", 1, "--scale-jitter", 0.4,
                   "--label-weight", 1, "--validate-every", 0, *extra)


def test_batches_without_known_targets_are_drawn_again(run_isl, sparse, tmp_path):
    """A zoomed crop of the 2 x 2 label often knows none of it: no step is taken on such a
    batch, and the step's batch is drawn again, by a seed of the step and the attempt, so
    the log counts real steps once each and a resumed run repeats the straight one."""
    common = ("--model", sparse / "init.h5")
    r = sparse_train(run_isl, sparse, "dot", tmp_path / "s.h5", *common, "--checkpoint-every", 100)
    assert r.returncode == 0, r.stderr
    m = re.search(r"(\d+) batches held no known target pixel and were drawn again", r.stderr)
    assert m and int(m.group(1)) > 0, r.stderr
    a, _ = read_log(tmp_path / "s.log.csv")
    assert [s["step"] for s in a] == ["1", "2", "3", "4", "5", "6"]
    assert all(s["loss_a"] != "" and float(s["loss_total"]) > 0 for s in a)
    r = sparse_train(run_isl, sparse, "dot", tmp_path / "p.h5", *common, steps=3)
    assert r.returncode == 0, r.stderr
    r = sparse_train(run_isl, sparse, "dot", tmp_path / "p.h5", "--resume",
                     tmp_path / "p.checkpoint.h5")
    assert r.returncode == 0, r.stderr
    b, _ = read_log(tmp_path / "p.log.csv")
    assert [s["loss_total"] for s in a] == [s["loss_total"] for s in b]
    ma, mb = model_arrays(tmp_path / "s.h5"), model_arrays(tmp_path / "p.h5")
    for k in ma:
        np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)


def test_a_label_no_zoomed_crop_can_know_stops_with_an_error(run_isl, sparse, tmp_path):
    out = tmp_path / "m.h5"
    r = sparse_train(run_isl, sparse, "pixel", out, "--model", sparse / "init.h5")
    assert r.returncode == 1
    assert "100 batches in a row for step 1 held no known target pixel" in r.stderr
    assert not out.exists()


def test_interrupt_saves_a_checkpoint_and_resumes(isl_bin, run_isl, data, tmp_path):
    out = tmp_path / "m.h5"
    log = tmp_path / "m.log.csv"
    proc = subprocess.Popen([str(isl_bin), "train", "--dataset", str(data / "data.h5"),
                             "--model", str(data / "init.h5"), "--out", str(out), "--steps",
                             "1000", *map(str, COMMON)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(read_log(log)[0]) < 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    assert not out.exists()
    with h5py.File(tmp_path / "m.checkpoint.h5", "r") as f:
        stopped = int(f["optimizer"].attrs["step"])
    assert stopped == len(read_log(log)[0]) >= 2
    r = train(run_isl, data, out, "--resume", tmp_path / "m.checkpoint.h5", steps=stopped + 1)
    assert r.returncode == 0, r.stderr
    assert [int(s["step"]) for s in read_log(log)[0]] == list(range(1, stopped + 2))


def test_transfer_learning_adds_a_head_and_keeps_the_trunk(run_isl, data, tmp_path):
    base = tmp_path / "base.h5"
    r = run_isl("model", "init", "--base-depth", 8, "--num-z", NZ, "--heads", "a", "--seed", 9,
                "-o", base)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "m.h5"
    r = train(run_isl, data, out, "--init-from", base, "--add-head", "b", "--freeze-trunk",
              "--label-weight", 1)
    assert r.returncode == 0, r.stderr
    before, after = model_arrays(base), model_arrays(out)
    new = [k for k in after if k not in before]
    assert new and all(k.startswith("heads/b/") for k in new), new
    for k, v in before.items():
        if not k.startswith("heads/"):
            np.testing.assert_array_equal(v, after[k], err_msg=k)
    info = run_isl("model", "info", out)
    assert "b" in info.stdout


def test_default_keeps_the_moving_averages(run_isl, data, tmp_path):
    """Without --bn-batches the model written is the checkpoint's: weights and moving
    averages, no re-estimation; --bn-batches 2 changes the statistics only."""
    out, re_est = tmp_path / "plain.h5", tmp_path / "re.h5"
    args = ("--model", data / "init.h5", "--threads", 1, "--crop", CROP, "--batch", 2,
            "--steps", 3)
    r = run_isl("train", "--dataset", data / "data.h5", "--out", out, *args)
    assert r.returncode == 0, r.stderr
    assert "re-estimating" not in r.stderr
    plain, ckpt = model_arrays(out), model_arrays(tmp_path / "plain.checkpoint.h5")
    for k in plain:
        np.testing.assert_array_equal(plain[k], ckpt[k], err_msg=k)
    r = run_isl("train", "--dataset", data / "data.h5", "--out", re_est, *args,
                "--bn-batches", 2)
    assert r.returncode == 0 and "re-estimating" in r.stderr, r.stderr
    other = model_arrays(re_est)
    stats = [k for k in plain if k.endswith(("/mean", "/var"))]
    assert any(not np.array_equal(plain[k], other[k]) for k in stats)
    for k in plain:
        if k not in stats:
            np.testing.assert_array_equal(plain[k], other[k], err_msg=k)


def test_freeze_bn_trains_weights_and_keeps_statistics(run_isl, data, tmp_path):
    """--freeze-bn: every weight trains, no batch-norm statistic changes (neither by the
    steps nor by a final re-estimation)."""
    first, out = tmp_path / "first.h5", tmp_path / "frozen.h5"
    r = train(run_isl, data, first, "--model", data / "init.h5", steps=3)
    assert r.returncode == 0, r.stderr
    r = train(run_isl, data, out, "--model", first, "--freeze-bn", "--lr", 1e-3,
              "--bn-batches", 0, steps=3)
    assert r.returncode == 0, r.stderr
    assert "re-estimating" not in r.stdout + r.stderr
    before, after = model_arrays(first), model_arrays(out)
    stats = [k for k in before if k.endswith(("/mean", "/var"))]
    assert stats
    for k in stats:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    for k in ("projection/weight", "modules/000/expand/weight", "heads/a/weight"):
        assert not np.array_equal(before[k], after[k]), k


def test_freeze_bn_from_an_initial_model_estimates_the_statistics_first(run_isl, data,
                                                                         tmp_path):
    """--freeze-bn --bn-batches K on a fresh run: the statistics are estimated over K
    batches before the first step (the same batches and values as the end-of-run
    re-estimation of an unchanged model), then stay frozen, also when resumed."""
    init = model_arrays(data / "init.h5")
    stats = [k for k in init if k.endswith(("/mean", "/var"))]
    ref, zero, out = tmp_path / "ref.h5", tmp_path / "zero.h5", tmp_path / "frozen.h5"
    # Reference: the established re-estimation at the end of a run whose one step changes
    # the weights by at most 1e-30 (zero-initialized offsets become +-1e-30).
    r = train(run_isl, data, ref, "--model", data / "init.h5", "--lr", 1e-30, steps=1)
    assert r.returncode == 0 and "re-estimating" in r.stderr, r.stderr
    r = train(run_isl, data, zero, "--model", data / "init.h5", "--freeze-bn", "--lr", 1e-30,
              steps=1)
    assert r.returncode == 0, r.stderr
    assert "estimating the frozen batch-norm statistics over 2 batches" in r.stderr
    assert "re-estimating" not in r.stderr
    reference, estimated = model_arrays(ref), model_arrays(zero)
    assert any(not np.array_equal(init[k], estimated[k]) for k in stats)
    for k in init:
        np.testing.assert_allclose(estimated[k], reference[k], rtol=1e-5, atol=1e-12,
                                   err_msg=k)
    # Training from there changes the weights, not the estimated statistics; a resumed
    # run does not estimate again.
    r = train(run_isl, data, out, "--model", data / "init.h5", "--freeze-bn", "--lr", 1e-3,
              steps=2)
    assert r.returncode == 0, r.stderr
    r = train(run_isl, data, out, "--resume", tmp_path / "frozen.checkpoint.h5",
              "--freeze-bn", "--lr", 1e-3, steps=4)
    assert r.returncode == 0 and "estimating" not in r.stderr, r.stderr
    trained = model_arrays(out)
    for k in stats:
        np.testing.assert_array_equal(trained[k], estimated[k], err_msg=k)
    assert not np.array_equal(trained["modules/000/expand/weight"],
                              init["modules/000/expand/weight"])


def test_average_from_writes_the_weight_average(run_isl, data, tmp_path):
    """--average-from: OUT holds the averaged weights (not the last step's), the
    checkpoint the last step's; without --freeze-bn it is refused."""
    first, out = tmp_path / "first.h5", tmp_path / "avg.h5"
    r = train(run_isl, data, first, "--model", data / "init.h5", steps=2)
    assert r.returncode == 0, r.stderr
    r = train(run_isl, data, out, "--model", first, "--freeze-bn", "--lr", 1e-3,
              "--bn-batches", 0, "--average-from", 2, steps=4)
    assert r.returncode == 0, r.stderr
    averaged, last = model_arrays(out), model_arrays(tmp_path / "avg.checkpoint.h5")
    assert not np.array_equal(averaged["modules/000/expand/weight"],
                              last["modules/000/expand/weight"])
    for k in averaged:
        if k.endswith(("/mean", "/var")):
            np.testing.assert_array_equal(averaged[k], last[k], err_msg=k)
    r = train(run_isl, data, tmp_path / "x.h5", "--model", first, "--average-from", 2)
    assert r.returncode == 2 and "--freeze-bn" in r.stderr


@pytest.mark.parametrize("args, code, words", [
    (("--model", "{d}/init.h5", "--dataset", "{d}/missing.h5"), 1, "missing.h5"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--crop", "300"), 2, "250 + 16m"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--validation", "0,0,400,10"), 2,
     "inside"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--validation", "x:0,0,4,4"), 2,
     "no well"),
    (("--model", "{d}/init.h5", "--resume", "{d}/init.h5", "--dataset", "{d}/data.h5"), 2,
     "--resume"),
    (("--resume", "{d}/init.h5", "--dataset", "{d}/data.h5"), 1, "checkpoint"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--lr", "nan"), 2, "--lr"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--lr-drop", "5"), 2, "STEP:RATE"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--contrast-jitter", "1.5"), 2,
     "--contrast-jitter"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--gamma-jitter", "-0.1"), 2,
     "--gamma-jitter"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--blur", "9"), 2, "--blur"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--noise", "nan"), 2, "--noise"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--scale-jitter", "0.6"), 2,
     "--scale-jitter"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--dropout", "0.95"), 2,
     "dropout rate 0.95"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--dropout", "0.1",
      "--spatial-dropout", "0.1"), 2, "one of --dropout and --spatial-dropout"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--stochastic-depth", "0.95"), 2,
     "stochastic depth rate 0.95"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--unlabelled-share", "0.5",
      "--label-weight", "1"), 2, "--label-weight below 1"),
    (("--model", "{d}/init.h5", "--dataset", "{d}/data.h5", "--validation-margin", "-1"), 2,
     "--validation-margin"),
    (("--model", "{d}/stack.tif", "--dataset", "{d}/data.h5"), 1, "stack.tif"),
])
def test_bad_input_gives_one_error_line_and_no_output(run_isl, data, tmp_path, args, code, words):
    out = tmp_path / "m.h5"
    r = run_isl("train", "--out", out, "--steps", 2, "--threads", 1,
                *[a.format(d=data) for a in args])
    line = assert_one_error_line(r, code)
    assert words in line
    assert not out.exists()


def test_existing_checkpoint_is_not_overwritten(run_isl, data, tmp_path):
    out = tmp_path / "m.h5"
    (tmp_path / "m.checkpoint.h5").write_bytes(b"precious")
    r = train(run_isl, data, out, "--model", data / "init.h5")
    assert "--resume" in assert_one_error_line(r, 2)
    assert (tmp_path / "m.checkpoint.h5").read_bytes() == b"precious"


def test_num_z_mismatch(run_isl, data, tmp_path):
    m = tmp_path / "z5.h5"
    assert run_isl("model", "init", "--base-depth", 8, "--num-z", 5, "--heads", "a", "-o",
                   m).returncode == 0
    r = train(run_isl, data, tmp_path / "m.h5", "--model", m)
    assert "planes" in assert_one_error_line(r, 1)
