"""Scale-out (docs/scaling.md): `isl predict --input-list` alone and over MPI ranks, and
`mpirun -np 2 isl train` against one process of the same global batch (with and without
dropout), resuming with a different rank count, a job whose ranks disagree ending
instead of hanging, and ranks whose weights diverge ending before a checkpoint.

The MPI tests need an isl built with MPI (meson -Dmpi=enabled|auto with libopenmpi-dev)
and mpirun on PATH; they are skipped with the reason otherwise. The --input-list tests
run without MPI.

Run: ISL_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/cli/test_mpi.py -q
"""
import csv
import os
import shutil
import subprocess

import numpy as np
import pytest
import tifffile

# The well (labels a everywhere, b on rows 100..) and base-8 model of the training tests.
from .test_train_cli import NZ, data, model_arrays  # noqa: F401 (data: a fixture)

CROP = 266  # outputs 24 x 24
RATE = 1e-4
STEPS = 2
COMMON = ("--threads", 1, "--crop", CROP, "--lr", RATE, "--seed", 9)
# The ranks share this machine's cores: no OpenMP spinning.
MPI_ENV = dict(os.environ, OMP_WAIT_POLICY="passive")


def built_with_mpi(isl_bin):
    flag = os.environ.get("ISL_MPI")
    if flag is not None:
        return flag == "1"
    r = subprocess.run(["ldd", str(isl_bin)], capture_output=True, text=True)
    return "libmpi" in r.stdout


@pytest.fixture(scope="module")
def mpirun(isl_bin):
    if not built_with_mpi(isl_bin):
        pytest.skip("isl was built without MPI (meson -Dmpi=enabled needs libopenmpi-dev)")
    path = shutil.which("mpirun")
    if not path:
        pytest.skip("mpirun not found (Debian: openmpi-bin)")

    def run(n, *args, timeout=300):
        cmd = [path, "--allow-run-as-root", "--oversubscribe", "-np", str(n),
               "-x", "OMP_WAIT_POLICY", *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=MPI_ENV)

    return run


@pytest.fixture(scope="module")
def fields(data):
    """Three small fields to predict, listed in fields.txt (with a comment and blanks)."""
    rng = np.random.default_rng(4)
    for i, (h, w) in enumerate([(40, 48), (32, 32), (24, 56)]):
        field = (rng.random((NZ, h, w)) * 0.5 + 0.25).astype(np.float32)
        tifffile.imwrite(data / f"field{i}.tif", field, photometric="minisblack")
    (data / "fields.txt").write_text(
        "# three fields\n" + "".join(f"{data / f'field{i}.tif'}\n\n" for i in range(3)))
    return data


def weight_differences(a_path, b_path):
    a, b = model_arrays(a_path), model_arrays(b_path)
    assert a.keys() == b.keys()
    return np.concatenate([np.abs(a[k].astype(np.float64) - b[k]).ravel() for k in sorted(a)])


def logged_losses(path):
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["loss_total"] != ""]
    return np.array([[float(r[k]) for k in ("loss_a", "loss_b", "loss_autoencoder",
                                            "loss_total")] for r in rows])


def assert_same_training(a_path, b_path, steps):
    """Equal up to float summation order. Adam moves a weight by about the rate per
    step whatever its gradient's size, so a gradient that is 0 up to rounding can move
    one way in one run and the other way in the other: at most 2 x rate x steps apart.
    All other weights agree to rounding (measured here: 99.9% within 5e-6, max 1.5e-4)."""
    d = weight_differences(a_path, b_path)
    assert np.quantile(d, 0.999) <= 2e-5, np.quantile(d, [0.5, 0.999, 1])
    assert d.max() <= 2 * RATE * steps, d.max()


# ---- predict --input-list ------------------------------------------------------------


@pytest.fixture(scope="module")
def alone(run_isl, fields):
    """The fields predicted by one process without MPI."""
    r = run_isl("predict", "-m", fields / "init.h5", "--input-list", fields / "fields.txt",
                "-O", fields / "alone", "--threads", 1)
    assert r.returncode == 0, r.stderr
    assert "rank 0 of 1: predicted 3 fields of 3, 0 failed" in r.stderr
    return fields / "alone"


def test_input_list_alone_equals_one_field_at_a_time(run_isl, data, alone, tmp_path):
    for i in range(3):
        one = run_isl("predict", "-m", data / "init.h5", "-i", data / f"field{i}.tif",
                      "-O", tmp_path / f"one{i}", "--threads", 1)
        assert one.returncode == 0, one.stderr
        for name in ("a_median.tif", "b_median.tif"):
            got = tifffile.imread(alone / f"field{i}" / name)
            want = tifffile.imread(tmp_path / f"one{i}" / name)
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, want)


def test_input_list_errors(run_isl, fields, tmp_path):
    data = fields
    same = tmp_path / "same.txt"
    os.makedirs(tmp_path / "x")
    shutil.copy(data / "field0.tif", tmp_path / "x" / "field0.tif")
    same.write_text(f"{data / 'field0.tif'}\n{tmp_path / 'x' / 'field0.tif'}\n")
    r = run_isl("predict", "-m", data / "init.h5", "--input-list", same, "-O", tmp_path / "o")
    assert r.returncode == 2 and "would both write to DIR/field0/" in r.stderr, r.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    r = run_isl("predict", "-m", data / "init.h5", "--input-list", empty, "-O", tmp_path / "o")
    assert r.returncode == 2 and "lists no input" in r.stderr, r.stderr
    r = run_isl("predict", "-m", data / "init.h5", "--input-list", empty, "-i",
                data / "field0.tif", "-O", tmp_path / "o")
    assert r.returncode == 2 and "not both" in r.stderr, r.stderr
    # A field that cannot be read fails alone: the others are written.
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{tmp_path / 'missing.tif'}\n{data / 'field1.tif'}\n")
    r = run_isl("predict", "-m", data / "init.h5", "--input-list", bad, "-O", tmp_path / "b",
                "--threads", 1)
    assert r.returncode == 1, r.stderr
    assert "missing.tif" in r.stderr and "predicted 1 field of 2, 1 failed" in r.stderr
    assert (tmp_path / "b" / "field1" / "a_median.tif").is_file()
    assert not (tmp_path / "b" / "missing").exists()


def test_input_list_over_two_ranks(mpirun, isl_bin, fields, alone, tmp_path):
    data = fields
    r = mpirun(2, isl_bin, "predict", "-m", data / "init.h5", "--input-list",
               data / "fields.txt", "-O", tmp_path / "mpi", "--threads", 1)
    assert r.returncode == 0, r.stderr
    done = {}
    for rank in (0, 1):
        line = [s for s in r.stderr.splitlines() if f"rank {rank} of 2: predicted" in s]
        assert len(line) == 1, r.stderr
        done[rank] = int(line[0].split("predicted ")[1].split()[0])
    assert done[0] + done[1] == 3, r.stderr
    for i in range(3):
        for name in ("a_median.tif", "b_median.tif"):
            np.testing.assert_array_equal(
                tifffile.imread(tmp_path / "mpi" / f"field{i}" / name),
                tifffile.imread(alone / f"field{i}" / name))
    leftovers = [p for p in (tmp_path / "mpi").rglob("*") if p.name.startswith(".")]
    assert not leftovers, leftovers


# ---- train ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(run_isl, data):
    """One process, global batch 4, STEPS steps (and a half-batch control)."""
    for name, batch in (("single", 4), ("half", 2)):
        r = run_isl("train", "--dataset", data / "data.h5", "--model", data / "init.h5",
                    "--out", data / f"{name}.h5", "--steps", STEPS, "--batch", batch, *COMMON)
        assert r.returncode == 0, r.stderr
    return data / "single.h5"


def test_two_ranks_equal_one_process_of_the_global_batch(mpirun, isl_bin, data, single):
    out = data / "two.h5"
    r = mpirun(2, isl_bin, "train", "--dataset", data / "data.h5", "--model", data / "init.h5",
               "--out", out, "--steps", STEPS, "--batch", 2, *COMMON)
    assert r.returncode == 0, r.stderr
    assert "data-parallel on 2 MPI ranks" in r.stderr
    for rank in (0, 1):
        assert f"rank {rank} of 2: {STEPS} steps" in r.stderr, r.stderr
    # Rank 0 alone wrote the files; the log holds the global batch's losses.
    assert r.stdout.count("wrote ") == 1, r.stdout
    np.testing.assert_allclose(logged_losses(data / "two.log.csv"),
                               logged_losses(data / "single.log.csv"), atol=2e-5)
    assert_same_training(out, single, STEPS)
    # The control: half the batch trains a different model, far beyond the tolerance.
    d = weight_differences(data / "half.h5", single)
    assert np.quantile(d, 0.999) > 10 * 2e-5, np.quantile(d, 0.999)


@pytest.mark.parametrize("option,ranks_only", [
    (("--dropout", 0.5), ()),
    (("--stochastic-depth", 0.5), ()),
    (("--dropout", 0.5, "--stochastic-depth", 0.5), ("--keep-activations",)),
])
def test_two_ranks_with_dropout_equal_one_process(mpirun, run_isl, isl_bin, data, single,
                                                  tmp_path, option, ranks_only):
    """Dropout masks are drawn per crop of the global batch (each rank's first crop is
    rank x batch): two ranks with dropout train what one process with dropout trains.
    Before 0.14 every rank drew the mask of crops 0 and 1 for its own two crops. Stochastic
    depth decides per module and step, alike on every rank. `ranks_only` is given to the
    ranks alone: --keep-activations changes nothing over MPI either (the kept head inputs
    are the dropped ones)."""
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    r = run_isl("train", "--dataset", data / "data.h5", "--model", data / "init.h5",
                "--out", one, "--steps", STEPS, "--batch", 4, *option, *COMMON)
    assert r.returncode == 0, r.stderr
    r = mpirun(2, isl_bin, "train", "--dataset", data / "data.h5", "--model", data / "init.h5",
               "--out", two, "--steps", STEPS, "--batch", 2, *ranks_only, *option, *COMMON)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(logged_losses(tmp_path / "two.log.csv"),
                               logged_losses(tmp_path / "one.log.csv"), atol=2e-5)
    assert_same_training(two, one, STEPS)
    # The control: the option changed the training (the same run without it is far).
    d = weight_differences(one, single)
    assert np.quantile(d, 0.999) > 10 * 2e-5, np.quantile(d, 0.999)


def test_resume_with_a_different_rank_count(mpirun, run_isl, isl_bin, data, single, tmp_path):
    """Two ranks of batch 2 for a step, then one process of batch 4: the same global
    batch, so the same crops and the same model as one process all along."""
    out = tmp_path / "resumed.h5"
    r = mpirun(2, isl_bin, "train", "--dataset", data / "data.h5", "--model", data / "init.h5",
               "--out", out, "--steps", STEPS - 1, "--batch", 2, *COMMON)
    assert r.returncode == 0, r.stderr
    r = run_isl("train", "--dataset", data / "data.h5", "--resume",
                tmp_path / "resumed.checkpoint.h5", "--out", out, "--steps", STEPS,
                "--batch", 4, *COMMON)
    assert r.returncode == 0, r.stderr
    assert_same_training(out, single, STEPS)


def test_a_rank_that_stops_answering_ends_the_job(mpirun, isl_bin, data, tmp_path):
    """Rank 1 is stopped (SIGSTOP) once step 1 is logged: rank 0 waits for it in step 2's
    collectives, and within --comm-timeout the job ends with a message naming the wait,
    instead of hanging."""
    script = tmp_path / "rank.sh"
    log = tmp_path / "out.log.csv"
    script.write_text(
        "#!/bin/sh\n"
        f'"{isl_bin}" train --dataset "{data / "data.h5"}" --model "{data / "init.h5"}" '
        f'--out "{tmp_path / "out.h5"}" --steps 50 --batch 2 --threads 1 --crop 266 '
        "--comm-timeout 5 &\n"
        "pid=$!\n"
        'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then\n'
        f'  until grep -q "^1," "{log}" 2>/dev/null; do sleep 0.2; done\n'
        "  kill -STOP $pid\n"
        "fi\n"
        "wait $pid\n")
    script.chmod(0o755)
    r = mpirun(2, script, timeout=240)
    assert r.returncode != 0, r.stderr
    assert "rank 0 of 2: no answer from the other ranks for 5 s" in r.stderr, r.stderr
    assert "ending the MPI job" in r.stderr, r.stderr


def test_ranks_that_diverge_end_the_job_before_a_checkpoint(mpirun, isl_bin, data, tmp_path):
    """Rank 1 is started with another learning rate: the summed gradients agree, the
    updated weights do not. At the first checkpoint (step 1) the ranks compare digests of
    their states and the job ends naming rank 1, before rank 0 writes anything."""
    script = tmp_path / "diverge.sh"
    out = tmp_path / "out.h5"
    script.write_text(
        "#!/bin/sh\n"
        'lr=1e-4; if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then lr=2e-4; fi\n'
        f'exec "{isl_bin}" train --dataset "{data / "data.h5"}" --model "{data / "init.h5"}" '
        f'--out "{out}" --steps {STEPS} --batch 2 --threads 1 --crop {CROP} --seed 9 '
        '--checkpoint-every 1 --lr "$lr"\n')
    script.chmod(0o755)
    r = mpirun(2, script)
    assert r.returncode != 0, r.stderr
    assert "after step 1 the state of rank 1 (weights, optimizer) differs from rank 0's" \
        in r.stderr, r.stderr
    assert r.stderr.count("differs from rank 0's") == 1, r.stderr  # told once, by rank 0
    # Both ranks found it and end alike: no rank aborts the job pointing at a message
    # it did not print.
    assert "the message above" not in r.stderr, r.stderr
    assert not out.exists()
    assert not (tmp_path / "out.checkpoint.h5").exists()
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_gradient_buckets_equal_one_flat_buffer(mpirun, isl_bin, data, tmp_path):
    """Buckets of 0.1 MB (started one by one with MPI_Iallreduce during the backward
    pass) against one buffer after it: each gradient element is the same sum of the same
    two numbers, so the models agree bit for bit; the buckets are many calls a step."""
    calls = {}
    for name, mb in (("flat", 0), ("buckets", 0.1)):
        r = mpirun(2, isl_bin, "train", "--dataset", data / "data.h5", "--model",
                   data / "init.h5", "--out", tmp_path / f"{name}.h5", "--steps", STEPS,
                   "--batch", 2, "--bucket-mb", mb, *COMMON)
        assert r.returncode == 0, r.stderr
        line = [s for s in r.stderr.splitlines() if "rank 0 of 2:" in s and "calls per step" in s]
        assert len(line) == 1, r.stderr
        calls[name] = int(line[0].split("MB, ")[1].split()[0])
    assert calls["buckets"] >= calls["flat"] + 5, calls
    d = weight_differences(tmp_path / "flat.h5", tmp_path / "buckets.h5")
    assert d.max() == 0, d.max()


def test_a_rank_that_never_starts_ends_the_job(mpirun, isl_bin, data, tmp_path):
    """Rank 1 starts 120 s late: rank 0 waits in MPI_Init (or the start-up barrier) and
    within --comm-timeout ends the job with a message instead of waiting for it."""
    script = tmp_path / "late.sh"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then sleep 120; fi\n'
        f'exec "{isl_bin}" train --dataset "{data / "data.h5"}" --model "{data / "init.h5"}" '
        f'--out "{tmp_path / "out.h5"}" --steps 2 --batch 2 --threads 1 --crop 266 '
        "--comm-timeout 3\n")
    script.chmod(0o755)
    r = mpirun(2, script, timeout=100)  # a hang would raise TimeoutExpired
    assert r.returncode != 0, r.stderr
    assert ("rank 0: MPI_Init did not finish within 3 s" in r.stderr
            or "rank 0 of 2: no answer from the other ranks for 3 s in the start-up barrier"
            in r.stderr), r.stderr
    assert not (tmp_path / "out.h5").exists()


def test_predict_a_rank_that_stops_answering_ends_the_job(mpirun, isl_bin, fields, tmp_path):
    """Many-field mode: rank 1 is stopped (SIGSTOP) once the first field is written;
    rank 0 predicts the rest, then within --comm-timeout ends the job instead of waiting
    for rank 1 forever."""
    rng = np.random.default_rng(5)
    paths = []
    for i in range(16):
        path = tmp_path / f"f{i:02d}.tif"
        tifffile.imwrite(path, (rng.random((NZ, 32, 40)) * 0.5 + 0.25).astype(np.float32),
                         photometric="minisblack")
        paths.append(f"{path}\n")
    (tmp_path / "list.txt").write_text("".join(paths))
    out = tmp_path / "out"
    script = tmp_path / "rank.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'"{isl_bin}" predict -m "{fields / "init.h5"}" --input-list "{tmp_path / "list.txt"}" '
        f'-O "{out}" --threads 1 --comm-timeout 3 &\n'
        "pid=$!\n"
        'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then\n'
        f'  until ls "{out}"/*/a_median.tif >/dev/null 2>&1; do sleep 0.05; done\n'
        "  kill -STOP $pid\n"
        "fi\n"
        "wait $pid\n")
    script.chmod(0o755)
    r = mpirun(2, script, timeout=200)
    assert r.returncode != 0, r.stderr
    assert "rank 0 of 2: no" in r.stderr and "for 3 s" in r.stderr, r.stderr
    assert "ending the MPI job" in r.stderr, r.stderr
