"""The ImageJ plugin (bindings/imagej, Plugins > isl > Predict), run from a macro by Debian's
ImageJ under Xvfb (ImageJ 1.53 cannot build its menus headless), against `isl predict`.

Run: ISL_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/test_imagej.py -q (~15 s).
"""
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from .conftest import _build_dir

IJ_JAR = "/usr/share/java/ij.jar"


@pytest.fixture(scope="module")
def imagej(isl_bin):
    build = _build_dir()
    plugin = build / "bindings" / "imagej" / "isl_Predict.jar"
    for path, what in ((IJ_JAR, "ImageJ (apt install imagej)"), (plugin, "the plugin jar")):
        if not os.path.isfile(path):
            pytest.skip(f"{what} not found at {path}")
    if not shutil.which("xvfb-run") or not shutil.which("java"):
        pytest.skip("xvfb-run or java not found (apt install xvfb default-jdk-headless)")
    return build, plugin


def run_macro(imagej, tmp_path, macro):
    build, plugin = imagej
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(plugin, plugins)
    (tmp_path / "t.ijm").write_text(macro)
    cmd = ["xvfb-run", "-a", "java", f"-Dplugins.dir={plugins}",
           f"-Djava.library.path={build / 'bindings' / 'java'}",
           "-cp", f"{IJ_JAR}:{build / 'bindings' / 'java' / 'isl.jar'}",
           "ij.ImageJ", "-batch", str(tmp_path / "t.ijm")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # Its own session, so that a hung ImageJ (e.g. a modal dialog) is killed with its Xvfb.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail("ImageJ did not finish within 120 s")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def test_imagej_plugin_matches_isl_predict(imagej, run_isl, golden_dir, tmp_path):
    out = tmp_path / "ij.tif"
    r = run_macro(imagej, tmp_path, f"""
open("{golden_dir / 'input.tif'}");
run("Predict", "model={golden_dir / 'model.h5'} statistic=mean");
print("result " + nSlices + " " + is("composite"));
saveAs("Tiff", "{out}");
""")
    assert "result 2 1" in r.stdout, r.stdout + r.stderr
    got = tifffile.imread(out)
    r = run_isl("predict", "--model", golden_dir / "model.h5", "--input", golden_dir / "input.tif",
                "--output-dir", tmp_path / "cli", "--stats", "mean", "--threads", 1)
    assert r.returncode == 0, r.stderr
    assert got.shape == (2, 266, 300)
    for k, head in enumerate(("dapi_confocal", "nfh_confocal")):
        want = tifffile.imread(tmp_path / "cli" / f"{head}_mean.tif")
        np.testing.assert_allclose(got[k], want, atol=1e-6, err_msg=head)


def test_imagej_plugin_wrong_stack(imagej, golden_dir, tmp_path):
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((5, 40, 40), np.uint16))
    r = run_macro(imagej, tmp_path, f"""
open("{tmp_path / 'five.tif'}");
run("Predict", "model={golden_dir / 'model.h5'} statistic=median");
print("images " + nImages);
""")
    # The error goes to IJ.error (a log line in batch mode); no result image appears.
    assert "images 1" in r.stdout, r.stdout + r.stderr
    assert "13 z planes" in r.stdout + r.stderr


def test_imagej_progress_and_cancel(imagej, golden_dir, tmp_path):
    """tests/java/TestImageJProgress.java: the plugin reports progress and Esc cancels it."""
    build, plugin = imagej
    classpath = f"{IJ_JAR}:{build / 'bindings' / 'java' / 'isl.jar'}:{plugin}"
    source = Path(__file__).resolve().parents[2] / "java" / "TestImageJProgress.java"
    subprocess.run(["javac", "-cp", classpath, "-d", tmp_path, source], check=True)
    r = subprocess.run(["java", "-Djava.awt.headless=true",
                        f"-Djava.library.path={build / 'bindings' / 'java'}",
                        "-cp", f"{classpath}:{tmp_path}", "TestImageJProgress",
                        golden_dir / "model.h5", golden_dir / "input.tif"],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "done" in r.stdout, out
    calls, last = re.search(r"^progress (\d+) last (\S+)$", r.stdout, re.M).groups()
    done, total = map(int, last.split("/"))
    assert int(calls) >= 1 and done == total >= 1, out
    assert "result 2" in r.stdout, out
    assert "escape null calls 1" in r.stdout, out
    # Small tiles: many of them, and the first one's report stops the rest.
    tiles = re.search(r"^api CANCELLED after 1 of (\d+): ", r.stdout, re.M)
    assert tiles and int(tiles.group(1)) > 1, out
    assert "throw listener failed" in r.stdout, out
