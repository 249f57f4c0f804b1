"""The bundled model examples/data/condition-b.h5 is what the README says it is: its
heads, size, and its Pearson r on the pixels it was trained on (all labelled columns 0..639
of the real well in ../shared/data; skipped when absent), computed here with numpy from a
prediction through the Python bindings. Its cross-validated figures, the ones that say
how it fares on fields it never saw, come from scripts/cv-condition-b.sh; the long test
tests/python/cli/test_cv_fold.py retrains the recipe on a fold and checks them.

Run: ISL_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/bindings/test_shipped_model.py -q
"""
import os
import pathlib
import re

import pytest

from .conftest import BUNDLED_HEADS as LABELS, BUNDLED_MODEL as MODEL
from .conftest import SOURCE_DIR as REPO, islpy  # noqa: F401  (fixtures)


def readme_figures():
    """(cross-validated r, its sd, r on the training pixels) per label, as the README's
    table of the bundled model states them."""
    text = (REPO / "README.md").read_text()
    out = {}
    for name in LABELS:
        m = re.search(r"\|\s*`%s`\s*\|\s*([0-9.]+) \+- ([0-9.]+)\s*\|\s*([0-9.]+)\s*\|" % name,
                      text)
        assert m, "README has no row for %s in the bundled model's table" % name
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


def test_training_pixels_r_matches_the_readme(model_path, islpy):
    """The README's "training pixels" column: columns 0..767 of the whole well are
    predicted (the outputs of columns 0..639 see the same context, edges and stride-16
    phase as in the whole field) and scored on columns 0..639 against the targets."""
    import numpy as np
    import tifffile

    data = well()
    stack = tifffile.imread(data / "phase_contrast_z13.tif")[:, :, :768]
    with islpy.Model.load(model_path) as m:
        pred = m.predict(np.ascontiguousarray(stack), heads=LABELS, threads=1)
    for name, (cv, sd, stated) in readme_figures().items():
        target = tifffile.imread(data / (name + "_train_cols0-639.tif"))
        got = np.corrcoef(pred[name]["median"][:, :640].ravel(),
                          target.astype(np.float64).ravel())[0, 1]
        assert abs(got - stated) < 0.005, (name, got, stated)
        # A model fits its own training pixels at least as well as unseen strips.
        assert got > cv - sd, (name, got, cv)
