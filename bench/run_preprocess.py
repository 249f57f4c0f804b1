#!/usr/bin/python3
"""The preprocessing benchmark at the paper's tile size.

Writes TILES synthetic 12-bit fluorescence tiles of SIZE x SIZE (vignetting, random cells,
shot noise, one dust disk), then times, best of REPEAT runs each: `isl flat-field --light
fluorescence` (the reference: one per-pixel median and one blur), `isl flat-field
--fluorescence-dust 100` (docs/preprocessing.md, "Fluorescence dust") and `isl preprocess`
of one tile with the median, the dust artifact, the flat field and normalization. Prints
wall and CPU seconds and the wall ratio to the reference (docs/performance.md).

    bench/run_preprocess.py [--build build] [--size 2048] [--tiles 16] [--repeat 3]
"""
import argparse
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import tifffile


def write_tiles(out, n, tiles):
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n - 0.5
    vignette = 1.0 - 0.7 * (x * x + y * y)
    disk = np.where((y - 0.1) ** 2 + (x + 0.2) ** 2 <= 0.03 ** 2, 300.0, 0.0)
    paths = []
    for t in range(tiles):
        scene = np.full((n, n), 1000.0, np.float32)
        for _ in range(200):
            cy, cx, r = rng.integers(0, n), rng.integers(0, n), rng.integers(8, 30)
            scene[max(cy - r, 0):cy + r, max(cx - r, 0):cx + r] = 2500.0
        counts = 100 + scene * vignette + disk + rng.normal(0, 20, (n, n))
        paths.append(out / f"tile{t:02d}.tif")
        tifffile.imwrite(paths[-1], np.clip(counts, 0, 4095).astype(np.uint16),
                         photometric="minisblack")
    return paths


def best(cmd, repeat):
    """Best wall and CPU seconds (user + system of the child) of `repeat` runs."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        w = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode:
            sys.exit(f"run_preprocess.py: failed: {' '.join(map(str, cmd))}\n{r.stderr}")
        wall = min(wall, w)
        cpu = min(cpu, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tiles", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    isl = pathlib.Path(a.build) / "tools" / "isl"
    if not os.access(isl, os.X_OK):
        sys.exit(f"run_preprocess.py: {isl} not built (meson setup {a.build} && ninja -C {a.build})")
    cpu_name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name")), "unknown CPU")
    print(f"CPU: {cpu_name}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'all')}")
    print(f"{a.tiles} tiles of {a.size} x {a.size}, best of {a.repeat}")
    with tempfile.TemporaryDirectory(prefix="isl-bench-preprocess.") as d:
        d = pathlib.Path(d)
        tiles = write_tiles(d, a.size, a.tiles)
        rows = [
            ("flat-field --light fluorescence (reference)",
             [isl, "flat-field", "--input", *tiles, "--light", "fluorescence", "-o", d / "ff.tif"]),
            ("flat-field --fluorescence-dust 100",
             [isl, "flat-field", "--input", *tiles, "--fluorescence-dust", "100",
              "-o", d / "dust.tif"]),
            ("preprocess one tile (median, dust, flat field, normalize)",
             [isl, "preprocess", "--input", tiles[0], "--light", "fluorescence",
              "--dust-artifact", d / "dust.tif", "--flat-field", d / "ff.tif",
              "-o", d / "clean.tif"]),
        ]
        print(f"{'command':<58} {'wall s':>8} {'CPU s':>8} {'wall ratio':>10}")
        ref = None
        for name, cmd in rows:
            wall, cpu = best(cmd, a.repeat)
            ref = ref or wall
            print(f"{name:<58} {wall:8.2f} {cpu:8.2f} {wall / ref:10.2f}", flush=True)


if __name__ == "__main__":
    main()
