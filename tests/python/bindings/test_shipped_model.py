"""The bundled model examples/data/condition-b.h5 is what the README says it is: its
heads, size, and its validation Pearson r on the held-out rows of the real well
(../shared/data; skipped when absent), computed here with numpy from a prediction through
the Python bindings (examples/validation_figure.py).

Run: ISL_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/bindings/test_shipped_model.py -q
"""
import os
import pathlib
import re
import sys

import pytest

from .conftest import SOURCE_DIR as REPO, islpy, run  # noqa: F401  (fixtures)

MODEL = REPO / "examples" / "data" / "condition-b.h5"
LABELS = ("dapi_confocal", "map2_confocal", "nfh_confocal")


def readme_r():
    """(validation r, with flip averaging, training rows' r) per label as the README's
    table states them."""
    text = (REPO / "README.md").read_text()
    out = {}
    number = r"\s*\**([0-9.]+)\**\s*\|"
    for name in LABELS:
        m = re.search(r"\|\s*`?%s`?[^|]*\|" % name + number * 3, text)
        assert m, "README has no validation row for %s" % name
        out[name] = tuple(float(m.group(i)) for i in (1, 2, 3))
    return out


def well():
    data = pathlib.Path(os.environ.get("ISL_SHARED_DIR", REPO.parent / "shared")) / "data" / \
        "condition_b_well_a4"
    if not (data / "phase_contrast_z13.tif").is_file():
        pytest.skip("the real well is not at %s (set ISL_SHARED_DIR)" % data)
    return data


@pytest.fixture(scope="module")
def model_path():
    if not MODEL.is_file():
        pytest.skip("no bundled model at %s" % MODEL)
    return MODEL


def test_bundled_model_is_small_and_has_the_three_labels(model_path, islpy):
    assert model_path.stat().st_size <= 10 * 1024 * 1024
    with islpy.Model.load(model_path) as m:
        assert m.label_heads == LABELS
        assert m.num_z == 13


def test_validation_r_matches_the_readme(model_path, islpy):
    data = well()
    r = run([sys.executable, REPO / "examples" / "validation_figure.py", "--model", model_path,
             "--data", data, "--threads", 1], timeout=600)
    measured = {m.group(1): (float(m.group(2)), float(m.group(4)))
                for m in re.finditer(r"(\w+): Pearson r ([-0-9.]+) over (\d+) pixels "
                                     r"\(training rows 0\.\.767: ([-0-9.]+)\)", r.stdout)}
    assert set(measured) == set(LABELS), r.stdout
    for name, (plain, _, training) in readme_r().items():
        for got, stated in zip(measured[name], (plain, training)):
            assert abs(got - stated) < 0.005, (name, measured[name], (plain, training))


def test_flip_averaged_r_matches_the_readme(model_path, islpy):
    """The README's "with --flip-average" column. Only rows 640..1023, columns 0..767 are
    predicted: the held-out outputs (rows 768..1023, columns 0..639) see the same context,
    edges and stride-16 phase there as in the whole field, at 29% of the cost."""
    import numpy as np
    import tifffile

    data = well()
    stack = tifffile.imread(data / "phase_contrast_z13.tif")[:, 640:, :768]
    with islpy.Model.load(model_path) as m:
        pred = m.predict(np.ascontiguousarray(stack), heads=LABELS, flip_average=True)
    for name, (_, stated, _) in readme_r().items():
        target = tifffile.imread(data / (name + "_train_cols0-639.tif"))[768:, :640]
        got = np.corrcoef(pred[name]["median"][128:, :640].ravel(),
                          target.astype(np.float64).ravel())[0, 1]
        assert abs(got - stated) < 0.005, (name, got, stated)
