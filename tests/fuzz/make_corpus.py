#!/usr/bin/python3
"""Regenerates the seed corpora of the fuzz harnesses (tests/fuzz/corpus/<harness>/).

    tests/fuzz/make_corpus.py BUILD_DIR     (needs BUILD_DIR/tools/isl; h5py, tifffile, PIL)

TIFF stacks (tifffile, and PIL for LZW/PackBits): 8/16-bit and float32, multi-page,
strips and tiles, deflate (with and without predictor), LZW, PackBits, BigTIFF,
big-endian, plus files the reader must refuse (RGB, int32, pages of two sizes,
truncated). Models: a complete base-5 model whose weights are HDF5 fill values (so the
file holds only metadata, 0.4 MB instead of 3.5 MB for the file isl writes), header-only
models with the attribute variants other writers produce, and damaged copies. Datasets:
files written by `isl dataset build`, h5py-written variants and damaged copies.
Deterministic: the same inputs every run. Keeps the whole corpus well under 2 MB.
"""
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import tifffile
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
RNG = np.random.default_rng(17)


def out_dir(harness):
    d = os.path.join(HERE, "corpus", harness)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def flipped(data, seed, bits):
    """data with `bits` random bits flipped (deterministic per seed)."""
    r = random.Random(seed)
    b = bytearray(data)
    for _ in range(bits):
        i = r.randrange(len(b))
        b[i] ^= 1 << r.randrange(8)
    return bytes(b)


def write(d, name, data):
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- TIFF stacks -------------------------------------------------------------------


def tiff_bytes(array, **kw):
    kw.setdefault("photometric", "minisblack")
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kw)
    return buf.getvalue()


def pil_pages(arrays, mode, compression):
    buf = io.BytesIO()
    pages = [Image.fromarray(a, mode=mode) if mode else Image.fromarray(a) for a in arrays]
    pages[0].save(buf, format="TIFF", compression=compression, save_all=True,
                  append_images=pages[1:])
    return buf.getvalue()


def tiff_corpus():
    d = out_dir("tiff_stack")
    u8 = RNG.integers(0, 256, (3, 8, 7), dtype=np.uint8)
    u16 = RNG.integers(0, 65536, (2, 12, 10), dtype=np.uint16)
    f32 = RNG.random((2, 9, 11), dtype=np.float32)
    seeds = {
        "u8_3pages.tif": tiff_bytes(u8),
        "u16_deflate.tif": tiff_bytes(u16, compression="zlib"),
        "u16_deflate_predictor.tif": tiff_bytes(u16, compression="zlib", predictor=True),
        "f32_2pages.tif": tiff_bytes(f32),
        "u16_tiled_deflate.tif": tiff_bytes(RNG.integers(0, 65536, (2, 40, 36), dtype=np.uint16),
                                            tile=(16, 16), compression="zlib"),
        "u8_tiled.tif": tiff_bytes(RNG.integers(0, 256, (1, 20, 33), dtype=np.uint8),
                                   tile=(16, 16)),
        "f32_tiled.tif": tiff_bytes(RNG.random((2, 17, 17), dtype=np.float32), tile=(16, 16)),
        "u16_rowsperstrip3.tif": tiff_bytes(u16, rowsperstrip=3),
        "u16_bigtiff.tif": tiff_bytes(u16, bigtiff=True),
        "u16_bigendian.tif": tiff_bytes(u16, byteorder=">"),
        "u8_lzw.tif": pil_pages(list(u8), None, "tiff_lzw"),
        "u16_lzw.tif": pil_pages(list(u16), "I;16", "tiff_lzw"),
        "u8_packbits.tif": pil_pages(list(u8), None, "packbits"),
        "f32_lzw.tif": pil_pages(list(f32), "F", "tiff_lzw"),
        # Refused: RGB, signed 32-bit, pages of two sizes, two sample formats.
        "rgb8.tif": tiff_bytes(RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8),
                               photometric="rgb"),
        "int32.tif": tiff_bytes(RNG.integers(0, 9, (4, 4), dtype=np.int32)),
    }
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as w:
        w.write(u8[0], photometric="minisblack")
        w.write(RNG.integers(0, 256, (5, 5), dtype=np.uint8), photometric="minisblack")
    seeds["two_sizes.tif"] = buf.getvalue()
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as w:
        w.write(u8[0], photometric="minisblack")
        w.write(u16[0, :8, :7], photometric="minisblack")
    seeds["two_formats.tif"] = buf.getvalue()
    seeds["truncated.tif"] = seeds["u16_deflate.tif"][:-40]
    seeds["flipped.tif"] = flipped(seeds["u16_tiled_deflate.tif"], 1, 8)
    for name, data in seeds.items():
        write(d, name, data)


# ---- models ------------------------------------------------------------------------


def copy_attrs(src, dst):
    for k, v in src.attrs.items():
        dst.attrs[k] = v


def metadata_model(src, path, libver):
    """src's groups and attributes; datasets of the same shapes holding only fill values
    (var 1, everything else 0): a valid model that is mostly metadata."""
    with h5py.File(path, "w", libver=libver) as dst:
        copy_attrs(src, dst)

        def visit(name, obj):
            if isinstance(obj, h5py.Group):
                copy_attrs(obj, dst.require_group(name))
            else:
                dst.create_dataset(name, shape=obj.shape, dtype=obj.dtype,
                                   fillvalue=1.0 if name.endswith("/var") else 0.0)

        src.visititems(visit)


def header_model(path, libver="latest", **override):
    """Root attributes of a base-5 model (override replaces or, with None, drops one),
    and empty /modules and /heads groups: the loader stops at the first missing module."""
    attrs = {"format": "isl-model", "format_version": 1, "base_depth": 5, "num_z": 1,
             "heads": np.array(["dapi_confocal", "autoencoder"], dtype=object),
             "input_normalization": "none", "num_classes": 256, "projection_depth": 16}
    attrs.update(override)
    with h5py.File(path, "w", libver=libver) as f:
        for k, v in attrs.items():
            if v is not None:
                f.attrs[k] = v
        f.create_group("modules")
        f.create_group("heads")


def model_corpus(isl, tmp):
    d = out_dir("model_load")
    written = os.path.join(tmp, "m5.h5")
    subprocess.run([isl, "model", "init", "--base-depth", "5", "--num-z", "1", "--heads",
                    "dapi_confocal", "-o", written], check=True, stdout=subprocess.DEVNULL)
    with h5py.File(written, "r") as src:
        metadata_model(src, os.path.join(d, "valid_base5.h5"), "latest")
    valid = open(os.path.join(d, "valid_base5.h5"), "rb").read()
    write(d, "valid_base5_flipped.h5", flipped(valid, 2, 6))
    # The start of a file isl wrote: superblock, root group and attributes, then cut off.
    write(d, "isl_written_truncated.h5", open(written, "rb").read()[:24576])
    fixed = np.array([b"dapi_confocal", b"autoencoder"], dtype="S16")
    variants = {
        "header.h5": {},
        "header_earliest.h5": {"libver": "earliest"},
        "header_fixed_strings.h5": {"heads": fixed, "format": np.bytes_(b"isl-model")},
        "header_scalar_heads.h5": {"heads": "dapi_confocal"},
        "header_no_heads.h5": {"heads": None},
        "header_version2.h5": {"format_version": 2},
        "header_float_depth.h5": {"base_depth": 5.5},
        "header_huge_depth.h5": {"base_depth": 1 << 40},
        "header_bad_head.h5": {"heads": np.array(["a/b", "autoencoder"], dtype=object)},
        "header_global.h5": {"input_normalization": "global", "num_z": 3},
    }
    for name, override in variants.items():
        libver = override.pop("libver", "latest")
        header_model(os.path.join(d, name), libver, **override)
    write(d, "empty.h5", b"")
    write(d, "not_hdf5.h5", b"\x89HDF\r\n\x1a\n" + bytes(64))


# ---- datasets ----------------------------------------------------------------------


def dataset_corpus(isl, tmp):
    d = out_dir("dataset_load")

    def tif(name, array):
        p = os.path.join(tmp, name)
        tifffile.imwrite(p, array, photometric="minisblack")
        return p

    stack8 = tif("s8.tif", RNG.integers(0, 256, (2, 6, 5), dtype=np.uint8))
    stackf = tif("sf.tif", RNG.random((2, 7, 4), dtype=np.float32))
    target = tif("t.tif", RNG.integers(0, 65536, (4, 3), dtype=np.uint16))
    mask = tif("m.tif", (RNG.random((4, 3)) > 0.5).astype(np.uint8))
    target2 = tif("t2.tif", RNG.integers(0, 256, (7, 4), dtype=np.uint8))
    builds = {
        "one_well.h5": ["--input", stack8, "--target", "dapi_confocal=" + target + ":1,2"],
        "two_wells.h5": ["--input", stack8, "--well", "A", "--condition", "B",
                         "--pixel-size", "0.5", "--target", "dapi_confocal=" + target,
                         "--mask", "dapi_confocal=" + mask,
                         "--input", stackf, "--well", "B",
                         "--target", "map2_confocal=" + target2],
        "no_labels.h5": ["--input", stackf],
    }
    for name, args in builds.items():
        subprocess.run([isl, "dataset", "build", *args, "-o", os.path.join(d, name)],
                       check=True, stdout=subprocess.DEVNULL)
    one = open(os.path.join(d, "one_well.h5"), "rb").read()
    write(d, "one_well_flipped.h5", flipped(one, 3, 4))
    write(d, "one_well_truncated.h5", one[: len(one) // 2])
    # h5py-written variants (contiguous, uncompressed; fixed-length strings).
    with h5py.File(os.path.join(d, "h5py_written.h5"), "w", libver="latest") as f:
        f.attrs["format"] = np.bytes_(b"isl-dataset")
        f.attrs["version"] = 1
        f.attrs["num_z"] = 1
        f.attrs["labels"] = np.array([b"dapi_confocal"], dtype="S16")
        w = f.create_group("wells/000")
        w.attrs["name"] = "w"
        w.attrs["condition"] = ""
        w.attrs["pixel_size_um"] = 0.0
        w["stack"] = RNG.integers(0, 65536, (1, 5, 4), dtype=np.uint16)
        lab = w.create_group("labels/dapi_confocal")
        lab["values"] = RNG.random((5, 4), dtype=np.float32)
        lab["mask"] = np.ones((5, 4), dtype=np.uint8)
    with h5py.File(os.path.join(d, "wrong_shape.h5"), "w", libver="latest") as f:
        f.attrs["format"] = "isl-dataset"
        f.attrs["version"] = 1
        f.attrs["num_z"] = 2
        f.attrs["labels"] = np.array([], dtype=h5py.string_dtype())
        f["wells/000/stack"] = np.zeros((1, 5, 4), dtype=np.float32)
        f["wells/000"].attrs["name"] = "w"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_corpus.py BUILD_DIR")
    isl = os.path.join(sys.argv[1], "tools", "isl")
    with tempfile.TemporaryDirectory() as tmp:
        tiff_corpus()
        model_corpus(isl, tmp)
        dataset_corpus(isl, tmp)
    total = sum(os.path.getsize(os.path.join(r, f))
                for r, _, fs in os.walk(os.path.join(HERE, "corpus")) for f in fs)
    print(f"corpus: {total:,} bytes")


if __name__ == "__main__":
    main()
