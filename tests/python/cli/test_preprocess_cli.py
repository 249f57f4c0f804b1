"""isl flat-field and isl preprocess against numpy/scipy oracles (scipy.ndimage's median
and Gaussian filters, numpy's median and statistics), their errors, and a raw camera stack
predicting as its preprocessed twin with a model that normalizes its input."""
import pathlib
import shutil

import h5py
import numpy as np
import pytest
import scipy.ndimage as ndi
import tifffile

from model_files import unseal

REPO = pathlib.Path(__file__).resolve().parents[3]


def imwrite(path, data):
    tifffile.imwrite(path, data, photometric="minisblack")


def vignette(h, w):
    y, x = np.mgrid[0:h, 0:w]
    dy, dx = (y + 0.5) / h - 0.5, (x + 0.5) / w - 0.5
    return 1.0 - 0.7 * (dx * dx + dy * dy)


def camera_tiles(rng, count, pages, h, w):
    """12-bit camera tiles: an offset, random cells, the vignetting, shot noise."""
    tiles = []
    for _ in range(count):
        scene = np.full((pages, h, w), 1500.0)
        for _ in range(6):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(3, 8)
            y, x = np.mgrid[0:h, 0:w]
            scene[:, (y - cy) ** 2 + (x - cx) ** 2 <= r * r] = 3000.0
        counts = 100 + scene * vignette(h, w) + rng.normal(0, 20, scene.shape)
        tiles.append(np.clip(np.round(counts), 0, 4095).astype(np.uint16))
    return tiles


def write_tiles(tmp_path, tiles):
    paths = [tmp_path / f"tile{i}.tif" for i in range(len(tiles))]
    for p, t in zip(paths, tiles):
        imwrite(p, t)
    return paths


def oracle_field(pages, sigma):
    med = np.median(np.stack(pages).astype(np.float64), axis=0)
    if sigma > 0:
        med = ndi.gaussian_filter(med, sigma, mode="reflect", truncate=4.0)
    return med / med.mean()


def oracle_normalize(img, mean, sd):
    img = img.astype(np.float64)
    return np.clip((img - img.mean()) / img.std() * sd + mean, 0.0, 1.0)


def test_flat_field_matches_numpy_and_scipy(run_isl, tmp_path):
    rng = np.random.default_rng(5)
    tiles = camera_tiles(rng, 4, 2, 64, 96)
    paths = write_tiles(tmp_path, tiles)
    pages = [p for t in tiles for p in t]
    for extra, sigma in (([], 64 / 32), (["--light", "fluorescence"], 64 / 16),
                         (["--sigma", "3.5"], 3.5), (["--dust"], 0.0)):
        out = tmp_path / "ff.tif"
        r = run_isl("flat-field", "--input", *paths, *extra, "-o", out)
        assert r.returncode == 0, r.stderr
        got = tifffile.imread(out)
        assert got.dtype == np.float32 and got.shape == (64, 96)
        np.testing.assert_allclose(got, oracle_field(pages, sigma), rtol=2e-6, atol=0)


def test_fluorescence_dust_artifact_is_found_and_subtracted(run_isl, tmp_path):
    """Vignetted fluorescence tiles sharing a known additive disk of 300 counts: the
    artifact `isl flat-field --fluorescence-dust` writes is that disk, 0 away from it, and
    `isl preprocess --dust-artifact` subtracts exactly what was written."""
    rng = np.random.default_rng(8)
    h, w = 256, 256  # the blur, h / 16, must be small beside the vignetting's curvature
    y, x = np.mgrid[0:h, 0:w]
    r2 = (y - 100) ** 2 + (x - 140) ** 2
    disk = np.where(r2 <= 100, 300.0, 0.0)  # radius 10: the 5 x 5 median keeps it
    tiles = [np.round(100 + 1000 * vignette(h, w) + disk + rng.normal(0, 20, (3, h, w)))
             .astype(np.uint16) for _ in range(4)]
    paths = write_tiles(tmp_path, tiles)
    dust = tmp_path / "dust.tif"
    r = run_isl("flat-field", "--input", *paths, "--fluorescence-dust", "100", "-o", dust)
    assert r.returncode == 0, r.stderr
    assert "fluorescence dust artifact of 12 pages of 4 tiles" in r.stderr, r.stderr
    artifact = tifffile.imread(dust)
    assert artifact.dtype == np.float32 and artifact.shape == (h, w)
    on = disk > 0
    # The mean of 12 pages has noise of sd 20 / sqrt(12) = 5.8 per pixel; the blurred
    # vignetting biases the background by about 0.7 x 2 / 16^2 x 1000 = 5.5 counts.
    error = np.abs(artifact[on] - 300)
    assert error.mean() < 10 and error.max() < 35, (error.mean(), error.max())
    assert np.all(artifact[r2 > 13 ** 2] == 0)  # the mask: the disk grown by a 5 x 5 square
    share = float(r.stderr.split("): ")[1].split("%")[0])
    assert share >= 100 * on.mean() and share <= 100 * (r2 <= 13 ** 2).mean(), r.stderr

    out = tmp_path / "clean.tif"
    r = run_isl("preprocess", "--input", paths[0], "--light", "fluorescence", "--no-median",
                "--no-normalize", "--dust-artifact", dust, "-o", out)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(tifffile.imread(out), tiles[0].astype(np.float32) - artifact)

    r = run_isl("flat-field", "--input", *paths, "--fluorescence-dust", "5000", "-o",
                tmp_path / "no.tif")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "offset must be below" in lines[0], r.stderr
    assert not (tmp_path / "no.tif").exists()


def test_preprocess_matches_the_oracle_pipeline(run_isl, tmp_path):
    rng = np.random.default_rng(6)
    tiles = camera_tiles(rng, 5, 1, 64, 64)
    paths = write_tiles(tmp_path, tiles)
    # Flat field of the downscaled tiles, then one tile through every step.
    ff = tmp_path / "ff.tif"
    r = run_isl("flat-field", "--input", *paths, "--downscale", "--light", "fluorescence",
                "-o", ff)
    assert r.returncode == 0, r.stderr
    raw = tiles[0].copy()
    raw[0, 10, 10] = 4095  # a hot pixel for the median filter
    imwrite(tmp_path / "raw.tif", raw)
    out = tmp_path / "out.tif"
    r = run_isl("preprocess", "--input", tmp_path / "raw.tif", "--light", "fluorescence",
                "--downscale", "--flat-field", ff, "-o", out)
    assert r.returncode == 0, r.stderr

    img = raw[0].astype(np.float64)
    for _ in range(32):
        nxt = ndi.median_filter(img, size=5, mode="reflect")
        if np.array_equal(nxt, img):
            break
        img = nxt
    small = img.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    halves = [ndi.median_filter(t[0].astype(np.float64), 1) for t in tiles]
    field = oracle_field([h.reshape(32, 2, 32, 2).mean(axis=(1, 3)) for h in halves], 32 / 16)
    np.testing.assert_allclose(tifffile.imread(ff), field, rtol=2e-6)
    expected = oracle_normalize(small / field, 0.25, 0.125)
    got = tifffile.imread(out)
    assert got.shape == (32, 32)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert abs(got.mean() - 0.25) < 0.01  # nearly nothing clipped


def test_preprocess_normalizes_each_page(run_isl, tmp_path):
    rng = np.random.default_rng(7)
    raw = rng.uniform(200, 3000, (3, 20, 30)).astype(np.uint16)
    imwrite(tmp_path / "raw.tif", raw)
    r = run_isl("preprocess", "--input", tmp_path / "raw.tif", "-o", tmp_path / "out.tif")
    assert r.returncode == 0, r.stderr
    got = tifffile.imread(tmp_path / "out.tif").astype(np.float64)
    for z in range(3):  # uniform values lie within 1.8 sd: nothing is clipped
        assert abs(got[z].mean() - 0.5) < 1e-6 and abs(got[z].std() - 0.125) < 1e-6
        np.testing.assert_allclose(got[z], oracle_normalize(raw[z], 0.5, 0.125), atol=1e-6)
    r = run_isl("preprocess", "--input", tmp_path / "raw.tif", "--mean", "0.4", "--sd", "0.1",
                "-o", tmp_path / "out.tif")
    assert r.returncode == 0, r.stderr
    got = tifffile.imread(tmp_path / "out.tif").astype(np.float64)
    assert abs(got[1].mean() - 0.4) < 1e-6 and abs(got[1].std() - 0.1) < 1e-6


@pytest.mark.parametrize("case", ["tile_size", "field_size", "field_pages", "nan", "constant",
                                  "few_pages", "light"])
def test_bad_input_gives_one_clear_line(run_isl, tmp_path, case):
    a = np.full((2, 16, 16), 1000, np.uint16) + np.arange(16, dtype=np.uint16)
    imwrite(tmp_path / "a.tif", a)
    imwrite(tmp_path / "b.tif", a[:, :, :12])
    imwrite(tmp_path / "field2x.tif", np.ones((3, 16, 16), np.float32))
    imwrite(tmp_path / "small.tif", np.ones((16, 12), np.float32))
    nan = a.astype(np.float32)
    nan[1, 3, 4] = np.nan
    imwrite(tmp_path / "nan.tif", nan)
    imwrite(tmp_path / "flat.tif", np.full((1, 16, 16), 7, np.uint16))
    out = tmp_path / "out.tif"
    args, message, code = {
        "tile_size": (["flat-field", "--input", "a.tif", "b.tif"],
                      "b.tif: tile size 16 x 12 differs from", 1),
        "field_size": (["preprocess", "--input", "a.tif", "--flat-field", "small.tif"],
                       "the flat field is 16 x 12 but the stack's pages are 16 x 16", 1),
        "field_pages": (["preprocess", "--input", "a.tif", "--dust-field", "field2x.tif"],
                        "the dust field has 3 pages; give 1 or the stack's 2", 1),
        "nan": (["preprocess", "--input", "nan.tif"], "page 1: median filter: pixel (3, 4) is "
                "not finite" if False else "page 1: normalize: pixel 52 is not finite", 1),
        "constant": (["preprocess", "--input", "flat.tif"], "normalize: the image is constant", 1),
        "few_pages": (["flat-field", "--input", "flat.tif"], "needs at least 3 pages", 1),
        "light": (["preprocess", "--input", "a.tif", "--light", "uv"],
                  "--light: 'uv' is not one of: transmitted, fluorescence", 2),
    }[case]
    r = run_isl(*args, "-o", out, cwd=tmp_path)
    assert r.returncode == code
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not out.exists()


def test_raw_camera_stack_predicts_as_its_preprocessed_twin(run_isl, tmp_path):
    """A model with input normalization "global" (the bundled weights, the record switched)
    given a raw 12-bit stack predicts what the same weights without normalization (the
    bundled model) predict from the stack preprocessed by isl preprocess: the model applies
    the same per-plane normalization, clipping included."""
    model = REPO / "examples" / "data" / "condition-b.h5"
    demo = tifffile.imread(REPO / "examples" / "data" / "demo_z13.tif")[:, 136:256, 136:256]  # cells
    # 12-bit camera counts: an offset of 100 and 3800 counts for the full range.
    raw = np.round(100 + demo.astype(np.float64) * (3800 / 65535)).astype(np.uint16)
    imwrite(tmp_path / "raw.tif", raw)
    r = run_isl("preprocess", "--input", tmp_path / "raw.tif", "-o", tmp_path / "twin.tif")
    assert r.returncode == 0, r.stderr
    shutil.copy(model, tmp_path / "global.h5")
    unseal(tmp_path / "global.h5", require_record=True)
    with h5py.File(tmp_path / "global.h5", "r+") as f:
        f.attrs["input_normalization"] = "global"
    outs = {}
    for name, m, stack in (("raw", tmp_path / "global.h5", tmp_path / "raw.tif"),
                           ("twin", model, tmp_path / "twin.tif")):
        r = run_isl("predict", "--model", m, "--input", stack, "--output-dir", tmp_path / name,
                    "--stats", "median,mean", "--threads", "2")
        assert r.returncode == 0, r.stderr
        assert "warning" not in r.stderr, r.stderr
        outs[name] = r
    for head in ("dapi_confocal", "map2_confocal", "nfh_confocal"):
        for stat in ("median", "mean"):
            a = tifffile.imread(tmp_path / "raw" / f"{head}_{stat}.tif")
            b = tifffile.imread(tmp_path / "twin" / f"{head}_{stat}.tif")
            assert a.std() > 0.005  # a real prediction, not a constant
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def stitch_case(tmp_path, rows=2, cols=3, h=60, w=70, overlap=(18, 22), pages=2, seed=9):
    """Tiles cut from a smooth random scene at jittered whole-pixel positions."""
    rng = np.random.default_rng(seed)
    scene = ndi.gaussian_filter(rng.normal(0, 1, (200, 260)), 3.0) * 4000 + 1000
    planes = [scene, 6000 - scene * 0.5][:pages]
    truth, paths = [], []
    for r in range(rows):
        for c in range(cols):
            y = 10 + r * (h - overlap[0]) + int(rng.integers(-4, 5))
            x = 10 + c * (w - overlap[1]) + int(rng.integers(-4, 5))
            truth.append((y, x))
            paths.append(tmp_path / f"tile_{r}_{c}.tif")
            imwrite(paths[-1], np.stack([p[y:y + h, x:x + w] for p in planes]).astype(np.float32))
    return planes, truth, paths


def test_stitch_composes_every_plane_with_the_found_offsets(run_isl, tmp_path):
    planes, truth, paths = stitch_case(tmp_path)
    out = tmp_path / "montage.tif"
    r = run_isl("stitch", "--grid", "2x3", "--overlap", "18,22", "--search", "8", "--input",
                *paths, "-o", out)
    assert r.returncode == 0, r.stderr
    got = tifffile.imread(out)
    y0, x0 = min(t[0] for t in truth), min(t[1] for t in truth)
    y1, x1 = max(t[0] for t in truth) + 60, max(t[1] for t in truth) + 70
    assert got.shape == (2, y1 - y0, x1 - x0)
    covered = np.zeros(got.shape[1:], bool)
    for y, x in truth:
        covered[y - y0:y - y0 + 60, x - x0:x - x0 + 70] = True
    for z in range(2):  # the same offsets serve both planes; blending equal values is exact
        want = planes[z][y0:y1, x0:x1]
        np.testing.assert_allclose(got[z][covered], want[covered], rtol=1e-5)
        assert (got[z][~covered] == 0).all()


def test_stitch_errors(run_isl, tmp_path):
    _, _, paths = stitch_case(tmp_path, rows=1, cols=2)
    r = run_isl("stitch", "--grid", "2x2", "--overlap", "20", "--input", *paths, "-o",
                tmp_path / "o.tif")
    assert r.returncode == 2 and "--grid 2x2 needs 4 tiles, 2 given" in r.stderr
    imwrite(tmp_path / "odd.tif", np.ones((2, 60, 50), np.float32))
    r = run_isl("stitch", "--grid", "1x2", "--overlap", "20", "--input", paths[0],
                tmp_path / "odd.tif", "-o", tmp_path / "o.tif")
    assert r.returncode == 1 and "odd.tif: 2 pages of 60 x 50 differ from" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.tif").exists()
