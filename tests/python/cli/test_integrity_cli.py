"""Damaged, crafted and hostile files through the command line (docs/security.md).

Files written by isl carry a checksum that is verified before HDF5 parses them; files
without one are validated structurally: no soft or external links, no external storage,
no filters but those isl writes, stored sizes that can hold what the file claims. Sizes
claimed by files are capped before allocating: every crafted file here runs under a 1 GB
address-space limit and must fail with a clear message, not run out of memory.
"""
import os
import resource
import shutil
import struct
import subprocess

import h5py
import numpy as np
import pytest
import tifffile

from model_files import unseal

ADDRESS_LIMIT = 1 << 30  # 1 GiB: isl must refuse the claims below without allocating them


def limited():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_LIMIT, ADDRESS_LIMIT))


def assert_clean_error(r, *needles):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("isl: error: ") and r.stderr.count("\n") == 1, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


@pytest.fixture(scope="module")
def tiny_model(run_isl, tmp_path_factory):
    path = tmp_path_factory.mktemp("integrity") / "tiny.h5"
    r = run_isl("model", "init", "--base-depth", 8, "--num-z", 3, "--heads", "dapi_confocal",
                "-o", path)
    assert r.returncode == 0, r.stderr
    return path


def test_info_reports_the_checksum(run_isl, tiny_model, tmp_path):
    r = run_isl("model", "info", tiny_model)
    assert r.returncode == 0, r.stderr
    assert "checksum:            verified (xxh3-128)\n" in r.stdout
    assert '"checksum": "xxh3-128"}' in run_isl("model", "info", "--json", tiny_model).stdout

    plain = tmp_path / "plain.h5"
    shutil.copy(tiny_model, plain)
    unseal(plain, require_record=True)
    r = run_isl("model", "info", plain)
    assert r.returncode == 0, r.stderr
    assert "checksum:            none (file not written by isl >= 0.7)\n" in r.stdout
    assert '"checksum": null}' in run_isl("model", "info", "--json", plain).stdout


def test_isl_writes_fixed_size_strings(tiny_model):
    with h5py.File(tiny_model, "r") as f:
        assert f.userblock_size == 512
        for obj, name in ((f, "format"), (f, "heads"), (f, "input_normalization"),
                          (f["modules/000"], "kind")):
            info = h5py.check_string_dtype(obj.attrs.get_id(name).dtype)
            assert info is not None and info.length is not None, name


def test_damaged_model_names_file_expected_and_found(run_isl, tiny_model, tmp_path):
    data = bytearray(tiny_model.read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(data))
    r = run_isl("model", "info", bad)
    assert_clean_error(r, str(bad), "damaged file", "checksum mismatch (expected ", ", found ")
    bad.write_bytes(tiny_model.read_bytes()[:-1000])
    assert_clean_error(run_isl("model", "info", bad), "damaged file", "truncated",
                       f"expected {len(data) - 512} bytes")


def _move_aside(f, path):
    """Keeps a dataset's data under another name and frees its own name."""
    f.move(path, path + "_real")
    return f[path + "_real"]


def edit_external_link(f, tmp_path):
    real = _move_aside(f, "projection/bias")
    with h5py.File(tmp_path / "other.h5", "w") as o:
        o["bias"] = real[()]
    f["projection/bias"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/bias")


def edit_soft_link(f, tmp_path):
    _move_aside(f, "projection/bias")
    f["projection/bias"] = h5py.SoftLink("/projection/bias_real")


def edit_soft_link_group(f, tmp_path):
    f.move("projection", "projection_real")
    f["projection"] = h5py.SoftLink("/projection_real")


def _recreate(f, path, **kw):
    data = f[path][()]
    del f[path]
    f.create_dataset(path, data=data, **kw)


def edit_gzip(f, tmp_path):
    _recreate(f, "projection/weight", compression="gzip", chunks=True)


def edit_lzf(f, tmp_path):
    _recreate(f, "projection/weight", compression="lzf", chunks=True)


def edit_external_storage(f, tmp_path):
    data = f["projection/bias"][()].astype("<f4")
    raw = tmp_path / "bias.raw"
    raw.write_bytes(data.tobytes())
    del f["projection/bias"]
    f.create_dataset("projection/bias", shape=data.shape, dtype="<f4",
                     external=[(str(raw), 0, data.nbytes)])


def edit_unwritten(f, tmp_path):
    shape = f["projection/weight"].shape
    del f["projection/weight"]
    f.create_dataset("projection/weight", shape=shape, dtype="<f4")  # never written


def edit_huge_claims(f, tmp_path):
    f.attrs["base_depth"] = 4096
    f.attrs["num_z"] = 1024


@pytest.mark.parametrize("edit, needles", [
    (edit_external_link, ["/projection/bias: is a soft or external link"]),
    (edit_soft_link, ["/projection/bias: is a soft or external link"]),
    (edit_soft_link_group, ["/projection", "soft or external link"]),
    (edit_gzip, ["/projection/weight: is stored with filter 1 (deflate)", "unfiltered"]),
    (edit_lzf, ["/projection/weight: is stored with filter 32000 (a plugin filter)"]),
    (edit_external_storage, ["/projection/bias: keeps its data in external files"]),
    (edit_unwritten, ["/projection/weight: stores 0 bytes of its"]),
    (edit_huge_claims, ["need", "parameters; a file of", "cannot hold them"]),
])
def test_crafted_models_are_refused(run_isl, tiny_model, tmp_path, edit, needles):
    path = tmp_path / "crafted.h5"
    shutil.copy(tiny_model, path)
    unseal(path, require_record=True)
    with h5py.File(path, "r+") as f:
        edit(f, tmp_path)
    assert_clean_error(run_isl("model", "info", path, preexec_fn=limited), str(path), *needles)


def test_variable_length_strings_of_older_files_still_load(run_isl, tiny_model, tmp_path):
    """h5py and isl < 0.7 write variable-length strings: read for compatibility."""
    path = tmp_path / "vlen.h5"
    shutil.copy(tiny_model, path)
    unseal(path, require_record=True)
    with h5py.File(path, "r+") as f:
        f.attrs["format"] = "isl-model"
        f.attrs["heads"] = ["dapi_confocal", "autoencoder"]
        assert h5py.check_string_dtype(f.attrs.get_id("format").dtype).length is None
    r = run_isl("model", "info", path)
    assert r.returncode == 0, r.stderr
    assert "dapi_confocal" in r.stdout and "checksum:            none" in r.stdout


def vlen_model(tiny_model, path, userblock=0):
    """tiny_model copied by h5py with variable-length string attributes (h5py's default),
    optionally behind a user block (heap addresses are then relative to byte 512)."""
    with h5py.File(tiny_model, "r") as src, h5py.File(path, "w", userblock_size=userblock) as f:
        for name in src:
            src.copy(name, f)
        for name, value in src.attrs.items():
            f.attrs[name] = value
        f.attrs["format"] = "isl-model"
        f.attrs["heads"] = ["dapi_confocal", "autoencoder"]
        assert h5py.check_string_dtype(f.attrs.get_id("heads").dtype).length is None
    return path


def test_variable_length_strings_behind_a_user_block(run_isl, tiny_model, tmp_path):
    path = vlen_model(tiny_model, tmp_path / "ub.h5", userblock=512)
    r = run_isl("model", "info", path)
    assert r.returncode == 0, r.stderr
    assert "dapi_confocal" in r.stdout and "checksum:            none" in r.stdout


def damage_heap_object(data, text, offset, value, size):
    """Overwrites a field of the global-heap object holding `text` (HDF5 format spec, 8-byte
    lengths: index 2 bytes, reference count 2, reserved 4, object size 8, then the data)."""
    at = data.index(text)
    assert data[at - 8:at] == struct.pack("<Q", len(text))  # the object size: found it
    data[at - 16 + offset:at - 16 + offset + size] = value.to_bytes(size, "little")


@pytest.mark.parametrize("damage,problem", [
    (lambda d: damage_heap_object(d, b"isl-model", 8, 1 << 40, 8),
     "heap object extends past its collection"),
    (lambda d: damage_heap_object(d, b"isl-model", 8, 4, 8), "string longer than its heap object"),
    (lambda d: damage_heap_object(d, b"isl-model", 0, 999, 2), "heap object not found"),
    (lambda d: d.__setitem__(slice(d.index(b"GCOL"), d.index(b"GCOL") + 4), b"XXXX"),
     "no heap collection at its address"),
    (lambda d: d.__setitem__(slice(d.index(b"GCOL") + 8, d.index(b"GCOL") + 16),
                             struct.pack("<Q", 1 << 40)), "collection size out of range"),
])
def test_damaged_global_heap_gives_a_clean_error(run_isl, tiny_model, tmp_path, damage, problem):
    """The crash of issue #17: HDF5 1.10.8 follows a damaged global-heap reference of a
    variable-length string into a SIGSEGV, a hang or a wild memcpy; isl reads the heap
    itself and refuses the file."""
    path = vlen_model(tiny_model, tmp_path / "vlen.h5")
    data = bytearray(path.read_bytes())
    damage(data)
    path.write_bytes(bytes(data))
    r = run_isl("model", "info", path, preexec_fn=limited, timeout=60)
    assert_clean_error(r, "damaged variable-length string", problem)


@pytest.fixture(scope="module")
def small_dataset(run_isl, tmp_path_factory):
    d = tmp_path_factory.mktemp("integrity-ds")
    rng = np.random.default_rng(3)
    tifffile.imwrite(d / "w.tif", rng.integers(0, 65536, (3, 30, 40), dtype=np.uint16),
                     photometric="minisblack")
    tifffile.imwrite(d / "dapi.tif", rng.integers(0, 65536, (30, 40), dtype=np.uint16))
    out = d / "data.h5"
    r = run_isl("dataset", "build", "--input", d / "w.tif", "--target", f"dapi={d / 'dapi.tif'}",
                "-o", out)
    assert r.returncode == 0, r.stderr
    return out


def test_damaged_dataset(run_isl, small_dataset, tmp_path):
    data = bytearray(small_dataset.read_bytes())
    data[-5] ^= 1
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(data))
    assert_clean_error(run_isl("dataset", "info", bad), "damaged file", "checksum mismatch")


def test_dataset_claiming_huge_wells_is_refused(run_isl, small_dataset, tmp_path):
    """A 3 x 30000 x 30000 float32 stack (10.8 GB) of which no chunk is stored: a forged
    chunk index, refused before the stack is allocated."""
    path = tmp_path / "huge.h5"
    shutil.copy(small_dataset, path)
    unseal(path, require_record=True)
    with h5py.File(path, "r+") as f:
        del f["wells/000/stack"]
        f.create_dataset("wells/000/stack", shape=(3, 30000, 30000), dtype="<f4",
                         chunks=(1, 1000, 1000), compression="gzip")
    r = run_isl("dataset", "info", path, preexec_fn=limited)
    assert_clean_error(r, "/wells/000/stack: 0 stored bytes cannot decode to 10800000000")


def tiff_bytes(pages, width, height, bits=16, compression=1, strip_bytes=None, shared=False,
               data_len=None):
    """A little-endian classic TIFF whose directories claim pages of width x height, each
    with one strip of strip_bytes bytes (default: what the page needs), one after the other
    or all at the same offset (shared); data_len bytes of zeros follow the directories
    (default: all the strips)."""
    count = width * height * bits // 8 if strip_bytes is None else strip_bytes
    tags = 9
    ifd_size = 2 + tags * 12 + 4
    data_offset = 8 + pages * ifd_size
    out = bytearray(b"II*\0" + struct.pack("<I", 8))
    for p in range(pages):
        offset = data_offset + (0 if shared else p * count)
        nxt = 8 + (p + 1) * ifd_size if p + 1 < pages else 0
        entries = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, compression),
                   (262, 3, 1), (273, 4, offset), (277, 3, 1), (278, 4, height),
                   (279, 4, count)]
        out += struct.pack("<H", tags)
        for tag, typ, value in entries:
            out += struct.pack("<HHII", tag, typ, 1, value)
        out += struct.pack("<I", nxt)
    out += bytes(count * (1 if shared else pages) if data_len is None else data_len)
    return bytes(out)


@pytest.mark.parametrize("kw, needles", [
    # A 40000 x 40000 deflate page (3.2 GB) from a 100-byte strip.
    (dict(pages=1, width=40000, height=40000, compression=8, strip_bytes=100),
     ["page 1: 100 stored bytes cannot hold a 40000x40000 page"]),
    # Sides beyond 65536.
    (dict(pages=1, width=70000, height=10, strip_bytes=10),
     ["page 1 is 70000x10 pixels; supported are sides up to 65536"]),
    # 4097 pages.
    (dict(pages=4097, width=1, height=1, bits=8),
     ["has 4097 pages; at most 4096 are supported"]),
    # 40 uncompressed 8000 x 8000 pages all pointing at the same 128 MB "strip" (the file
    # has 1 MB): more image data claimed than the file holds.
    (dict(pages=40, width=8000, height=8000, shared=True, data_len=1 << 20),
     ["claim", "bytes of image data; the file has"]),
])
def test_tiff_claiming_huge_stacks_is_refused(run_isl, tmp_path, kw, needles):
    path = tmp_path / "claims.tif"
    path.write_bytes(tiff_bytes(**kw))
    assert path.stat().st_size <= 2 << 20
    r = run_isl("dataset", "build", "--input", path, "-o", tmp_path / "out.h5",
                preexec_fn=limited)
    assert_clean_error(r, str(path), *needles)
    assert not (tmp_path / "out.h5").exists()


PLUGIN_SOURCE = r"""
#include <stdio.h>
__attribute__((constructor)) static void mark(void)
{
    FILE *f = fopen(MARKER, "w");
    if (f)
        fclose(f);
}
int H5PLget_plugin_type(void) { return 0; }
const void *H5PLget_plugin_info(void) { return 0; }
"""


def test_filter_plugins_are_never_loaded(run_isl, tiny_model, small_dataset, tmp_path):
    """A plugin directory holding a library that leaves a marker when loaded: HDF5 would
    load it to decode an unknown filter (lzf here); isl refuses the dataset first."""
    cc = shutil.which("cc")
    if not cc:
        pytest.skip("no C compiler to build the fake plugin")
    plugins, marker = tmp_path / "plugins", tmp_path / "LOADED"
    plugins.mkdir()
    (tmp_path / "plugin.c").write_text(PLUGIN_SOURCE)
    subprocess.run([cc, "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o",
                    plugins / "libmarker.so", tmp_path / "plugin.c"], check=True)
    env = dict(os.environ, HDF5_PLUGIN_PATH=str(plugins))
    zeros = np.zeros((3, 30, 40), np.uint16)  # compressible: lzf really filters it
    for source, path, command in ((tiny_model, "projection/weight", "model"),
                                  (small_dataset, "wells/000/stack", "dataset")):
        crafted = tmp_path / f"{command}.h5"
        shutil.copy(source, crafted)
        unseal(crafted, require_record=True)
        with h5py.File(crafted, "r+") as f:
            data = f[path][()] * 0 if command == "model" else zeros
            del f[path]
            f.create_dataset(path, data=data, compression="lzf")
        r = run_isl(command, "info", crafted, env=env)
        assert_clean_error(r, f"/{path}: is stored with filter 32000 (a plugin filter)")
        assert not marker.exists(), f"isl {command} info loaded a filter plugin"
