"""Fixtures of the binding tests (tests/python/bindings; the CLI tests have their own
conftest.py in tests/python/cli).

Environment:
    ISL_BUILD_DIR   meson build directory (default: <source>/build)
    ISL_GOLDEN_DIR  golden vectors (default: $ISL_SHARED_DIR/testdata/golden-base32, where
                    ISL_SHARED_DIR defaults to ../shared beside the repository); the tests
                    that need them are skipped when they are absent.
    ISL_TEST_THREADS  threads per prediction (default 1: on a shared, busy machine OpenMP
                    teams of several threads mostly wait for each other).
"""
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

SOURCE_DIR = Path(__file__).resolve().parents[3]
BUILD_DIR = Path(os.environ.get("ISL_BUILD_DIR", str(SOURCE_DIR / "build"))).resolve()
SHARED_DIR = Path(os.environ.get("ISL_SHARED_DIR", str(SOURCE_DIR.parent / "shared")))
GOLDEN_DIR = Path(os.environ.get("ISL_GOLDEN_DIR", str(SHARED_DIR / "testdata" / "golden-base32")))
PYTHON_PACKAGE_DIR = BUILD_DIR / "bindings" / "python"
JAVA_DIR = BUILD_DIR / "bindings" / "java"
EXAMPLES_BUILD_DIR = BUILD_DIR / "examples"
# The bundled model, its label heads, and the demo stack (a crop of the real well).
BUNDLED_MODEL = SOURCE_DIR / "examples" / "data" / "condition-b.h5"
BUNDLED_HEADS = ("dapi_confocal", "map2_confocal", "nfh_confocal")
DEMO_STACK = SOURCE_DIR / "examples" / "data" / "demo_z13.tif"

# Heads of the golden model; the small random models use the same names.
LABEL_HEADS = ("dapi_confocal", "nfh_confocal")
SMALL_SHAPE = (13, 24, 40)
THREADS = int(os.environ.get("ISL_TEST_THREADS", "1"))


def python_env():
    """Environment of subprocesses that import isl from the build tree."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(THREADS))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PYTHON_PACKAGE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run(cmd, **kwargs):
    """Runs a command, failing the test with its output if it fails."""
    kwargs.setdefault("env", python_env())
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        pytest.fail("%s exited with %d\n--- stdout\n%s\n--- stderr\n%s" % (
            " ".join(str(c) for c in cmd), result.returncode, result.stdout, result.stderr))
    return result


@pytest.fixture(scope="session")
def islpy():
    """The isl package of the build tree (skips if the Python bindings were not built)."""
    init = PYTHON_PACKAGE_DIR / "isl" / "__init__.py"
    if not init.exists():
        pytest.skip("Python bindings not built (%s missing; meson -Dpython=enabled)" % init)
    if str(PYTHON_PACKAGE_DIR) not in sys.path:
        sys.path.insert(0, str(PYTHON_PACKAGE_DIR))
    import isl

    assert Path(isl.__file__).resolve().parent == (PYTHON_PACKAGE_DIR / "isl").resolve(), (
        "imported %s instead of the build tree's package" % isl.__file__)
    return isl


@pytest.fixture(scope="session")
def golden(islpy):
    """The golden vectors: model path, input stack, expected outputs (or skip)."""
    needed = [GOLDEN_DIR / n for n in ("model.h5", "input.tif", "expected.h5")]
    if not all(p.exists() for p in needed):
        pytest.skip("golden vectors absent from %s" % GOLDEN_DIR)
    import h5py
    import tifffile

    expected = {}
    with h5py.File(GOLDEN_DIR / "expected.h5", "r") as f:
        for head in LABEL_HEADS:
            for stat in ("mean", "median"):
                expected[head + "/" + stat] = f[head][stat][()]
    return types.SimpleNamespace(model=GOLDEN_DIR / "model.h5", input=GOLDEN_DIR / "input.tif",
                                 stack=tifffile.imread(GOLDEN_DIR / "input.tif"),
                                 expected=expected)


@pytest.fixture(scope="session")
def golden_model(islpy, golden):
    with islpy.Model.load(golden.model) as model:
        yield model


@pytest.fixture(scope="session")
def small_model(islpy):
    """A base-16 random model with the golden model's heads (fast to predict)."""
    with islpy.Model.create(base_depth=16, num_z=13, heads=LABEL_HEADS, seed=3) as model:
        yield model


@pytest.fixture(scope="session")
def bindings_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("bindings")


@pytest.fixture(scope="session")
def small_model_file(small_model, bindings_tmp):
    path = bindings_tmp / "small-model.h5"
    small_model.save(path)
    return path


@pytest.fixture(scope="session")
def small_stack():
    """A (13, 24, 40) uint16 stack: a crop of the golden input, or noise without it."""
    z, h, w = SMALL_SHAPE
    if (GOLDEN_DIR / "input.tif").exists():
        import tifffile

        stack = tifffile.imread(GOLDEN_DIR / "input.tif")[:, 100:100 + h, 120:120 + w]
        return np.ascontiguousarray(stack)
    return np.random.default_rng(5).integers(0, 65536, SMALL_SHAPE, dtype=np.uint16)


@pytest.fixture(scope="session")
def small_stack_file(small_stack, bindings_tmp):
    import tifffile

    path = bindings_tmp / "small-stack.tif"
    tifffile.imwrite(path, small_stack)
    return path


@pytest.fixture(scope="session")
def small_prediction(small_model, small_stack):
    """Median and mean of the label heads of small_model on small_stack."""
    return small_model.predict(small_stack, stats=("median", "mean"), threads=THREADS)


@pytest.fixture(scope="session")
def java_tools():
    """javac, java and the built isl.jar / libisl_jni.so (or skip)."""
    javac, java = shutil.which("javac"), shutil.which("java")
    jar = JAVA_DIR / "isl.jar"
    if not (javac and java and jar.exists() and (JAVA_DIR / "libisl_jni.so").exists()):
        pytest.skip("Java bindings not built or no JDK (meson -Djava=enabled)")
    return types.SimpleNamespace(javac=javac, java=java, jar=jar,
                                 library_path="-Djava.library.path=%s" % JAVA_DIR)
