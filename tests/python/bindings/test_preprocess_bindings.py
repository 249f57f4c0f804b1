"""isl.preprocess against scipy/numpy oracles, and its errors."""
import numpy as np
import pytest
import scipy.ndimage as ndi

from .conftest import islpy  # noqa: F401  (fixture)


def test_functions_match_scipy(islpy):
    pp = islpy.preprocess
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:37, 0:41]
    img = 1000 + 10 * np.floor((x + 2 * y) / 6.0)  # a staircase with specks: converges
    img[rng.random(img.shape) < 0.03] = 5000
    out, passes = pp.median5_until_stable(img)
    ref = img.astype(np.float32)
    for n in range(32):
        nxt = ndi.median_filter(ref, size=5, mode="reflect")
        if np.array_equal(nxt, ref):
            break
        ref = nxt
    assert 1 <= passes == n < 32 and out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
    assert img.max() == 5000  # the input is not modified

    # One pass on noise with many ties, widths below, at and across the 256-pixel chunks
    # the comparator network sorts at once, and images smaller than the window.
    for h, w in ((1, 1), (2, 3), (4, 2), (7, 256), (5, 300), (33, 517)):
        noise = rng.integers(0, 6, (h, w)).astype(np.float32) - 2.5
        got, _ = pp.median5_until_stable(noise, max_passes=1)
        np.testing.assert_array_equal(got, ndi.median_filter(noise, size=5, mode="reflect"),
                                      err_msg="%d x %d" % (h, w))

    np.testing.assert_allclose(pp.downscale2(img), img[:36, :40].reshape(18, 2, 20, 2).mean((1, 3)),
                               rtol=1e-6)
    stack = rng.uniform(500, 1500, (5, 64, 48))
    med = np.median(stack, axis=0)
    blurred = ndi.gaussian_filter(med, 2.0, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(pp.flat_field(stack), blurred / blurred.mean(), rtol=2e-6)
    np.testing.assert_allclose(pp.flat_field(stack, dust=True), med / med.mean(), rtol=2e-6)
    blurred = ndi.gaussian_filter(med, 4.0, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(pp.flat_field(stack, light="fluorescence"),
                               blurred / blurred.mean(), rtol=2e-6)
    assert pp.flat_field_sigma("transmitted", 2048) == 64.0
    # The blur on lines shorter than its kernel (reflected more than once) and of one pixel.
    for h, w, sigma in ((3, 200, 5.0), (1, 7, 3.0), (50, 1, 2.5)):
        one = rng.uniform(500, 1500, (1, h, w))
        blurred = ndi.gaussian_filter(one[0], sigma, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(pp.flat_field(one, sigma=sigma), blurred / blurred.mean(),
                                   rtol=2e-6, err_msg="%d x %d" % (h, w))

    norm = pp.normalize(stack[0], "fluorescence")
    assert abs(norm.astype(np.float64).mean() - 0.25) < 1e-6
    assert abs(norm.astype(np.float64).std() - 0.125) < 1e-6
    field = pp.flat_field(stack)
    both = pp.preprocess(stack[:2], flat_field=field)
    for z in range(2):
        x = stack[z].astype(np.float32) / field
        np.testing.assert_allclose(both[z], np.clip((x - x.mean()) / x.std() * 0.125 + 0.5, 0, 1),
                                   atol=2e-6)


def test_errors(islpy):
    pp = islpy.preprocess
    bad = np.ones((8, 8))
    bad[2, 3] = np.nan
    with pytest.raises(islpy.InvalidValueError, match=r"pixel \(2, 3\) is not finite"):
        pp.median5_until_stable(bad)
    with pytest.raises(islpy.InvalidValueError, match="constant"):
        pp.normalize(np.ones((4, 4)))
    with pytest.raises(islpy.InvalidValueError, match="must be positive"):
        pp.flat_field_apply(np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="light must be one of"):
        pp.normalize(np.ones((4, 4)), "uv")
    with pytest.raises(ValueError, match="image and field must be 2-D of one shape"):
        pp.flat_field_apply(np.ones((4, 4)), np.ones((4, 5)))


def test_stitch(islpy):
    pp = islpy.preprocess
    rng = np.random.default_rng(12)
    scene = ndi.gaussian_filter(rng.normal(0, 1, (90, 150)), 2.0).astype(np.float32)
    left, right = scene[3:63, :80], scene[:60, 57:137]  # right at (-3, 57) in left's frame
    oy, ox, ncc = pp.stitch_pair_offset(left, right, (0, 60), 6)
    assert abs(oy + 3) < 0.5 and abs(ox - 57) < 0.5 and ncc > 0.99
    pos = pp.stitch_solve(2, [(0, 1)], [(oy, ox)])
    np.testing.assert_allclose(pos, [[0, 0], [oy, ox]], atol=1e-9)
    canvas = pp.stitch_blend(np.stack([left, right]), pos)
    assert canvas.shape == (63, 137)
    np.testing.assert_allclose(canvas[3:60, :137], scene[3:60, :137], rtol=1e-5, atol=1e-6)
    with pytest.raises(islpy.InvalidValueError, match="do not connect"):
        pp.stitch_solve(3, [(0, 1)], [(0.0, 5.0)])


def test_model_pixel_size(islpy, tmp_path):
    """Model.pixel_size reads the model file's optional pixel_size_um (None without it)."""
    import h5py

    path = tmp_path / "m.h5"
    with islpy.Model.create(base_depth=8, num_z=3, heads=["dapi_confocal"]) as m:
        assert m.pixel_size is None
        m.save(path)
    with open(path, "r+b") as f:  # unseal the checksum block so that h5py may edit
        f.write(bytes(512))
    with h5py.File(path, "r+") as f:
        f.attrs["pixel_size_um"] = 0.65
    with islpy.Model.load(path) as m:
        assert m.pixel_size == 0.65
        m.save(tmp_path / "again.h5")  # kept through a save
    with islpy.Model.load(tmp_path / "again.h5") as m:
        assert m.pixel_size == 0.65


# Dust disk centres: 4 sigma + 12 from the edges and 4 sigma + 24 apart along y or x
# (sigma 6), so that each disk's background sees a mask symmetric about its centre.
DISKS = ((40, 40), (40, 92), (92, 66))


def dusty_images(n=64, size=128, noise=5.0, seed=8):
    """Fluorescence images with a known additive dust artifact: sensor offset 100, a
    background ramp 700 + 1.5 x + 0.75 y, a grid of 12 x 12 cells (+600, period 16)
    shifted by (2 (i // 8), 2 (i % 8)) in image i, so that every pixel is a cell in exactly
    36 of the 64 images, Gaussian noise, and three dust disks of +300 counts and radius 10
    (d^2 <= 110, which the 5 x 5 median keeps exactly). Returns (clean images, dust)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    background = 100 + 700 + 1.5 * x + 0.75 * y
    cells = ((y % 16) < 12) & ((x % 16) < 12)
    clean = np.stack([background + 600 * np.roll(cells, (2 * (i // 8), 2 * (i % 8)), (0, 1))
                      + rng.normal(0, noise, cells.shape) for i in range(n)])
    dust = np.zeros((size, size))
    for cy, cx in DISKS:
        dust[(y - cy) ** 2 + (x - cx) ** 2 <= 110] = 300
    return clean, dust


def test_fluorescence_dust_removed_edges_kept(islpy):
    """By construction the mean image less the offset is 1037.5 + the ramp + the dust + the
    mean noise (sd 5 / 8), and the mask is the disks grown by 2 (a 5 x 5 square). The
    background of a ramp is the ramp at each disk's centre (the mask is symmetric about it,
    so the local fill's error is odd there and the blur cancels it): the artifact there is
    300 + the noise. Everywhere, scipy computing the same definition is the oracle."""
    pp = islpy.preprocess
    clean, dust = dusty_images()
    images = clean + dust
    artifact, marked = pp.fluorescence_dust(images, sensor_offset=100, sigma=6)
    mask = ndi.binary_dilation(dust > 0, structure=np.ones((5, 5)))
    assert marked == mask.sum() == 1599
    assert np.all(artifact[~mask] == 0)  # nothing off the dust is touched
    for c in DISKS:
        assert abs(artifact[c] - 300) < 2.5, (c, artifact[c])  # 4 sd of the mean noise
    # Across the disks: the ramp's residual off the centres (up to 3.9 = 1.3% measured
    # without noise: the local fill leans to the near side) and 4 sd of the noise.
    assert np.abs(artifact - dust)[dust > 0].max() < 6.5
    assert abs((artifact - dust)[dust > 0].mean()) < 0.15
    # The oracle: the local mean of the clean pixels (Gaussian-weighted, sigma 6)
    # fills the mask, the blur of that is the background, artifact = mean - background >= 0.
    blur = lambda a: ndi.gaussian_filter(a, 6.0, mode="reflect", truncate=4.0)  # noqa: E731
    mean = images.astype(np.float32).mean(0, dtype=np.float64) - 100
    keep = (~mask).astype(np.float64)
    background = blur(np.where(mask, blur(mean * keep) / blur(keep), mean))
    np.testing.assert_allclose(artifact, np.where(mask, np.maximum(mean - background, 0), 0),
                               atol=2e-3)

    fixed = pp.remove_fluorescence_dust(images[0], artifact)
    assert np.abs(fixed - clean[0])[dust > 0].max() < 6.5  # 300 of dust gone, as above
    # The cells keep their edges: on every row through a disk, the steps of more than half
    # a cell (300) are where they are in the clean image.
    edges = 0
    for cy, cx in DISKS:
        for row in range(cy - 10, cy + 11):
            want = np.flatnonzero(np.abs(np.diff(clean[0][row, cx - 16:cx + 16])) > 300)
            got = np.flatnonzero(np.abs(np.diff(fixed[row, cx - 16:cx + 16])) > 300)
            assert list(got) == list(want), (cy, cx, row, got, want)
            edges += len(want)
    assert edges >= 100  # 4 edges on 12 of every 16 rows


def test_fluorescence_dust_without_dust_changes_nothing(islpy):
    pp = islpy.preprocess
    clean, _ = dusty_images()
    artifact, marked = pp.fluorescence_dust(clean, sensor_offset=100)
    assert marked == 0 and not artifact.any()
    np.testing.assert_array_equal(pp.remove_fluorescence_dust(clean[3], artifact),
                                  clean[3].astype(np.float32))


def test_fluorescence_dust_errors(islpy):
    pp = islpy.preprocess
    images = np.full((3, 16, 16), 500.0)
    with pytest.raises(islpy.InvalidValueError, match="offset must be below the background"):
        pp.fluorescence_dust(images, sensor_offset=5000)
    with pytest.raises(islpy.IslError, match="threshold"):
        pp.fluorescence_dust(images, sensor_offset=100, threshold=0)
    images[2, 4, 5] = np.nan
    with pytest.raises(islpy.InvalidValueError, match=r"image 2: pixel \(4, 5\) is not finite"):
        pp.fluorescence_dust(images, sensor_offset=100)
    with pytest.raises(ValueError, match="3 dimensions"):
        pp.fluorescence_dust(images[0], sensor_offset=100)
    with pytest.raises(ValueError, match="image and artifact must be 2-D of one shape"):
        pp.remove_fluorescence_dust(np.ones((16, 16)), np.zeros((16, 15)))
    with pytest.raises(islpy.InvalidValueError, match="artifact: pixel"):
        pp.remove_fluorescence_dust(np.ones((4, 4)), np.full((4, 4), np.inf))
