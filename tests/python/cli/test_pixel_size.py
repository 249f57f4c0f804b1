"""The training pixel size a model records (the model file's optional pixel_size_um
attribute): set by `isl model init` / `isl train`, read by `isl model info`, and the
warning of `isl predict` for OME-TIFF inputs of another pixel size (issue #19).

Run: ISL_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/cli/test_pixel_size.py -q
"""
import json
import shutil

import h5py
import numpy as np
import pytest
import tifffile

from model_files import unseal

HEADS = "dapi_confocal,nfh_confocal"


def init(run_isl, path, *extra, num_z=13, base=8):
    r = run_isl("model", "init", "--base-depth", base, "--num-z", num_z, "--heads", HEADS,
                "--seed", 3, "-o", path, *extra)
    assert r.returncode == 0, r.stderr
    return path


def info(run_isl, path):
    r = run_isl("model", "info", path, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_model_init_records_pixel_size(run_isl, tmp_path):
    m = init(run_isl, tmp_path / "m.h5", "--pixel-size", "0.325")
    with h5py.File(m, "r") as f:
        assert f.attrs["pixel_size_um"] == 0.325
    assert info(run_isl, m)["pixel_size_um"] == 0.325
    r = run_isl("model", "info", m)
    assert "training pixel size: 0.325 um" in r.stdout
    # Without it: no attribute (files stay as before), "unknown".
    old = init(run_isl, tmp_path / "old.h5")
    with h5py.File(old, "r") as f:
        assert "pixel_size_um" not in f.attrs
    assert info(run_isl, old)["pixel_size_um"] is None
    assert "training pixel size: unknown" in run_isl("model", "info", old).stdout
    for bad in ("0", "-1", "nan", "1e5", "x"):
        r = run_isl("model", "init", "--heads", "a", "--base-depth", 8, "-o", tmp_path / "b.h5",
                    "--pixel-size", bad)
        assert r.returncode == 2 and "--pixel-size" in r.stderr, (bad, r.stderr)


def test_attribute_written_by_others(run_isl, tmp_path):
    """The reader takes the attribute as h5py writes it and refuses impossible values."""
    m = init(run_isl, tmp_path / "m.h5")
    unseal(m, require_record=True)
    with h5py.File(m, "r+") as f:
        f.attrs["pixel_size_um"] = np.float32(0.5)
    assert info(run_isl, m)["pixel_size_um"] == 0.5
    for bad in (-0.5, 0.0, np.nan, 1e9):
        with h5py.File(m, "r+") as f:
            f.attrs["pixel_size_um"] = bad
        r = run_isl("model", "info", m)
        assert r.returncode != 0 and "pixel_size_um" in r.stderr, (bad, r.stderr)


def ome_stack(path, pixel_um):
    stack = np.random.default_rng(2).integers(0, 65536, size=(13, 40, 50), dtype=np.uint16)
    meta = {"axes": "ZYX"}
    if pixel_um:
        meta.update(PhysicalSizeX=pixel_um, PhysicalSizeY=pixel_um)
    tifffile.imwrite(path, stack, ome=True, metadata=meta)
    return path


@pytest.mark.parametrize("model_um, input_um, warns", [
    (0.325, 0.65, True),      # 2x binned input
    (0.65, 0.325, True),
    (0.325, 0.325, False),
    (0.325, 0.3265, False),   # within 1% (rounded metadata)
    (0.325, 0.33, True),      # 1.5% off
    (None, 0.65, False),      # the model does not know
    (0.325, None, False),     # the input does not say
])
def test_predict_warns_on_other_pixel_size(run_isl, tmp_path, model_um, input_um, warns):
    extra = ("--pixel-size", model_um) if model_um else ()
    m = init(run_isl, tmp_path / "m.h5", *extra)
    src = ome_stack(tmp_path / "in.ome.tif", input_um)
    r = run_isl("predict", "--model", m, "--input", src, "--output-dir", tmp_path / "out",
                "--threads", 1)
    assert r.returncode == 0, r.stderr
    assert ("warning" in r.stderr) == warns, r.stderr
    if warns:
        ratio = max(model_um, input_um) / min(model_um, input_um)
        assert f"trained on {model_um:g} um pixels" in r.stderr
        assert f"{ratio:.2f} times {'smaller' if input_um > model_um else 'larger'}" in r.stderr


def test_train_records_pixel_size(run_isl, tmp_path):
    """From the dataset's wells when they agree; --pixel-size wins; a resumed checkpoint and
    the trained model keep it."""
    rng = np.random.default_rng(4)
    stack = rng.random((3, 270, 270)).astype(np.float32)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / "t.tif", stack[1])
    r = run_isl("dataset", "build", "--input", tmp_path / "s.tif", "--pixel-size", 0.65,
                "--target", f"dapi_confocal={tmp_path / 't.tif'}", "-o", tmp_path / "d.h5")
    assert r.returncode == 0, r.stderr
    m = init(run_isl, tmp_path / "init.h5", num_z=3)
    common = ("--dataset", tmp_path / "d.h5", "--model", m, "--steps", 1, "--threads", 1,
              "--crop", 266, "--batch", 1, "--bn-batches", 0)
    r = run_isl("train", *common, "--out", tmp_path / "a.h5")
    assert r.returncode == 0, r.stderr
    assert info(run_isl, tmp_path / "a.h5")["pixel_size_um"] == 0.65
    r = run_isl("train", *common, "--out", tmp_path / "b.h5", "--pixel-size", 0.3)
    assert r.returncode == 0, r.stderr
    assert info(run_isl, tmp_path / "b.h5")["pixel_size_um"] == 0.3
    shutil.copy(tmp_path / "a.checkpoint.h5", tmp_path / "c.checkpoint.h5")
    r = run_isl("train", "--dataset", tmp_path / "d.h5", "--resume", tmp_path / "c.checkpoint.h5",
                "--steps", 2, "--threads", 1, "--crop", 266, "--batch", 1, "--bn-batches", 0,
                "--out", tmp_path / "c.h5")
    assert r.returncode == 0, r.stderr
    assert info(run_isl, tmp_path / "c.h5")["pixel_size_um"] == 0.65
