#!/bin/sh
# Issue #17's measurement: COPIES copies of the bundled model, each with 1 to 7 random
# bits flipped (seeded), loaded with `isl model info`; counts how many load, give a clean
# error (and which: damaged file / other) or crash. Run on the model as re-saved by this
# isl (with a checksum) and, for comparison, with the checksum record removed (what the
# structural validation alone catches). Figures in docs/security.md.
#
#   scripts/bitflip-check.sh [MODEL]        (default examples/data/condition-b.h5)
#   COPIES=150 SEED=17 BUILD=build          (defaults)
#
# Exits non-zero if a copy with a checksum loads or anything crashes.
set -eu
cd "$(dirname "$0")/.."
model=${1:-examples/data/condition-b.h5}
build=${BUILD:-build}
export ISL_BIN="$build/tools/isl" PYTHONPATH="$build/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
export MODEL="$model" COPIES="${COPIES:-150}" SEED="${SEED:-17}"
exec /usr/bin/python3 - <<'EOF'
import os, random, shutil, subprocess, sys, tempfile

import isl

copies, seed, isl_bin = int(os.environ["COPIES"]), int(os.environ["SEED"]), os.environ["ISL_BIN"]
work = tempfile.mkdtemp(prefix="isl-bitflip-")
try:
    sealed = os.path.join(work, "sealed.h5")
    isl.Model.load(os.environ["MODEL"]).save(sealed)  # re-saved by isl: with a checksum
    bare = os.path.join(work, "bare.h5")
    shutil.copy(sealed, bare)
    with open(bare, "r+b") as f:  # the record removed: structural validation only
        f.write(bytes(512))

    failed = False
    for name, source in (("with checksum", sealed), ("without checksum", bare)):
        data = open(source, "rb").read()
        rng = random.Random(seed)
        counts = {"loaded": 0, "damaged file": 0, "other clean error": 0, "crash": 0}
        for i in range(copies):
            copy = bytearray(data)
            for _ in range(rng.randint(1, 7)):
                bit = rng.randrange(len(copy) * 8)
                copy[bit // 8] ^= 1 << (bit % 8)
            path = os.path.join(work, "copy.h5")
            open(path, "wb").write(copy)
            r = subprocess.run([isl_bin, "model", "info", path], capture_output=True, text=True)
            if r.returncode < 0 or r.returncode > 128:
                kind = "crash"
                print(f"  copy {i}: crash ({r.returncode}): {r.stderr.strip()[-200:]}")
            elif r.returncode == 0:
                kind = "loaded"
            elif "damaged file" in r.stderr:
                kind = "damaged file"
            else:
                kind = "other clean error"
            counts[kind] += 1
        print(f"{name}: {copies} copies, 1-7 bits flipped (seed {seed}): " +
              ", ".join(f"{v} {k}" for k, v in counts.items()))
        failed |= counts["crash"] > 0 or (name == "with checksum" and counts["loaded"] > 0)
    sys.exit(1 if failed else 0)
finally:
    shutil.rmtree(work)
EOF
