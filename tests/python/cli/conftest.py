"""Fixtures of the isl command-line tests: the built binary, the shared test data and
small models.

Environment:
  ISL_BUILD_DIR   meson build directory (default: <repository>/build);
                  the binary is $ISL_BUILD_DIR/tools/isl
  ISL_SHARED_DIR  shared data directory (default: ../shared relative to the repository root)
"""
import os
import pathlib
import subprocess

import numpy as np
import pytest
import tifffile

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


def _build_dir():
    return pathlib.Path(os.environ.get("ISL_BUILD_DIR", REPO_ROOT / "build"))


@pytest.fixture(scope="session")
def isl_bin():
    path = _build_dir() / "tools" / "isl"
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.skip(f"isl binary not found at {path} (build it, or set ISL_BUILD_DIR)")
    return path


@pytest.fixture(scope="session")
def shared_dir():
    path = pathlib.Path(os.environ.get("ISL_SHARED_DIR", REPO_ROOT.parent / "shared"))
    if not path.is_dir():
        pytest.skip(f"shared data directory not found at {path} (set ISL_SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def golden_dir(shared_dir):
    path = shared_dir / "testdata" / "golden-base32"
    missing = [n for n in ("model.h5", "input.tif", "expected.h5") if not (path / n).is_file()]
    if missing:
        pytest.skip(f"golden vectors missing in {path}: {', '.join(missing)}")
    return path


@pytest.fixture(scope="session")
def run_isl(isl_bin):
    """run_isl(*args, **kw) -> CompletedProcess with text stdout/stderr."""

    def run(*args, timeout=300, **kw):
        return subprocess.run([str(isl_bin), *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, **kw)

    return run


HEADS = ("dapi_confocal", "map2_confocal", "nfh_confocal")


@pytest.fixture(scope="session")
def small_model(run_isl, tmp_path_factory):
    """A base-16 model with three label heads (fast to run)."""
    path = tmp_path_factory.mktemp("model") / "small.h5"
    r = run_isl("model", "init", "--base-depth", 16, "--num-z", 13, "--heads", ",".join(HEADS),
                "--seed", 7, "-o", path)
    assert r.returncode == 0, r.stderr
    return path


@pytest.fixture(scope="session")
def small_stack(tmp_path_factory):
    """A random 13 x 40 x 50 uint16 stack."""
    path = tmp_path_factory.mktemp("stack") / "stack.tif"
    rng = np.random.default_rng(1)
    tifffile.imwrite(path, rng.integers(0, 65536, size=(13, 40, 50), dtype=np.uint16))
    return path
