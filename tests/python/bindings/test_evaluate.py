"""Known-answer tests of the evaluation (lib/eval, isl.evaluate, `isl evaluate`, `isl report`).

Oracles are independent: scipy.stats (pearsonr, ks_2samp), numpy (histogram2d, a brute-force
Otsu), hand-built images whose answers are counted by hand, and headless Chromium for the
report. ISL_BUILD_DIR selects the build (default <source>/build).
"""
import csv
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest
import tifffile

from .conftest import BUILD_DIR, islpy  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def run_isl():
    """The CLI half of these tests: run_isl(*args) -> CompletedProcess (text)."""
    path = BUILD_DIR / "tools" / "isl"
    if not path.is_file():
        pytest.skip(f"isl binary not found at {path} (build it, or set ISL_BUILD_DIR)")

    def run(*args, timeout=300, **kw):
        return subprocess.run([str(path), *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, **kw)

    return run

scipy_stats = pytest.importorskip("scipy.stats", reason="python3-scipy is the oracle")


# ------------------------------------------------------------------------------------
# Pearson r and the heat map


def test_pearson_of_a_linear_relation(islpy):
    """r = 1 for y = a x + b with a > 0, -1 for a < 0: exact relations, any sample."""
    rng = np.random.default_rng(0)
    x = rng.random((300, 200), dtype=np.float32)
    r, used = islpy.pearson(0.5 * x + 0.1, x)
    assert used == x.size and r == pytest.approx(1.0, abs=1e-9)
    r, used = islpy.pearson(0.9 - 0.6 * x, x, max_pixels=1000, seed=3)
    assert used == 1000 and r == pytest.approx(-1.0, abs=1e-9)


def test_pearson_matches_scipy_over_a_mask(islpy):
    rng = np.random.default_rng(1)
    t = rng.random((128, 96), dtype=np.float32)
    p = (0.3 * t + 0.2 * rng.random(t.shape)).astype(np.float32)
    mask = rng.random(t.shape) < 0.4
    r, used = islpy.pearson(p, t, mask)
    assert used == mask.sum()
    expect = scipy_stats.pearsonr(p[mask].astype(np.float64), t[mask].astype(np.float64))[0]
    assert r == pytest.approx(expect, abs=1e-9)


def test_pearson_sample_is_seeded_and_without_replacement(islpy):
    """A sample of every pixel but one differs from the full r only by that pixel; seeds
    repeat; different seeds draw different pixels."""
    rng = np.random.default_rng(2)
    t = rng.random(5000, dtype=np.float32)
    p = (t + rng.normal(0, 0.3, t.size)).astype(np.float32)
    full = scipy_stats.pearsonr(p.astype(np.float64), t.astype(np.float64))[0]
    r1, n1 = islpy.pearson(p, t, max_pixels=2500, seed=5)
    r2, _ = islpy.pearson(p, t, max_pixels=2500, seed=5)
    r3, _ = islpy.pearson(p, t, max_pixels=2500, seed=6)
    assert n1 == 2500 and r1 == r2 and r1 != r3
    assert abs(r1 - full) < 0.05
    # Without replacement: every pixel drawn once when max_pixels = n.
    assert islpy.pearson(p, t, max_pixels=t.size, seed=9)[0] == pytest.approx(full, abs=1e-9)


def test_heatmap_matches_numpy(islpy):
    rng = np.random.default_rng(3)
    t = rng.random((64, 64), dtype=np.float32)
    p = np.clip(t + rng.normal(0, 0.1, t.shape), -0.2, 1.3).astype(np.float32)
    heat = islpy.heatmap(p, t, bins=10)
    edges = np.linspace(0, 1, 11)
    expect, _, _ = np.histogram2d(np.clip(t, 0, 0.999999).ravel(), np.clip(p, 0, 0.999999).ravel(),
                                  bins=[edges, edges])
    np.testing.assert_allclose(heat, 1000 * expect / t.size, atol=1e-9)
    assert heat.sum() == pytest.approx(1000)


# ------------------------------------------------------------------------------------
# Otsu, segmentation, object errors, sizes


def otsu_bruteforce(values):
    """Threshold (bin edge of 256 over [0, 1]) maximizing the between-class variance."""
    b = np.clip(np.floor(values.astype(np.float64) * 256), 0, 255).astype(int)
    centres = b + 0.5
    best, best_t = -1.0, 1
    for t in range(1, 256):
        lo, hi = centres[b < t], centres[b >= t]
        if lo.size == 0 or hi.size == 0:
            continue
        v = lo.size * hi.size * (lo.mean() - hi.mean()) ** 2
        if v > best + 1e-9 * abs(best):
            best, best_t = v, t
    return best_t / 256


def test_otsu_of_a_bimodal_image(islpy):
    rng = np.random.default_rng(4)
    img = np.where(rng.random((80, 80)) < 0.3, rng.normal(0.7, 0.05, (80, 80)),
                   rng.normal(0.25, 0.05, (80, 80))).astype(np.float32)
    th = islpy.otsu(img)
    assert 0.35 < th < 0.6
    assert th == pytest.approx(otsu_bruteforce(img), abs=1 / 256)
    # Two values: the threshold separates them.
    two = np.r_[np.full(50, 0.2), np.full(50, 0.7)].astype(np.float32)
    assert 0.2 < islpy.otsu(two) <= 0.7


def disk(shape, cy, cx, r):
    y, x = np.ogrid[:shape[0], :shape[1]]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def test_segment_nuclei_splits_touching_disks(islpy):
    shape = (60, 90)
    img = np.full(shape, 0.1, np.float32)
    for cy, cx in ((30, 20), (30, 37), (30, 72)):  # the first two touch (centres 17 apart, r 10)
        img[disk(shape, cy, cx, 10)] = 0.8
    labels, n = islpy.segment_nuclei(img, split_touching=False)
    assert n == 2
    labels, n = islpy.segment_nuclei(img)
    assert n == 3 and labels.dtype == np.int32
    assert len({labels[30, 20], labels[30, 37], labels[30, 72]}) == 3
    assert (labels > 0).sum() == (img > 0.5).sum()  # every foreground pixel labelled
    # min_area drops small objects.
    img[5:7, 5:7] = 0.8
    assert islpy.segment_nuclei(img, min_area=20)[1] == 3
    assert islpy.segment_nuclei(img, min_area=1)[1] == 4


def test_object_errors_of_hand_built_labels(islpy):
    """True objects 1..5; predicted: 1 split in two, 2 and 3 merged, 4 found, 5 missed, and
    one object where there is none. Hand count: split 1, merged 1, added 1, missed 1,
    accuracy (5 - 4) / 5."""
    t = np.zeros((40, 60), np.int32)
    p = np.zeros_like(t)
    t[5:15, 5:15] = 1
    p[5:15, 5:10], p[5:15, 10:15] = 1, 2          # split
    t[5:15, 20:25], t[5:15, 26:31] = 2, 3
    p[5:15, 20:31] = 3                            # merged
    t[20:30, 5:15] = 4
    p[21:30, 6:15] = 4                            # correct
    t[20:30, 25:35] = 5                           # missed
    p[20:30, 45:55] = 5                           # added
    e = islpy.object_errors(t, p, exclude_border=True)
    assert e == {"true_objects": 5, "predicted_objects": 5, "split": 1, "merged": 1,
                 "added": 1, "missed": 1, "accuracy": pytest.approx(0.2)}
    # Objects touching the border are not scored.
    t[0:4, 40:44] = 6
    p[0:4, 40:44] = 6
    assert islpy.object_errors(t, p)["true_objects"] == 5
    assert islpy.object_errors(t, p, exclude_border=False)["true_objects"] == 6


def test_object_radii(islpy):
    labels = np.zeros((30, 30), np.int32)
    labels[2:12, 2:12] = 1      # area 100
    labels[20:22, 20:28] = 2    # area 16
    np.testing.assert_allclose(islpy.object_radii(labels), np.sqrt([100 / np.pi, 16 / np.pi]))


# ------------------------------------------------------------------------------------
# Kolmogorov-Smirnov


@pytest.mark.parametrize("na,nb,shift,ties", [(50, 70, 0.5, False), (300, 300, 0.1, False),
                                               (40, 40, 0.0, True), (7, 3, 1.0, False),
                                               (1000, 150, 0.2, True)])
def test_ks_2samp_matches_scipy(islpy, na, nb, shift, ties):
    rng = np.random.default_rng(na * 7 + nb)
    a, b = rng.normal(size=na), rng.normal(size=nb) + shift
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    d, p = islpy.ks_2samp(a, b)
    ref = scipy_stats.ks_2samp(a, b, method="exact")
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


def test_ks_2samp_large_samples_use_the_asymptotic_distribution(islpy):
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=20000), rng.normal(size=20000) + 0.02
    d, p = islpy.ks_2samp(a, b)
    ref = scipy_stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=0.02)


# ------------------------------------------------------------------------------------
# Pictures and bad input


def test_error_image_colours(islpy):
    """Display f(x) = clip((x - 0.2) / 0.6): truth 0.5 -> 0.5; prediction 0.8 -> 1 (too bright:
    magenta), 0.2 -> 0 (too dim: teal), 0.5 -> agreement (gray)."""
    t = np.full(3, 0.5, np.float32)
    p = np.array([0.8, 0.2, 0.5], np.float32)
    rgb = islpy.error_image(p, t)
    assert rgb.shape == (3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0]) == (255, 128, 255)        # common 0.5 + magenta 0.5
    assert tuple(rgb[1]) == (0, 102, 102)          # common 0 + teal 0.5 * 0.8
    assert tuple(rgb[2]) == (128, 128, 128)
    np.testing.assert_allclose(islpy.display([0.1, 0.5, 0.9]), [0, 0.5, 1])


def test_bad_input_raises(islpy):
    t = np.zeros((4, 4), np.float32)
    p = t.copy()
    p[1, 2] = np.nan
    with pytest.raises(islpy.InvalidValueError, match="pixel 6 is NaN"):
        islpy.pearson(p, t)
    with pytest.raises(islpy.ShapeError):
        islpy.pearson(np.zeros((4, 5), np.float32), t)
    with pytest.raises(islpy.ShapeError):
        islpy.pearson(t, t, np.zeros((4, 4), bool))  # the mask selects nothing


def test_evaluate_dict(islpy):
    shape = (64, 80)
    t = np.full(shape, 0.2, np.float32)
    for cy, cx in ((20, 20), (40, 55)):
        t[disk(shape, cy, cx, 8)] = 0.8
    p = np.roll(t, 1, axis=1) * 0.9
    out = islpy.evaluate(p, t, nuclei=True, entropy=np.zeros(shape), std=np.ones(shape))
    assert out["pixels"] == t.size
    assert out["pearson"] == pytest.approx(scipy_stats.pearsonr(p.ravel(), t.ravel())[0])
    assert out["heatmap"].shape == (10, 10)
    assert out["error_image"].shape == shape + (3,)
    assert out["entropy_image"].shape == out["std_image"].shape == shape + (3,)
    assert out["objects"]["true_objects"] == 2 and out["objects"]["accuracy"] == 1.0
    assert out["ks"][0] == pytest.approx(0.0)


# ------------------------------------------------------------------------------------
# Command line


@pytest.fixture
def eval_files(tmp_path):
    """A 48 x 64 prediction directory and a truth covering rows 8.. of it."""
    rng = np.random.default_rng(11)
    shape = (48, 64)
    truth = np.full(shape, 0.2, np.float32)
    for cy, cx in ((14, 14), (30, 40), (34, 12)):
        truth[disk(shape, cy, cx, 6)] = 0.8
    truth += rng.normal(0, 0.02, shape).astype(np.float32)
    pred = (0.5 * truth + 0.1).astype(np.float32)
    d = tmp_path / "pred"
    d.mkdir()
    tifffile.imwrite(d / "dapi_confocal_median.tif", pred)
    tifffile.imwrite(d / "dapi_confocal_entropy.tif", rng.random(shape, dtype=np.float32))
    tifffile.imwrite(tmp_path / "truth.tif", (np.clip(truth[8:], 0, 1) * 65535).astype(np.uint16))
    return tmp_path, pred, truth


def test_cli_evaluate(run_isl, eval_files):
    tmp, pred, truth = eval_files
    r = run_isl("evaluate", "--prediction", tmp / "pred", "--truth",
                f"dapi_confocal={tmp / 'truth.tif'}:0,8", "-o", tmp / "out")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp / "out" / "metrics.csv")))
    assert len(rows) == 1 and rows[0]["label"] == "dapi_confocal"
    assert rows[0]["region"] == "0 8 64 40" and int(rows[0]["pixels"]) == 64 * 40
    t16 = tifffile.imread(tmp / "truth.tif") / 65535.0
    expect = scipy_stats.pearsonr(pred[8:].ravel().astype(np.float64), t16.ravel())[0]
    assert float(rows[0]["pearson_r"]) == pytest.approx(expect, abs=1e-6)
    assert int(rows[0]["true_nuclei"]) == 3
    for name in ("error", "entropy", "heatmap", "true", "predicted"):
        assert (tmp / "out" / f"dapi_confocal_{name}.png").stat().st_size > 100
    assert not (tmp / "out" / "dapi_confocal_std.png").exists()
    heat = np.loadtxt(tmp / "out" / "dapi_confocal_heatmap.csv", delimiter=",", skiprows=1,
                      usecols=range(1, 11))
    assert heat.sum() == pytest.approx(1000, abs=0.01)
    assert "| dapi_confocal | 2560 |" in (tmp / "out" / "metrics.md").read_text()


@pytest.mark.parametrize("case,message", [
    ("missing", r"no such file"),
    ("size", r"is 64 x 40 but .* is 64 x 48: predictions differ in size"),
    ("nan", r"dapi_confocal_median.tif: pixel \(3, 10\) is NaN"),
    ("region", r"--region 0,0,64,48 is not inside 0,8,64,40"),
    ("notruth", r"--predicted map2_confocal has no --truth"),
])
def test_cli_evaluate_bad_input(run_isl, eval_files, case, message):
    tmp, pred, _ = eval_files
    truth = f"dapi_confocal={tmp / 'truth.tif'}:0,8"
    args = ["evaluate", "--prediction", tmp / "pred", "--truth", truth, "-o", tmp / "out"]
    if case == "missing":
        args[2] = tmp / "nowhere"
    elif case == "size":
        tifffile.imwrite(tmp / "small.tif", pred[:40])
        args += ["--predicted", f"map2_confocal={tmp / 'small.tif'}", "--truth",
                 f"map2_confocal={tmp / 'truth.tif'}"]
    elif case == "nan":
        bad = pred.copy()
        bad[10, 3] = np.nan
        tifffile.imwrite(tmp / "pred" / "dapi_confocal_median.tif", bad)
    elif case == "region":
        args += ["--region", "0,0,64,48"]
    else:
        args += ["--predicted", f"map2_confocal={tmp / 'pred' / 'dapi_confocal_median.tif'}"]
    r = run_isl(*args)
    assert r.returncode in (1, 2)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("isl: error: "), r.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp / "out").exists()


def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("chromium is not installed (Debian package chromium)")
    return exe


def test_cli_report_in_headless_chromium(run_isl, eval_files, tmp_path):
    """The page is self-contained and every picture decodes at its stated size: a copy with
    a small script that writes each image's natural size into the DOM, dumped by Chromium;
    plus a screenshot that is not blank."""
    tmp, _, _ = eval_files
    report = tmp / "report.html"
    r = run_isl("report", "--prediction", tmp / "pred", "--truth",
                f"dapi_confocal={tmp / 'truth.tif'}:0,8", "-o", report)
    assert r.returncode == 0, r.stderr
    html = report.read_text()
    assert "src=\"http" not in html and "<script" not in html
    images = re.findall(r'<img alt="([^"]+)" data-width="(\d+)" data-height="(\d+)"', html)
    assert [a for a, _, _ in images] == ["true.png", "predicted.png", "error.png", "entropy.png",
                                         "heatmap.png"]
    exe = chromium()
    probe = tmp / "probe.html"
    probe.write_text(html.replace("</body>", """<script>
window.addEventListener('load', () => { for (const i of document.images)
  i.setAttribute('data-loaded', i.complete + ' ' + i.naturalWidth + 'x' + i.naturalHeight); });
</script></body>"""))
    env = {**os.environ, "HOME": str(tmp_path)}
    shot = tmp / "shot.png"
    # One browser start (seconds each on a loaded machine) for the DOM and the screenshot.
    run = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--window-size=1000,1400", f"--screenshot={shot}", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=60, env=env)
    dom = run.stdout
    if "<html" not in dom:  # the browser did not start (no display libraries, sandbox, ...)
        pytest.skip("chromium cannot run here: " + (run.stderr.strip().splitlines() or ["?"])[-1])
    loaded = re.findall(r'data-width="(\d+)" data-height="(\d+)"[^>]*data-loaded="true (\d+)x(\d+)"',
                        dom)
    assert len(loaded) == len(images), dom[:500]
    for w, h, nw, nh in loaded:
        assert (w, h) == (nw, nh) and int(nw) > 0
    from PIL import Image
    im = np.asarray(Image.open(shot).convert("L"))
    assert im.shape == (1400, 1000) and im.std() > 10  # pictures and text, not a blank page
