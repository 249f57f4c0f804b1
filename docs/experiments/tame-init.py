#!/usr/bin/python3
"""Tames an isl initial model: every module's reduce weights (the last convolution of its
residual branch) scaled by ALPHA, so the network starts nearer to the identity of its
residual paths (as SkipInit and Fixup do for deep residual networks).

    tame-init.py INIT.h5 OUT.h5 ALPHA

docs/training.md, "A tamed initial model". The output's checksum block is zeroed
(docs/model-format.md: a file edited with h5py fails isl's checksum otherwise); isl loads
it as a file without a checksum and seals what it writes from it.
"""
import shutil
import sys

import h5py

src, dst, alpha = sys.argv[1], sys.argv[2], float(sys.argv[3])
shutil.copyfile(src, dst)
with h5py.File(dst, "r+") as f:
    for module in f["modules"].values():
        module["reduce/weight"][...] = module["reduce/weight"][()] * alpha
# Zero the 512-byte user block holding isl's checksum record. A file another program
# wrote has no record: its HDF5 superblock starts at byte 0 and must stay.
with open(dst, "r+b") as f:
    if f.read(8) == b"ISLSUM1\0":
        f.seek(0)
        f.write(bytes(512))
