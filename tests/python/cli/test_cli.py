"""End-to-end tests of the isl command-line tool (tools/): model init/info, predict, errors.

Run: ISL_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/cli/test_cli.py -q
(about 20-35 s on 2 cores; the golden predictions take most of it).
"""
import json
import os
import pty
import re
import select
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import tifffile

from .conftest import HEADS, REPO_ROOT

STATS = ("median", "mean", "mode", "std", "entropy", "p_nonzero")
# Small predictions run single-threaded: on a loaded machine (meson runs tests in
# parallel) OpenMP's spinning threads can make a 0.3 s run take 10 s.
ONE_THREAD = ("--threads", 1)


def assert_one_error_line(r, code=None):
    """Non-zero exit with exactly one stderr line, "isl: error: ..."."""
    assert r.returncode != 0, r
    if code is not None:
        assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("isl: error: "), r.stderr
    return lines[0]


def assert_no_outputs(out_dir):
    """The output directory is absent or empty (no results, no temporaries)."""
    if out_dir.exists():
        assert sorted(os.listdir(out_dir)) == []


def h5_dataset_elements(path):
    total = 0

    def visit(_name, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += obj.size

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return total


# --------------------------------------------------------------------------------------
# Help and version
# --------------------------------------------------------------------------------------

def test_version(run_isl):
    r = run_isl("--version")
    assert r.returncode == 0
    assert re.fullmatch(r"isl \d+\.\d+\.\d+\n", r.stdout), r.stdout


@pytest.mark.parametrize("args", [["--help"], ["model", "--help"], ["model", "init", "--help"],
                                  ["model", "info", "--help"], ["predict", "--help"],
                                  ["predict", "--model", "x", "-h"]])
def test_help(run_isl, args):
    r = run_isl(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: isl"), r.stdout
    assert r.stderr == ""


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["--frobnicate"], ["model"],
                                  ["model", "train"]])
def test_bad_commands(run_isl, args):
    assert_one_error_line(run_isl(*args), 2)


# --------------------------------------------------------------------------------------
# model init / model info
# --------------------------------------------------------------------------------------

def test_model_init_and_info(run_isl, tmp_path):
    path = tmp_path / "m.h5"
    r = run_isl("model", "init", "--base-depth", 16, "--num-z", 13, "--heads", ",".join(HEADS),
                "--seed", 3, "--normalization", "global", "-o", path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {path}")
    assert path.is_file()
    params = h5_dataset_elements(path)

    r = run_isl("model", "info", path)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert re.search(r"^format version:\s+1$", text, re.M), text
    assert re.search(r"^base depth:\s+16$", text, re.M), text
    assert re.search(r"^num_z:\s+13$", text, re.M), text
    assert re.search(r"^input normalization:\s+global$", text, re.M), text
    for h in HEADS:
        assert re.search(rf"^\s+{h}\s+256 channels$", text, re.M), text
    assert re.search(r"^\s+autoencoder\s+3328 channels\s+\(autoencoder\)$", text, re.M), text
    m = re.search(r"^parameters:\s+([\d,]+)$", text, re.M)
    assert m, text
    assert "," in m.group(1)
    assert int(m.group(1).replace(",", "")) == params
    m = re.search(r"^file size:\s+([\d,]+) bytes", text, re.M)
    assert m and int(m.group(1).replace(",", "")) == path.stat().st_size

    r = run_isl("model", "info", "--json", path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format_version"] == 1
    assert info["base_depth"] == 16
    assert info["num_z"] == 13
    assert info["input_normalization"] == "global"
    assert info["parameter_count"] == params
    assert info["file_size"] == path.stat().st_size
    assert [h["name"] for h in info["heads"]] == [*HEADS, "autoencoder"]
    assert [h["channels"] for h in info["heads"]] == [256, 256, 256, 13 * 256]
    assert [h["autoencoder"] for h in info["heads"]] == [False, False, False, True]


def test_model_init_defaults_and_seed(run_isl, tmp_path):
    """Defaults: num_z 13, seed 0, normalization none; same seed, same weights."""
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    for path, extra in ((a, []), (b, ["--seed", 0]), (c, ["--seed", 1])):
        r = run_isl("model", "init", "--base-depth", 8, "--heads", "x", *extra, "-o", path)
        assert r.returncode == 0, r.stderr
    info = json.loads(run_isl("model", "info", "--json", a).stdout)
    assert (info["num_z"], info["input_normalization"]) == (13, "none")
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb, h5py.File(c, "r") as fc:
        w = "projection/weight"
        assert np.array_equal(fa[w][()], fb[w][()])
        assert not np.array_equal(fa[w][()], fc[w][()])


@pytest.mark.parametrize("args", [
    ["--heads", "a"],                                         # no -o
    ["-o", "{out}"],                                          # no --heads
    ["--heads", "a", "-o", "{out}", "--base-depth", "abc"],
    ["--heads", "a", "-o", "{out}", "--base-depth", "16x"],
    ["--heads", "a", "-o", "{out}", "--base-depth", ""],
    ["--heads", "a", "-o", "{out}", "--base-depth", "99999999999999999999"],
    ["--heads", "a", "-o", "{out}", "--base-depth", "2"],     # library range 4..4096
    ["--heads", "a", "-o", "{out}", "--seed", "-1"],
    ["--heads", "a", "-o", "{out}", "--normalization", "zscore"],
    ["--heads", "a,,b", "-o", "{out}"],
    ["--heads", "a,a", "-o", "{out}"],
    ["--heads", "autoencoder", "-o", "{out}"],
    ["--heads", "a", "-o", "{out}", "--bogus"],
    ["--heads", "a", "-o", "{out}", "extra"],
    ["--heads", "a", "-o"],                                   # missing value
])
def test_model_init_usage_errors(run_isl, tmp_path, args):
    out = tmp_path / "m.h5"
    r = run_isl("model", "init", *[str(a).format(out=out) for a in args])
    assert_one_error_line(r, 2)
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_model_info_errors(run_isl, tmp_path):
    assert_one_error_line(run_isl("model", "info", tmp_path / "missing.h5"), 1)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    assert_one_error_line(run_isl("model", "info", bad), 1)
    assert_one_error_line(run_isl("model", "info"), 2)
    assert_one_error_line(run_isl("model", "info", "--jsn", bad), 2)


# --------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------

def test_predict_all_stats(run_isl, small_model, small_stack, tmp_path):
    out = tmp_path / "a" / "b"  # created with mkdir -p semantics
    r = run_isl("predict", "--model", small_model, "--input", small_stack, "--output-dir", out,
                "--stats", ",".join(STATS), *ONE_THREAD)
    assert r.returncode == 0, r.stderr
    expected = [out / f"{h}_{s}.tif" for h in HEADS for s in STATS]
    assert r.stdout.splitlines() == [f"wrote {p}" for p in expected]
    # stderr is not a terminal: no progress bar, only the summary line.
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "megapixels/s" in lines[0], r.stderr
    assert sorted(os.listdir(out)) == sorted(p.name for p in expected)
    for h in HEADS:
        for stat in STATS:
            p = out / f"{h}_{stat}.tif"
            with tifffile.TiffFile(p) as t:
                assert len(t.pages) == 1
                img = t.asarray()
            assert img.dtype == np.float32 and img.shape == (40, 50), (p, img.dtype, img.shape)
            assert np.all(np.isfinite(img))
            if stat == "std":
                assert img.min() >= 0.0 and img.max() <= 0.5 + 1e-6, (p, img.min(), img.max())
            else:
                assert img.min() >= 0.0 and img.max() <= 1.0, (p, img.min(), img.max())
            if stat in ("median", "mode"):
                bins = img * 255
                assert np.allclose(bins, np.rint(bins), atol=1e-3), p


def test_predict_default_stat_and_heads(run_isl, small_model, small_stack, tmp_path):
    r = run_isl("predict", "--model", small_model, "--input", small_stack, "--output-dir", tmp_path,
                *ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(f"{h}_median.tif" for h in HEADS)


def test_predict_autoencoder(run_isl, small_model, small_stack, tmp_path):
    r = run_isl("predict", "--model", small_model, "--input", small_stack, "--output-dir", tmp_path,
                "--heads", "autoencoder,dapi_confocal", "--stats", "mean", *ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"wrote {tmp_path / 'autoencoder_mean.tif'}",
                                     f"wrote {tmp_path / 'dapi_confocal_mean.tif'}"]
    # Nothing else (the autoencoder's scratch file is unlinked).
    assert sorted(os.listdir(tmp_path)) == ["autoencoder_mean.tif", "dapi_confocal_mean.tif"]
    with tifffile.TiffFile(tmp_path / "autoencoder_mean.tif") as t:
        assert len(t.pages) == 13
        ae = t.asarray()
    assert ae.shape == (13, 40, 50) and ae.dtype == np.float32
    assert ae.min() >= 0.0 and ae.max() <= 1.0
    # The planes are distinct predictions, not one plane repeated.
    assert not np.allclose(ae[0], ae[12])


def test_predict_ensemble(run_isl, small_model, small_stack, tmp_path):
    """--model twice: the models' distributions are averaged. The mixture's mean is the
    mean of each model's mean, its median lies between their medians."""
    other = tmp_path / "other.h5"
    r = run_isl("model", "init", "--base-depth", 8, "--num-z", 13, "--heads",
                "nfh_confocal,dapi_confocal", "--seed", 8, "-o", other)
    assert r.returncode == 0, r.stderr
    images = {}
    for name, models in (("a", [small_model]), ("b", [other]), ("ab", [small_model, other])):
        args = [a for m in models for a in ("--model", m)]
        r = run_isl("predict", *args, "--input", small_stack, "--output-dir", tmp_path / name,
                    "--heads", "dapi_confocal,nfh_confocal", "--stats", "mean,median",
                    *ONE_THREAD)
        assert r.returncode == 0, r.stderr
        assert ("with an ensemble" in r.stderr) == (len(models) > 1), r.stderr
        images[name] = {f"{h}_{s}": tifffile.imread(tmp_path / name / f"{h}_{s}.tif")
                        for h in ("dapi_confocal", "nfh_confocal") for s in ("mean", "median")}
    for h in ("dapi_confocal", "nfh_confocal"):
        a, b, ab = (images[n][h + "_mean"] for n in ("a", "b", "ab"))
        assert np.abs(a - b).max() > 0.01
        assert np.abs(ab - (a + b) / 2).max() < 1e-5
        a, b, ab = (images[n][h + "_median"] for n in ("a", "b", "ab"))
        assert np.all((ab >= np.minimum(a, b)) & (ab <= np.maximum(a, b)))

    # The second model lacks map2_confocal, which the first's default heads include.
    r = run_isl("predict", "--model", small_model, "--model", other, "--input", small_stack,
                "--output-dir", tmp_path / "missing", *ONE_THREAD)
    assert "ensemble model 0 has no head 'map2_confocal'" in assert_one_error_line(r)
    assert_no_outputs(tmp_path / "missing")
    r = run_isl("predict", *["--model", small_model] * 17, "--input", small_stack,
                "--output-dir", tmp_path / "many")
    assert "at most 16 models" in assert_one_error_line(r, 2)


def test_predict_flip_average(run_isl, small_model, tmp_path):
    """--flip-average: the mean of the predictions of the stack's four mirror images (made
    here), mirrored back. Sides of 8 + 16 m keep each pixel's phase of the network's stride."""
    stack = np.random.default_rng(9).integers(0, 65536, size=(13, 40, 56), dtype=np.uint16)
    means = []
    for flip in range(4):
        mirrored = stack[:, ::-1 if flip & 2 else 1, ::-1 if flip & 1 else 1]
        tifffile.imwrite(tmp_path / f"m{flip}.tif", np.ascontiguousarray(mirrored))
        r = run_isl("predict", "--model", small_model, "--input", tmp_path / f"m{flip}.tif",
                    "--output-dir", tmp_path / f"m{flip}", "--heads", "nfh_confocal",
                    "--stats", "mean", *ONE_THREAD)
        assert r.returncode == 0, r.stderr
        mean = tifffile.imread(tmp_path / f"m{flip}" / "nfh_confocal_mean.tif")
        means.append(mean[::-1 if flip & 2 else 1, ::-1 if flip & 1 else 1])
    r = run_isl("predict", "--model", small_model, "--input", tmp_path / "m0.tif", "--output-dir",
                tmp_path / "avg", "--heads", "nfh_confocal", "--stats", "mean", "--flip-average",
                *ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert "with flip averaging" in r.stderr
    got = tifffile.imread(tmp_path / "avg" / "nfh_confocal_mean.tif")
    assert np.abs(means[1] - means[0]).max() > 0.01  # the network is not mirror-symmetric
    assert np.abs(got - np.mean(means, axis=0)).max() < 1e-5


def stretched(v):
    """The preview's display stretch, recomputed: the sorted values at ranks
    round(q (n - 1)) for q = 0.005 and 0.995 map to 0 and 255."""
    v = np.asarray(v, np.float64)
    ranked = np.sort(v.ravel())
    lo, hi = (ranked[int(np.floor(q * (ranked.size - 1) + 0.5))] for q in (0.005, 0.995))
    t = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(v)
    return np.floor(255 * t + 0.5)


def box_means(a, f):
    """Means over f x f boxes (partial at the bottom and right)."""
    h, w = a.shape
    out = np.zeros(((h + f - 1) // f, (w + f - 1) // f))
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            out[y, x] = a[y * f:(y + 1) * f, x * f:(x + 1) * f].astype(np.float64).mean()
    return out


BUNDLED_MODEL = REPO_ROOT / "examples" / "data" / "condition-b.h5"
DEMO_STACK = REPO_ROOT / "examples" / "data" / "demo_z13.tif"


@pytest.mark.parametrize("height,width,factor", [(48, 64, 1), (1030, 21, 2)])
def test_predict_preview(run_isl, tmp_path, height, width, factor):
    """--preview: the middle plane (gray) beside the medians of the three label heads in
    blue, green, red, each stretched to its 0.5 / 99.5 percentiles, and the plane again,
    dimmed to 0.6, turning magenta with the largest share of pixels of any head whose
    predicted std exceeds 0.15; sides over 1024 are shrunk by box means (the second stack:
    the demo crop repeated down to 1030 rows). Recomputed here from the median and std
    images and the stack; the printed shares from the std images. The bundled model: a
    random one predicts one median bin everywhere."""
    demo = tifffile.imread(DEMO_STACK)
    stack = np.ascontiguousarray(np.tile(demo, (1, 5, 1))[:, :height, 100:100 + width])
    tifffile.imwrite(tmp_path / "s.tif", stack)
    out = tmp_path / "out"
    r = run_isl("predict", "--model", BUNDLED_MODEL, "--input", tmp_path / "s.tif",
                "--output-dir", out, "--stats", "median,std", "--preview", *ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"wrote {out / 'preview.tif'}"
    assert ("isl: preview: left z plane 6 of 13, middle dapi_confocal blue, map2_confocal green, "
            "nfh_confocal red, right magenta where uncertain") in r.stderr
    got = tifffile.imread(out / "preview.tif")
    pw = (width + factor - 1) // factor
    assert got.dtype == np.uint8 and got.shape == ((height + factor - 1) // factor, 3 * pw, 3)
    gray = stretched(box_means(stack[6] / 65535.0, factor))
    for c in range(3):
        assert np.abs(got[:, :pw, c] - gray).max() <= 1
    for head, c in zip(HEADS, (2, 1, 0)):
        want = stretched(box_means(tifffile.imread(out / f"{head}_median.tif"), factor))
        assert want.std() > 10, head  # something to see
        assert np.abs(got[:, pw:2 * pw, c] - want).max() <= 1, head
    unsure = [tifffile.imread(out / f"{h}_std.tif") > 0.15 for h in HEADS]
    share = np.max([box_means(u, factor) for u in unsure], axis=0)
    dim = 0.6 * gray
    assert np.abs(got[:, 2 * pw:, 0] - (dim + share * (255 - dim))).max() <= 1
    assert np.abs(got[:, 2 * pw:, 2] - (dim + share * (255 - dim))).max() <= 1
    assert np.abs(got[:, 2 * pw:, 1] - dim * (1 - share)).max() <= 1
    shares = ", ".join(f"{h} {100 * u.mean():.1f}%" for h, u in zip(HEADS, unsure))
    assert (f"isl: uncertain (predicted std > 0.15): {shares} of the field "
            '(docs/cli.md "Uncertainty")') in r.stderr


def test_predict_preview_without_median_one_head_and_errors(run_isl, small_model, tmp_path):
    """Without median in --stats the preview still shows the medians (not written); one
    head shows in gray; the autoencoder alone has nothing to show (usage error, no files)."""
    stack = tmp_path / "s.tif"
    tifffile.imwrite(stack, np.ascontiguousarray(tifffile.imread(DEMO_STACK)[:, :40, :48]))
    run = lambda out, *args: run_isl("predict", "--model", BUNDLED_MODEL, "--input", stack,
                                     "--output-dir", tmp_path / out, "--preview", *args,
                                     *ONE_THREAD)
    r = run("median")
    assert r.returncode == 0, r.stderr
    r = run("mean", "--stats", "mean")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "mean")) == sorted(
        [f"{h}_mean.tif" for h in HEADS] + ["preview.tif"])  # no median or std files
    assert (tifffile.imread(tmp_path / "mean" / "preview.tif") ==
            tifffile.imread(tmp_path / "median" / "preview.tif")).all()

    r = run("one", "--heads", "nfh_confocal")
    assert r.returncode == 0, r.stderr
    assert "middle nfh_confocal gray" in r.stderr
    right = tifffile.imread(tmp_path / "one" / "preview.tif")[:, 48:96]
    median = tifffile.imread(tmp_path / "one" / "nfh_confocal_median.tif")
    assert (right[..., 0] == right[..., 1]).all() and (right[..., 1] == right[..., 2]).all()
    assert np.abs(right[..., 0] - stretched(median)).max() <= 1

    r = run_isl("predict", "--model", small_model, "--input", stack, "--output-dir",
                tmp_path / "ae", "--heads", "autoencoder", "--preview", *ONE_THREAD)
    line = assert_one_error_line(r, 2)
    assert "--preview" in line
    assert not (tmp_path / "ae").exists()

def test_predict_warns_about_raw_camera_values(run_isl, small_model, tmp_path):
    """A model without input normalization on a raw 12-bit camera stack (plane means near
    0.03 of [0, 1]) predicts, and warns once at the end; preprocessed stacks (the demo's
    planes have means near 0.5) and models with global normalization do not warn."""
    demo = tifffile.imread(DEMO_STACK)[:, :40, :48]
    tifffile.imwrite(tmp_path / "raw.tif", np.ascontiguousarray(demo // 16))
    tifffile.imwrite(tmp_path / "demo.tif", np.ascontiguousarray(demo))
    r = run_isl("predict", "--model", small_model, "--input", tmp_path / "raw.tif",
                "--output-dir", tmp_path / "raw", *ONE_THREAD)
    assert r.returncode == 0, r.stderr
    warnings = [l for l in r.stderr.splitlines() if l.startswith("isl: warning: ")]
    assert len(warnings) == 1, r.stderr
    means = (demo // 16).reshape(13, -1).mean(axis=1) / 65535
    assert f"means {means.min():.3g} to {means.max():.3g}" in warnings[0]
    assert "Input values" in warnings[0]
    assert len(os.listdir(tmp_path / "raw")) == 3
    r = run_isl("predict", "--model", small_model, "--input", tmp_path / "demo.tif",
                "--output-dir", tmp_path / "demo", *ONE_THREAD)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    glob = tmp_path / "global.h5"
    r = run_isl("model", "init", "--base-depth", 16, "--heads", "dapi_confocal",
                "--normalization", "global", "-o", glob)
    assert r.returncode == 0, r.stderr
    r = run_isl("predict", "--model", glob, "--input", tmp_path / "raw.tif",
                "--output-dir", tmp_path / "glob", *ONE_THREAD)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr

def test_predict_tile_size_invariance(run_isl, small_model, tmp_path):
    """Different tilings deliver rows in different bands: same images (the autoencoder's
    pages, which go through a scratch file, included)."""
    rng = np.random.default_rng(5)
    stack = tmp_path / "s.tif"
    tifffile.imwrite(stack, rng.integers(0, 256, size=(13, 40, 44), dtype=np.uint8))
    names = [f"{h}_{s}" for h in ("dapi_confocal", "autoencoder")
             for s in ("mean", "entropy", "median")]
    results = {}
    for tile in (266, 522):
        out = tmp_path / f"t{tile}"
        r = run_isl("predict", "--model", small_model, "--input", stack, "--output-dir", out,
                    "--tile", tile, "--stats", "mean,entropy,median",
                    "--heads", "dapi_confocal,autoencoder", *ONE_THREAD)
        assert r.returncode == 0, r.stderr
        results[tile] = {n: tifffile.imread(out / f"{n}.tif") for n in names}
    for n in names:
        a, b = results[266][n], results[522][n]
        assert a.shape == b.shape == ((13, 40, 44) if n.startswith("autoencoder") else (40, 44))
        if n.endswith("median"):
            # A discrete bin: a flat cumulative near 0.5 may flip under rounding.
            assert np.mean(a == b) >= 0.999, n
        else:
            assert np.abs(a - b).max() <= 1e-5, (n, np.abs(a - b).max())


def test_predict_golden(run_isl, golden_dir, tmp_path):
    """End to end against an independent implementation (see golden-base32/README.md)."""
    r = run_isl("predict", "--model", golden_dir / "model.h5", "--input",
                golden_dir / "input.tif", "--output-dir", tmp_path, "--stats", "median,mean")
    assert r.returncode == 0, r.stderr
    with h5py.File(golden_dir / "expected.h5", "r") as e:
        for head in ("dapi_confocal", "nfh_confocal"):
            mean = tifffile.imread(tmp_path / f"{head}_mean.tif")
            median = tifffile.imread(tmp_path / f"{head}_median.tif")
            assert mean.shape == median.shape == (266, 300)
            diff = np.abs(mean - e[head]["mean"][()]).max()
            assert diff <= 1e-4, (head, diff)
            # Compare bins: the values are k/255 but may differ in the last float bit.
            same = np.mean(np.rint(median * 255) == np.rint(e[head]["median"][()] * 255))
            assert same >= 0.999, (head, same)


def test_predict_golden_autoencoder(run_isl, golden_dir, tmp_path):
    """The 13-page autoencoder output (streamed through a scratch file) in page order."""
    r = run_isl("predict", "--model", golden_dir / "model.h5", "--input",
                golden_dir / "input.tif", "--output-dir", tmp_path, "--heads", "autoencoder",
                "--stats", "mean")
    assert r.returncode == 0, r.stderr
    ae = tifffile.imread(tmp_path / "autoencoder_mean.tif")
    assert ae.shape == (13, 266, 300)
    with h5py.File(golden_dir / "expected.h5", "r") as e:
        diff = np.abs(ae[6] - e["autoencoder/plane6_mean"][()]).max()
    assert diff <= 1e-4, diff


def test_predict_progress_bar_on_terminal(isl_bin, small_model, small_stack, tmp_path):
    """With stderr on a terminal, a progress bar is drawn (and erased)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(isl_bin), "predict", "--model", str(small_model), "--input",
                             str(small_stack), "--output-dir", str(tmp_path), "--tile", "266",
                             "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    err = b"".join(chunks).decode()
    assert re.search(r"\d+/\d+ tiles +\d+%", err), err
    assert "ETA" in err and "elapsed" in err
    assert "megapixels/s" in err
    assert len(out.splitlines()) == 3


# --------------------------------------------------------------------------------------
# predict: errors leave nothing behind
# --------------------------------------------------------------------------------------

@pytest.fixture
def bad_inputs(tmp_path):
    rng = np.random.default_rng(2)
    pages12 = tmp_path / "pages12.tif"
    tifffile.imwrite(pages12, rng.integers(0, 65536, size=(12, 40, 50), dtype=np.uint16))
    not_tiff = tmp_path / "not_tiff.tif"
    not_tiff.write_text("this is not a TIFF file\n")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(rng.bytes(20000))
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me\n")
    return {"pages12": pages12, "not_tiff": not_tiff, "corrupt": corrupt, "a_file": a_file,
            "missing": tmp_path / "missing.h5"}


@pytest.mark.parametrize("case, code", [
    ("missing model", 1),
    ("corrupt model", 1),
    ("12 pages", 1),
    ("not a tiff", 1),
    ("missing input", 1),
    ("unknown stat", 2),
    ("unknown head", 2),
    ("bad tile", 2),
    ("tile not a number", 2),
    ("bad threads", 2),
    ("bad memory limit", 2),
    ("bad precision", 2),
    ("unknown option", 2),
    ("missing value", 2),
    ("missing model option", 2),
    ("output dir is a file", 1),
])
def test_predict_errors(run_isl, small_model, small_stack, bad_inputs, tmp_path, case, code):
    out = tmp_path / "out"
    base = {"--model": small_model, "--input": small_stack, "--output-dir": out}
    extra = list(ONE_THREAD)
    if case == "missing model":
        base["--model"] = bad_inputs["missing"]
    elif case == "corrupt model":
        base["--model"] = bad_inputs["corrupt"]
    elif case == "12 pages":
        base["--input"] = bad_inputs["pages12"]
    elif case == "not a tiff":
        base["--input"] = bad_inputs["not_tiff"]
    elif case == "missing input":
        base["--input"] = tmp_path / "nope.tif"
    elif case == "unknown stat":
        extra += ["--stats", "median,variance"]
    elif case == "unknown head":
        extra += ["--heads", "dapi_confocal,tubulin"]
    elif case == "bad tile":
        extra += ["--tile", "300"]
    elif case == "tile not a number":
        extra += ["--tile", "26x6"]
    elif case == "bad threads":
        extra += ["--threads", "-3"]
    elif case == "bad memory limit":
        extra += ["--memory-limit", "0"]
    elif case == "bad precision":
        extra += ["--precision", "fp16"]
    elif case == "unknown option":
        extra += ["--tiles", "266"]
    elif case == "missing value":
        extra += ["--stats"]
    elif case == "missing model option":
        del base["--model"]
    elif case == "output dir is a file":
        out = base["--output-dir"] = bad_inputs["a_file"]
    args = [x for kv in base.items() for x in kv] + extra
    r = run_isl("predict", *args)
    line = assert_one_error_line(r, code)
    if case == "unknown stat":
        assert "variance" in line and "p_nonzero" in line  # lists the valid names
    if case == "unknown head":
        assert "tubulin" in line and "nfh_confocal" in line and "autoencoder" in line
    if case == "output dir is a file":
        assert bad_inputs["a_file"].read_text() == "keep me\n"
    else:
        assert_no_outputs(out)
    # Nothing stray beside the inputs either.
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["pages12.tif", "not_tiff.tif", "corrupt.h5", "a_file"])


def test_predict_existing_dir_untouched_on_error(run_isl, small_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.txt").write_text("x")
    stack = tmp_path / "s.tif"
    tifffile.imwrite(stack, np.zeros((12, 20, 20), np.uint16))
    r = run_isl("predict", "--model", small_model, "--input", stack, "--output-dir", out,
                *ONE_THREAD)
    assert_one_error_line(r, 1)
    assert os.listdir(out) == ["other.txt"]


def test_predict_sigint_cancels_cleanly(isl_bin, small_model, tmp_path):
    """SIGINT during prediction: exit 130, one error line, no files (temporaries removed)."""
    stack = tmp_path / "s.tif"
    rng = np.random.default_rng(3)
    tifffile.imwrite(stack, rng.integers(0, 65536, size=(13, 160, 160), dtype=np.uint16))
    out = tmp_path / "out"
    proc = subprocess.Popen([str(isl_bin), "predict", "--model", str(small_model), "--input",
                             str(stack), "--output-dir", str(out), "--tile", "266",
                             "--stats", "median,mean", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        # Wait until the temporary output files exist, i.e. prediction has started.
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and any(".tmp." in n for n in os.listdir(out)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "prediction finished before it could be interrupted"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("isl: error: interrupted"), stderr
    assert_no_outputs(out)
