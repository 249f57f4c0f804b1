"""examples/agreement.py: among three models, the one unlike the others agrees least, and
the figures it prints are Pearson r computed independently here (numpy's corrcoef). The
models are the bundled model and two copies of it with noisy weights (the golden model is
untrained: its median images are constant)."""
import shutil
import subprocess
import sys

import numpy as np
import pytest

from model_files import unseal
from .conftest import BUNDLED_MODEL as MODEL, DEMO_STACK as STACK
from .conftest import SOURCE_DIR, THREADS, python_env, run

EXAMPLE = SOURCE_DIR / "examples" / "agreement.py"
CROP = (0, 0, 128, 128)  # y, x, h, w of the demo stack: cells, not only background


def perturbed_copy(source, path, scale, seed):
    """source with every floating-point array multiplied by exp(scale * N(0, 1)), signs
    kept so variances stay positive: with a small scale, a model that predicts nearly as
    source does, with a large one a model unlike it."""
    h5py = pytest.importorskip("h5py")
    shutil.copy(source, path)
    unseal(path, require_record=True)
    rng = np.random.default_rng(seed)
    with h5py.File(path, "r+") as f:
        def perturb(_, obj):
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f":
                a = obj[()]
                obj[...] = (a * np.exp(scale * rng.standard_normal(a.shape))).astype(a.dtype)
        f.visititems(perturb)
    return path


def test_agreement_names_the_model_unlike_the_others(islpy, bindings_tmp):
    import tifffile

    near = perturbed_copy(MODEL, bindings_tmp / "bundled-near.h5", 0.02, 1)
    odd = perturbed_copy(MODEL, bindings_tmp / "bundled-far.h5", 0.5, 2)
    models = [MODEL, near, odd]
    result = run([sys.executable, EXAMPLE, *models, "--stack", STACK,
                  "--crop", *CROP, "--threads", THREADS])

    y, x, h, w = CROP
    stack = np.ascontiguousarray(tifffile.imread(STACK)[:, y:y + h, x:x + w])
    medians = []
    for path in models:
        with islpy.Model.load(path) as model:
            heads = list(model.label_heads)
            pred = model.predict(stack, stats=("median",), threads=THREADS)
            medians.append([pred[head]["median"].ravel() for head in heads])
    printed = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] in {str(p) for p in models}:
            printed[fields[0]] = [float(v) for v in fields[1:]]
    assert len(printed) == 3, result.stdout
    means = []
    for k, path in enumerate(models):
        expected = [np.corrcoef(medians[k][h], np.mean(
            [medians[j][h] for j in range(3) if j != k], axis=0))[0, 1]
            for h in range(len(heads))]
        means.append(np.mean(expected))
        assert printed[str(path)] == pytest.approx(expected + [np.mean(expected)], abs=1e-3)
    assert means[2] < min(means[:2]) - 0.1, means  # the test's own premise
    assert "stands apart: %s agrees %.3f less" % (odd, min(means[:2]) - means[2]) \
        in result.stdout
    assert "agrees most: %s " % models[int(np.argmax(means))] in result.stdout


def test_agreement_names_no_model_among_alike_ones(islpy, bindings_tmp):
    models = [MODEL] + [perturbed_copy(MODEL, bindings_tmp / ("bundled-near%d.h5" % k), 0.02, k)
                        for k in (3, 4)]
    result = run([sys.executable, EXAMPLE, *models, "--stack", STACK,
                  "--crop", *CROP, "--threads", THREADS])
    assert "no model stands apart" in result.stdout
    assert "\nstands apart:" not in result.stdout


def test_agreement_needs_three_models(islpy):
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(MODEL), str(MODEL),
                           "--stack", str(STACK)], capture_output=True, text=True,
                          env=python_env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "at least three models" in proc.stderr
