"""The isl CLI against the PyTorch re-implementation of the spec (tests/oracle/isl_torch.py,
a test oracle only): random models with random batch-norm statistics, an input of a size
no golden vector covers (non-square, 3 planes), every statistic."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "oracle"))
torch = pytest.importorskip("torch")
import isl_torch  # noqa: E402

STATS = ["median", "mean", "mode", "std", "entropy", "p_nonzero"]


@pytest.mark.parametrize("seed", [1, 2])
def test_cli_matches_pytorch_oracle(isl_bin, tmp_path, seed):
    torch.set_num_threads(1)
    model = isl_torch.build_random(16, 3, ["dapi_confocal", "nfh_confocal"], seed=seed)
    path = tmp_path / "m.h5"
    isl_torch.save_model(model, str(path))
    rng = np.random.default_rng(seed)
    stack = rng.integers(0, 65536, size=(3, 70, 93), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", stack, photometric="minisblack")

    out = tmp_path / "out"
    subprocess.run([str(isl_bin), "predict", "--model", str(path), "--input", str(tmp_path / "in.tif"),
                    "--output-dir", str(out), "--stats", ",".join(STATS), "--threads", "1"],
                   check=True, capture_output=True)

    expected = isl_torch.predict_image(model, stack.astype(np.float64) / 65535, None, False, None,
                                       lambda h, lg: isl_torch.stats(lg))
    for head in ["dapi_confocal", "nfh_confocal"]:
        for stat in STATS:
            got = tifffile.imread(out / f"{head}_{stat}.tif")
            want = expected[head][stat].numpy()
            assert got.shape == (70, 93)
            if stat in ("median", "mode"):
                # Bins: equal except where the distribution sits on a tie.
                assert np.mean(np.abs(got - want) > 1e-6) < 0.002, (head, stat)
            else:
                assert np.max(np.abs(got - want)) < 1e-4, (head, stat)
        # Not a vacuous comparison: the images vary.
        assert expected[head]["mean"].std() > 1e-3
