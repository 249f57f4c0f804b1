"""Crash-safe checkpoints (docs/reliability.md): `isl train` with a checkpoint every step is
killed with SIGKILL at random moments, a third of them while a checkpoint is being written.
After every kill the checkpoint is the previous or the next one, whole (every array reads
and is finite, its step count did not go back), and training resumes from it. At the end
the run that was killed many times equals one that never was (runs are bitwise
reproducible with one thread and a resumed run draws the crops an uninterrupted one would).

Default: about 20 s of kills; ISL_LONG_TESTS=1: at least 200 kills (ISL_KILL_SECONDS and
ISL_KILL_COUNT override both). The temporary files kills leave are aged past the atomic
writer's 15-minute limit; the next save of the same file must remove them.

Run: ISL_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/cli/test_kill_checkpoint.py -q
"""
import os
import random
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import tifffile

LONG = os.environ.get("ISL_LONG_TESTS") == "1"
SECONDS = float(os.environ.get("ISL_KILL_SECONDS", 3600 if LONG else 20))
KILLS = int(os.environ.get("ISL_KILL_COUNT", 200 if LONG else 1_000_000))
ARGS = ("--threads", 1, "--crop", 250, "--batch", 1, "--bn-batches", 1,
        "--checkpoint-every", 1)


@pytest.fixture(scope="module")
def data(tmp_path_factory, run_isl):
    """A 2-plane 260 x 260 well with one label, made by `isl dataset build`, and a base-5
    model (the smallest there is)."""
    d = tmp_path_factory.mktemp("kill")
    rng = np.random.default_rng(11)
    stack = rng.random((2, 260, 260)).astype(np.float32)
    tifffile.imwrite(d / "stack.tif", stack, photometric="minisblack")
    tifffile.imwrite(d / "a.tif", np.clip(stack[0] * 0.8 + 0.1, 0, 1).astype(np.float32))
    r = run_isl("dataset", "build", "--input", d / "stack.tif", "--target",
                f"a={d / 'a.tif'}", "-o", d / "data.h5")
    assert r.returncode == 0, r.stderr
    r = run_isl("model", "init", "--base-depth", 5, "--num-z", 2, "--heads", "a", "--seed", 3,
                "-o", d / "init.h5")
    assert r.returncode == 0, r.stderr
    return d


def checkpoint_step(path):
    """The step of a whole checkpoint; fails the test on any damage."""
    with h5py.File(path, "r") as f:
        step = int(f["optimizer"].attrs["step"])
        arrays = []
        f.visititems(lambda name, obj: arrays.append(obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    assert arrays and all(np.isfinite(a).all() for a in arrays if a.dtype.kind == "f")
    return step


def model_arrays(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer")
                     else None)
    return out


def temp_files(d):
    return [p for p in d.iterdir() if ".tmp." in p.name]


def start(isl_bin, data, run_dir, ckpt):
    out = run_dir / "m.h5"
    first = ("--model", data / "init.h5") if not ckpt.exists() else ("--resume", ckpt)
    if not ckpt.exists():  # a fresh start: what the killed start left is not resumable
        for p in (out, run_dir / "m.log.csv"):
            p.unlink(missing_ok=True)
    return subprocess.Popen([str(isl_bin), "train", "--dataset", str(data / "data.h5"),
                             "--out", str(out), "--steps", "100000",
                             *map(str, first), *map(str, ARGS)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


STALE_AGE = 16 * 60  # past the atomic writer's 15 minutes (lib/common/atomic_file.h)


def test_stale_temporary_files_are_removed(run_isl, data, tmp_path):
    """The atomic writer removes what a killed writer left beside the file it writes:
    regular files named exactly FILE.tmp.XXXXXX, unmodified for 15 minutes. Others stay:
    fresh ones (a live writer's), other files' and other names, directories, symlinks."""
    old = time.time() - STALE_AGE
    names = {"m.checkpoint.h5.tmp.Ab3dE9": True, "m.h5.tmp.zzzzzz": True,
             "m.checkpoint.h5.tmp.Fresh1": False, "other.h5.tmp.Ab3dE9": False,
             "m.checkpoint.h5.tmp.Ab3dE9x": False, "m.checkpoint.h5.tmp.Ab_dE9": False,
             "m.checkpoint.h5.tmp.Ab3dE": False, "xm.h5.tmp.Ab3dE9": False,
             "m.checkpoint.h5.tmp.Dir000": False, "m.checkpoint.h5.tmp.Link00": False}
    for name in names:
        p = tmp_path / name
        if name.endswith("Dir000"):
            p.mkdir()
        elif name.endswith("Link00"):
            p.symlink_to(tmp_path / "other.h5.tmp.Ab3dE9")
        else:
            p.write_bytes(b"partial")
        if not name.endswith("Fresh1"):
            os.utime(p, (old, old), follow_symlinks=False)
    r = run_isl("train", "--dataset", data / "data.h5", "--out", tmp_path / "m.h5",
                "--steps", 1, "--model", data / "init.h5", *ARGS)
    assert r.returncode == 0, r.stderr
    for name, removed in names.items():
        assert os.path.lexists(tmp_path / name) != removed, name
    assert (tmp_path / "m.h5").exists() and (tmp_path / "m.checkpoint.h5").exists()


def inode(path):
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def wait(proc, until, limit=60.0, pause=0.002):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None and not until():
        time.sleep(pause)


def kill(proc, run_dir, ckpt, mode, rnd, stale):
    """Mode 0: at a random moment from the start (also before the first step); mode 1: a
    random moment after a new checkpoint is in place; mode 2: as soon as the next
    checkpoint's temporary file appears, i.e. while it is being written."""
    if mode == 0:
        time.sleep(rnd.uniform(0.0, 4.0))
    else:
        before = inode(ckpt)
        wait(proc, lambda: inode(ckpt) != before)  # a new checkpoint: progress
        if mode == 1:
            time.sleep(rnd.uniform(0.0, 1.0))
        else:
            wait(proc, lambda: set(temp_files(run_dir)) - stale, pause=0.001)
    proc.kill()


def test_sigkill_leaves_a_whole_resumable_checkpoint(isl_bin, run_isl, data, tmp_path):
    rnd = random.Random(int(os.environ.get("ISL_KILL_SEED", time.time_ns())))
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    ckpt = run_dir / "m.checkpoint.h5"
    last, kills, during_save, t0 = 0, 0, 0, time.monotonic()
    stale, left = set(), 0  # temporary files left by kills, aged past the writer's limit
    while kills < KILLS and time.monotonic() - t0 < SECONDS:
        proc = start(isl_bin, data, run_dir, ckpt)
        kill(proc, run_dir, ckpt, kills % 3, rnd, stale)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (-signal.SIGKILL, 0), err
        kills += proc.returncode == -signal.SIGKILL
        if ckpt.exists():
            step = checkpoint_step(ckpt)
            assert step >= last, f"the checkpoint went back from step {last} to {step}"
            last = step
        # A kill during a save leaves its temporary file (never the checkpoint's name). Age
        # it past ISL_ATOMIC_STALE_SECONDS: the next save of the same file must remove it.
        new = set(temp_files(run_dir)) - stale
        during_save += bool(new)
        left += len(new)
        for p in new:
            os.utime(p, (time.time() - STALE_AGE, time.time() - STALE_AGE))
        stale = (stale | new) & set(temp_files(run_dir))
    print(f"kills: {kills} SIGKILLs survived ({during_save} while a checkpoint was being "
          f"written, {left} temporary files left) in {time.monotonic() - t0:.0f} s; "
          f"checkpoint at step {last}")
    assert kills >= 3 and ckpt.exists() and last >= 1

    # Resume to two steps past the checkpoint; it must equal a run that was never killed.
    final = last + 2
    r = run_isl("train", "--dataset", data / "data.h5", "--out", run_dir / "m.h5",
                "--steps", final, "--resume", ckpt, *ARGS, timeout=600)
    assert r.returncode == 0, r.stderr
    assert checkpoint_step(ckpt) == final
    assert not temp_files(run_dir), "isl train left stale temporary files beside its outputs"
    straight = tmp_path / "straight"
    straight.mkdir()
    r = run_isl("train", "--dataset", data / "data.h5", "--out", straight / "m.h5",
                "--steps", final, "--model", data / "init.h5", *ARGS, timeout=1800)
    assert r.returncode == 0, r.stderr
    a, b = model_arrays(run_dir / "m.h5"), model_arrays(straight / "m.h5")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
