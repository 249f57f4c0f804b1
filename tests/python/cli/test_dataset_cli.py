"""End-to-end tests of `isl dataset build` and `isl dataset info` (tools/cmd_dataset.c).

The files are written with tifffile and the result is read back with h5py, independently
of the library, against the layout of docs/training.md ("Dataset files").

Run: ISL_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/cli/test_dataset_cli.py -q
"""
import os

import h5py
import numpy as np
import pytest
import tifffile

NZ = 3


def text(obj, name):
    """A string attribute as isl writes it: fixed-size UTF-8 (never variable-length,
    docs/security.md), decoded; lists become lists of str."""
    dtype = obj.attrs.get_id(name).dtype
    info = h5py.check_string_dtype(dtype)
    assert info is not None and info.length is not None, f"{name}: {dtype} is not fixed-size"
    value = obj.attrs[name]
    if isinstance(value, np.ndarray):
        return [v.decode() for v in value]
    return value.decode()


def write_tif(path, array):
    tifffile.imwrite(path, array, photometric="minisblack")
    return path


def assert_one_error_line(r, code):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("isl: error: "), r.stderr
    return lines[0]


def assert_nothing_written(directory, out):
    """No output file and no temporary file beside it."""
    assert not out.exists()
    assert not [n for n in os.listdir(directory) if ".tmp." in n or n.startswith(out.name)]


@pytest.fixture()
def files(tmp_path):
    """Stacks and label images of two wells, as arrays and TIFF paths."""
    rng = np.random.default_rng(5)
    d = {}
    d["a"] = rng.integers(0, 65536, size=(NZ, 40, 50), dtype=np.uint16)
    d["b"] = rng.random((NZ, 30, 36), dtype=np.float32)
    d["dapi"] = rng.integers(0, 256, size=(40, 50), dtype=np.uint8)
    d["map2"] = rng.random((10, 12), dtype=np.float32)
    d["map2_mask"] = (rng.random((10, 12)) < 0.6).astype(np.uint8) * 255
    d["b_map2"] = rng.integers(0, 65536, size=(30, 36), dtype=np.uint16)
    paths = {k: write_tif(tmp_path / f"{k}.tif", v) for k, v in d.items()}
    return d, paths


def build_two_wells(run_isl, paths, out):
    return run_isl("dataset", "build",
                   "--input", paths["a"], "--target", f"dapi={paths['dapi']}",
                   "--target", f"map2={paths['map2']}:5,7", "--mask", f"map2={paths['map2_mask']}",
                   "--condition", "B", "--pixel-size", "0.5",
                   "--input", paths["b"], "--well", "second", "--target",
                   f"map2={paths['b_map2']}",
                   "-o", out)


def test_build_writes_the_documented_layout(run_isl, files, tmp_path):
    d, paths = files
    out = tmp_path / "data.h5"
    r = build_two_wells(run_isl, paths, out)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith(f"wrote {out}\n")
    known_map2_a = int(np.count_nonzero(d["map2_mask"]))
    assert "wells:     2" in r.stdout
    assert "  a: 50 x 40 (width x height), condition B, 0.5 um/pixel" in r.stdout
    assert "  second: 36 x 30 (width x height)\n" in r.stdout
    assert "dapi 2,000 known pixels (100.0%)" in r.stdout
    assert f"map2 {known_map2_a} known pixels" in r.stdout
    assert f"map2 {known_map2_a + 1080:,} known pixels in 2 wells" in r.stdout

    with h5py.File(out, "r") as f:
        assert text(f, "format") == "isl-dataset"
        assert f.attrs["version"] == 1
        assert f.attrs["num_z"] == NZ
        assert text(f, "labels") == ["dapi", "map2"]
        assert sorted(f["wells"]) == ["000", "001"]
        a, b = f["wells/000"], f["wells/001"]
        assert text(a, "name") == "a" and text(a, "condition") == "B"
        assert a.attrs["pixel_size_um"] == 0.5
        assert text(b, "name") == "second" and text(b, "condition") == ""
        assert b.attrs["pixel_size_um"] == 0.0

        # Integer images are stored as uint16 (value x 65535), floats as float32.
        assert a["stack"].dtype == np.uint16 and a["stack"].shape == (NZ, 40, 50)
        np.testing.assert_array_equal(a["stack"][()], d["a"])
        assert b["stack"].dtype == np.float32
        np.testing.assert_array_equal(b["stack"][()], d["b"])
        assert a["stack"].compression == "gzip" and a["stack"].shuffle

        dapi = a["labels/dapi"]
        assert dapi["values"].dtype == np.uint16
        np.testing.assert_array_equal(dapi["values"][()], d["dapi"].astype(np.uint16) * 257)
        np.testing.assert_array_equal(dapi["mask"][()], np.ones((40, 50), np.uint8))

        # The partial target: full-well arrays, known inside it where its mask is set.
        values, mask = a["labels/map2/values"][()], a["labels/map2/mask"][()]
        assert values.shape == mask.shape == (40, 50) and mask.dtype == np.uint8
        want_mask = np.zeros((40, 50), np.uint8)
        want_mask[7:17, 5:17] = d["map2_mask"] != 0
        np.testing.assert_array_equal(mask, want_mask)
        want = np.zeros((40, 50), np.float32)
        want[7:17, 5:17] = np.where(d["map2_mask"] != 0, d["map2"], 0)
        np.testing.assert_array_equal(values, want)
        assert "dapi" not in b["labels"]
        np.testing.assert_array_equal(b["labels/map2/values"][()], d["b_map2"])


def test_info_describes_the_file(run_isl, files, tmp_path):
    _, paths = files
    out = tmp_path / "data.h5"
    assert build_two_wells(run_isl, paths, out).returncode == 0
    r = run_isl("dataset", "info", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"dataset:   {out}\nfile size: ")
    for text in ("z planes:  3", "wells:     2", "labels:    2",
                 "  a: 50 x 40 (width x height), condition B, 0.5 um/pixel",
                 "    dapi 2,000 known pixels (100.0%)", "  dapi 2,000 known pixels in 1 well"):
        assert text in r.stdout, r.stdout


def test_default_well_name_and_no_labels(run_isl, files, tmp_path):
    _, paths = files
    out = tmp_path / "plain.h5"
    r = run_isl("dataset", "build", "--input", paths["a"], "-o", out)
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert text(f["wells/000"], "name") == "a"
        assert text(f, "labels") == []
        assert "labels" not in f["wells/000"]
    assert "labels:    0" in run_isl("dataset", "info", out).stdout


@pytest.mark.parametrize("args", [["dataset", "--help"], ["dataset", "build", "--help"],
                                  ["dataset", "info", "--help"]])
def test_help(run_isl, args):
    r = run_isl(*args)
    assert r.returncode == 0 and r.stdout.startswith("Usage: isl dataset"), r


def test_bad_command_lines(run_isl, files, tmp_path):
    _, paths = files
    out = tmp_path / "bad.h5"
    a, dapi = str(paths["a"]), str(paths["dapi"])
    cases = [
        (["--input", a, "--target", "dapi", "-o", out], "is not NAME=FILE"),
        (["--input", a, "--target", f"={dapi}", "-o", out], "is not NAME=FILE"),
        (["--input", a, "--target", "dapi=", "-o", out], "is not NAME=FILE"),
        (["--input", a, "--target", f"dapi={dapi}:5", "-o", out], "X0,Y0"),
        (["--input", a, "--target", f"dapi={dapi}:-1,2", "-o", out], "X0,Y0"),
        (["--target", f"dapi={dapi}", "--input", a, "-o", out], "must follow the --input"),
        (["--input", a, "--mask", f"dapi={dapi}", "-o", out], "has no --target dapi"),
        (["--input", a, "--target", f"dapi={dapi}", "--target", f"dapi={dapi}", "-o", out],
         "given twice"),
        (["--input", a, "--well", "x", "--well", "y", "-o", out], "given twice"),
        (["--input", a, "--pixel-size", "-1", "-o", out], "out of range"),
        (["--input", a], "missing -o/--output"),
        (["-o", out], "missing --input"),
    ]
    for args, message in cases:
        r = run_isl("dataset", "build", *args)
        line = assert_one_error_line(r, 2)
        assert message in line, (args, line)
        assert_nothing_written(tmp_path, out)
    assert_one_error_line(run_isl("dataset"), 2)
    assert_one_error_line(run_isl("dataset", "frobnicate"), 2)
    assert_one_error_line(run_isl("dataset", "info"), 2)


def test_bad_files(run_isl, files, tmp_path):
    d, paths = files
    out = tmp_path / "bad.h5"
    a = str(paths["a"])
    uneven = tmp_path / "uneven.tif"
    with tifffile.TiffWriter(uneven) as tif:
        tif.write(d["a"][0], photometric="minisblack")
        tif.write(d["a"][1][:, :40], photometric="minisblack")
    nan_stack = d["b"].copy()
    nan_stack[1, 2, 3] = np.nan
    write_tif(tmp_path / "nan.tif", nan_stack)
    write_tif(tmp_path / "big.tif", np.full((40, 50), 2.0, np.float32))
    write_tif(tmp_path / "twoz.tif", d["a"][:2])
    write_tif(tmp_path / "small_mask.tif", np.ones((9, 12), np.uint8))
    cases = [
        (["--input", tmp_path / "missing.tif"], "missing.tif: cannot open"),
        (["--input", uneven], "page 2 is 40x40 but page 1 is 50x40"),
        (["--input", a, "--target", f"dapi={paths['dapi']}:1,0"], "does not fit inside the 50x40"),
        (["--input", a, "--target", f"map2={paths['map2']}:40,0"], "does not fit"),
        (["--input", a, "--target", f"dapi={paths['a']}"], "has 3 pages, expected 1"),
        (["--input", a, "--target", f"dapi={tmp_path / 'big.tif'}"], "outside [0, 1]"),
        (["--input", tmp_path / "nan.tif"], "plane 1, pixel (x 3, y 2) is NaN"),
        (["--input", a, "--input", tmp_path / "twoz.tif"], "2 z planes but the dataset has 3"),
        (["--input", a, "--input", a], "already has a well called \"a\""),
        (["--input", a, "--target", f"autoencoder={paths['dapi']}"], "autoencoder"),
        (["--input", a, "--target", f"map2={paths['map2']}",
          "--mask", f"map2={tmp_path / 'small_mask.tif'}"], "the mask is 12 x 9"),
    ]
    for args, message in cases:
        r = run_isl("dataset", "build", *args, "-o", out)
        line = assert_one_error_line(r, 1)
        assert message in line, (args, line)
        assert_nothing_written(tmp_path, out)

    # A failed build leaves an existing file as it was.
    out.write_bytes(b"previous")
    r = run_isl("dataset", "build", "--input", tmp_path / "missing.tif", "-o", out)
    assert_one_error_line(r, 1)
    assert out.read_bytes() == b"previous"

    # Writing into a directory that does not exist.
    r = run_isl("dataset", "build", "--input", a, "-o", tmp_path / "no" / "such.h5")
    assert "no/such.h5" in assert_one_error_line(r, 1)


def test_info_on_bad_files(run_isl, small_model, tmp_path):
    line = assert_one_error_line(run_isl("dataset", "info", tmp_path / "none.h5"), 1)
    assert "cannot open" in line
    line = assert_one_error_line(run_isl("dataset", "info", small_model), 1)
    assert 'attribute format is "isl-model", not "isl-dataset"' in line
    text = tmp_path / "text.h5"
    text.write_text("hello\n")
    assert "not an HDF5 file" in assert_one_error_line(run_isl("dataset", "info", text), 1)


def test_h5py_written_file_loads(run_isl, tmp_path):
    """A file written by someone else (h5py, float32, a NaN where unknown) is accepted."""
    path = tmp_path / "h5py.h5"
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "isl-dataset"
        f.attrs["version"] = 1
        f.attrs["num_z"] = 2
        f.attrs["labels"] = ["dapi_confocal"]
        w = f.create_group("wells/000")
        w.attrs["name"] = "w"
        w.attrs["condition"] = "A"
        w.attrs["pixel_size_um"] = 0.3
        w["stack"] = rng.random((2, 20, 30)).astype(np.float32)
        values = rng.random((20, 30)).astype(np.float32)
        mask = np.ones((20, 30), np.uint8)
        values[0, 0], mask[0, 0] = np.nan, 0
        w["labels/dapi_confocal/values"] = values
        w["labels/dapi_confocal/mask"] = mask
    r = run_isl("dataset", "info", path)
    assert r.returncode == 0, r.stderr
    assert "dapi_confocal 599 known pixels (99.8%)" in r.stdout
    with h5py.File(path, "a") as f:
        f["wells/000/stack"][0, 1, 2] = 1.5
    line = assert_one_error_line(run_isl("dataset", "info", path), 1)
    assert "/wells/000/stack: element [0, 1, 2] is outside [0, 1]" in line
