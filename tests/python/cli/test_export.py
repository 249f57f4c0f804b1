"""`isl export --onnx`: the exported graph passes onnx's checker and shape inference, and an
independent evaluator of its ops (tests/oracle/onnx_torch.py, PyTorch) reproduces the golden
vectors and `isl predict`.

Run: ISL_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/cli/test_export.py -q (~20 s).
"""
import os
import sys

import h5py
import numpy as np
import pytest
import tifffile

from model_files import unseal
from .conftest import REPO_ROOT

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
sys.dont_write_bytecode = True
sys.path.insert(0, str(REPO_ROOT / "tests" / "oracle"))
import onnx_torch  # noqa: E402

# The golden input is reflect-padded as the spec says (121 before, 121 + e after), without
# the project's code: numpy's "reflect" is the spec's mirror padding.
MARGIN = 121
# The cover's prediction single-threaded: on a loaded machine OpenMP's spinning threads
# make small predictions slow (tests/python/test_cli.py).
ONE_THREAD_ENV = dict(os.environ, OMP_NUM_THREADS="1")


BINS = np.arange(256)[:, None, None]


def softmax(logits):
    """Softmax over the 256 bins (axis 0), in float64."""
    lg = logits.astype(np.float64)
    p = np.exp(lg - lg.max(0))
    return p / p.sum(0)


def export(run_isl, model, out):
    r = run_isl("export", "--model", model, "--onnx", out)
    assert r.returncode == 0, r.stderr
    return onnx.load(str(out))


def test_export_onnx_is_valid(run_isl, golden_dir, tmp_path):
    m = export(run_isl, golden_dir / "model.h5", tmp_path / "g.onnx")
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version >= 13
    ops = {n.op_type for n in m.graph.node}
    assert "BatchNormalization" not in ops  # folded
    assert [o.name for o in m.graph.output] == ["dapi_confocal", "nfh_confocal"]  # no autoencoder
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["isl.num_z"] == "13" and meta["isl.input_normalization"] == "none"
    # Shape inference with a concrete tile 266 x 282 (266 + 16m): 24 x 40 outputs.
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (1, 13, 266, 282)):
        d.dim_value = v
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
    vi = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    last = [n.output[0] for n in inferred.graph.node if n.output[0] == "dapi_confocal"][0]
    conv_in = [n for n in inferred.graph.node if n.output[0] == last][0].input[0]
    shape = [d.dim_value for d in vi[conv_in].type.tensor_type.shape.dim]
    assert shape[0] == 1 and shape[2:] == [24, 40], shape


def test_export_onnx_matches_golden_and_predict(run_isl, golden_dir, tmp_path):
    m = export(run_isl, golden_dir / "model.h5", tmp_path / "g.onnx")
    stack = tifffile.imread(golden_dir / "input.tif").astype(np.float64) / 65535
    padded = np.pad(stack, ((0, 0), (MARGIN, MARGIN), (MARGIN, MARGIN)), mode="reflect")
    torch.set_num_threads(2)
    out = onnx_torch.run(m, {"input": padded[None, :, :266, :266]}, torch.float32)
    assert out["dapi_confocal"].shape == (1, 256, 24, 24)
    with h5py.File(golden_dir / "expected.h5", "r") as f:
        patch = f["patch_0_0_logits_head0"][()]
    # The top-left 8 x 8 outputs are the patch network on the first 250 x 250 window.
    assert np.abs(out["dapi_confocal"][0, :, :8, :8] - patch).max() < 1e-3

    r = run_isl("predict", "--model", golden_dir / "model.h5", "--input", golden_dir / "input.tif",
                "--output-dir", tmp_path / "pred", "--stats", "mean,median", "--threads", 1)
    assert r.returncode == 0, r.stderr
    for head in ("dapi_confocal", "nfh_confocal"):
        p = softmax(out[head][0])
        mean = (p * BINS).sum(0) / 255
        median = np.argmax(np.cumsum(p, 0) >= 0.5, axis=0)  # bin index
        want_mean = tifffile.imread(tmp_path / "pred" / f"{head}_mean.tif")[:24, :24]
        want_median = np.rint(tifffile.imread(tmp_path / "pred" / f"{head}_median.tif")[:24, :24] * 255)
        assert np.abs(mean - want_mean).max() < 1e-4, head
        assert np.mean(median == want_median) > 0.99, head


@pytest.mark.skipif(os.environ.get("ISL_LONG_TESTS") != "1", reason="long test (ISL_LONG_TESTS=1)")
def test_export_onnx_base100_widening_residuals(run_isl, tmp_path):
    """Base 100 has in modules whose reduce output is wider than their input (the residual
    fills the first channels): a random base-100 model against `isl predict`."""
    model = tmp_path / "base100.h5"
    r = run_isl("model", "init", "--base-depth", 100, "--num-z", 13, "--heads",
                "dapi_confocal,map2_confocal,nfh_confocal", "--seed", 5, "-o", model)
    assert r.returncode == 0, r.stderr
    m = export(run_isl, model, tmp_path / "b.onnx")
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 65536, size=(13, 24, 24), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    padded = np.pad(stack / 65535, ((0, 0), (MARGIN, MARGIN), (MARGIN, MARGIN)), mode="reflect")
    # 24 + 242 = 266: one tile, outputs exactly the image.
    out = onnx_torch.run(m, {"input": padded[None]}, torch.float32)
    r = run_isl("predict", "--model", model, "--input", tmp_path / "s.tif", "--output-dir",
                tmp_path / "pred", "--stats", "mean", "--threads", 1)
    assert r.returncode == 0, r.stderr
    for head in [o.name for o in m.graph.output]:
        mean = (softmax(out[head][0]) * BINS).sum(0) / 255
        want = tifffile.imread(tmp_path / "pred" / f"{head}_mean.tif")
        assert np.abs(mean - want).max() < 1e-4, head


def test_export_errors(run_isl, tmp_path):
    r = run_isl("export", "--model", tmp_path / "missing.h5", "--onnx", tmp_path / "x.onnx")
    assert r.returncode == 1 and "missing.h5" in r.stderr
    assert not (tmp_path / "x.onnx").exists()
    r = run_isl("export", "--model", tmp_path / "missing.h5")
    assert r.returncode == 2 and "--onnx" in r.stderr
    r = run_isl("export", "--onnx", tmp_path / "x.onnx")
    assert r.returncode == 2 and "--model" in r.stderr


# ---------------------------------------------------------------------------- bioimage.io
# Required fields of a model RDF, bioimage.io model spec 0.5 (bioimageio.spec ModelDescr).
# The official JSON schema of the bioimage.io resource descriptions, generated by
# bioimageio.spec 0.5.3post4 (its model description is format_version 0.5.3, what isl writes);
# tests/data/bioimageio/README.md says where it comes from.
SCHEMA = REPO_ROOT / "tests" / "data" / "bioimageio" / "bioimageio_schema_v0-5-3post4.json"


def validate_rdf(rdf):
    """Validates against the schema's model 0.5 description (its top level is a oneOf over
    every resource type and version that jsonschema cannot narrow by format_version)."""
    jsonschema = pytest.importorskip("jsonschema")
    import json

    schema = json.loads(SCHEMA.read_text())
    model = {"$defs": schema["$defs"], "$ref": "#/$defs/bioimageio__spec__model__v0_5__ModelDescr"}
    jsonschema.Draft202012Validator(model).validate(rdf)


def test_schema_rejects_broken_rdf(run_isl, golden_dir, tmp_path):
    """The schema check can fail: a package missing a required field, or with a unit
    bioimage.io does not know, is refused."""
    jsonschema = pytest.importorskip("jsonschema")
    yaml = pytest.importorskip("yaml")
    r = run_isl("export", "--model", golden_dir / "model.h5", "--bioimageio", tmp_path / "p",
                "--sample", golden_dir / "input.tif", env=ONE_THREAD_ENV)
    assert r.returncode == 0, r.stderr
    rdf = yaml.safe_load((tmp_path / "p" / "rdf.yaml").read_text())
    validate_rdf(rdf)
    for broken in ({k: v for k, v in rdf.items() if k != "cite"},
                   dict(rdf, format_version="0.5.9")):
        with pytest.raises(jsonschema.ValidationError):
            validate_rdf(broken)
    rdf["inputs"][0]["axes"][2].update(unit="microns", scale=0.5)
    with pytest.raises(jsonschema.ValidationError):
        validate_rdf(rdf)


def with_pixel_size(src, dst, um):
    """A copy of a model with pixel_size_um set, written by h5py (docs/model-format.md:
    a model with a zeroed checksum block loads)."""
    import shutil

    shutil.copy(src, dst)
    unseal(dst)
    with h5py.File(dst, "r+") as f:
        f.attrs["pixel_size_um"] = um
    return dst


def test_export_records_pixel_size(run_isl, golden_dir, tmp_path):
    """ONNX metadata isl.pixel_size_um and the rdf's space axes (unit micrometer, scale) carry
    the model's training pixel size; a model without one has neither."""
    yaml = pytest.importorskip("yaml")
    model = with_pixel_size(golden_dir / "model.h5", tmp_path / "m.h5", 0.65)
    meta = {p.key: p.value for p in export(run_isl, model, tmp_path / "m.onnx").metadata_props}
    assert float(meta["isl.pixel_size_um"]) == 0.65
    meta = {p.key: p.value for p in export(run_isl, golden_dir / "model.h5",
                                           tmp_path / "g.onnx").metadata_props}
    assert "isl.pixel_size_um" not in meta
    r = run_isl("export", "--model", model, "--bioimageio", tmp_path / "p",
                "--sample", golden_dir / "input.tif", env=ONE_THREAD_ENV)
    assert r.returncode == 0, r.stderr
    rdf = yaml.safe_load((tmp_path / "p" / "rdf.yaml").read_text())
    validate_rdf(rdf)
    for t in rdf["inputs"] + rdf["outputs"]:
        for axis in t["axes"][2:]:
            assert axis["unit"] == "micrometer" and axis["scale"] == 0.65, (t["id"], axis)
    for axis in rdf["inputs"][0]["axes"][:2]:
        assert "unit" not in axis and "scale" not in axis


RDF_REQUIRED = ("format_version", "type", "name", "description", "authors", "cite", "license",
                "documentation", "inputs", "outputs", "weights")


def test_export_bioimageio(run_isl, golden_dir, tmp_path):
    yaml = pytest.importorskip("yaml")
    import hashlib

    from PIL import Image

    pkg = tmp_path / "pkg"
    r = run_isl("export", "--model", golden_dir / "model.h5", "--bioimageio", pkg,
                "--sample", golden_dir / "input.tif", env=ONE_THREAD_ENV)
    assert r.returncode == 0, r.stderr
    rdf = yaml.safe_load((pkg / "rdf.yaml").read_text())
    missing = [k for k in RDF_REQUIRED if k not in rdf]
    assert not missing, missing
    validate_rdf(rdf)
    for axis in rdf["inputs"][0]["axes"][2:]:
        assert "unit" not in axis and "scale" not in axis  # the golden model has no pixel size
    assert rdf["type"] == "model" and rdf["format_version"].startswith("0.5.")
    assert all("name" in a for a in rdf["authors"]) and rdf["authors"]
    assert all("text" in c and ("doi" in c or "url" in c) for c in rdf["cite"])
    assert (pkg / rdf["documentation"]).is_file()
    for cover in rdf["covers"]:
        with Image.open(pkg / cover) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            # The preview: input panel beside the predicted labels, as large as the sample.
            assert im.size == (2 * 300, 266)
    w = rdf["weights"]["onnx"]
    assert hashlib.sha256((pkg / w["source"]).read_bytes()).hexdigest() == w["sha256"]
    assert w["opset_version"] >= 13
    ids = {t["id"] for t in rdf["inputs"] + rdf["outputs"]}
    assert len(ids) == len(rdf["inputs"]) + len(rdf["outputs"])
    for t in rdf["inputs"] + rdf["outputs"]:
        assert [a["type"] for a in t["axes"]] == ["batch", "channel", "space", "space"]
        assert (pkg / t["test_tensor"]["source"]).is_file()
    assert [t["id"] for t in rdf["outputs"]] == ["dapi_confocal", "nfh_confocal"]
    assert rdf["outputs"][0]["axes"][2]["size"] == {"tensor_id": "input", "axis_id": "y", "offset": -242}
    # "none" normalization: the preprocessing only makes float32.
    assert [p["id"] for p in rdf["inputs"][0]["preprocessing"]] == ["ensure_dtype"]

    # The test input is the middle 266 x 266 of the sample, scaled to [0, 1].
    x = np.load(pkg / rdf["inputs"][0]["test_tensor"]["source"])
    stack = tifffile.imread(golden_dir / "input.tif")
    y0, x0 = (266 - 266) // 2, (300 - 266) // 2
    np.testing.assert_allclose(x[0], stack[:, y0:y0 + 266, x0:x0 + 266] / 65535, atol=1e-7)
    # Re-running the test tensors through the exported ONNX gives the test outputs.
    torch.set_num_threads(2)
    out = onnx_torch.run(onnx.load(str(pkg / w["source"])), {"input": x}, torch.float32)
    for t in rdf["outputs"]:
        want = np.load(pkg / t["test_tensor"]["source"])
        assert want.shape == (1, 256, 24, 24) and want.dtype == np.float32
        assert np.abs(out[t["id"]] - want).max() < 1e-3, t["id"]


def test_export_bioimageio_small_sample(run_isl, golden_dir, tmp_path):
    """A sample smaller than the 266 x 266 test window is mirrored as prediction pads it."""
    stack = np.random.default_rng(5).integers(0, 65536, size=(13, 150, 200), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    r = run_isl("export", "--model", golden_dir / "model.h5", "--bioimageio", tmp_path / "p",
                "--sample", tmp_path / "s.tif", env=ONE_THREAD_ENV)
    assert r.returncode == 0, r.stderr
    x = np.load(tmp_path / "p" / "test_input.npy")
    # numpy's reflect padding centred: 58 rows before, 58 after; 33 columns before and after.
    want = np.pad(stack / 65535, ((0, 0), (58, 58), (33, 33)), mode="reflect")
    np.testing.assert_allclose(x[0], want, atol=1e-7)


def test_export_bioimageio_errors(run_isl, golden_dir, tmp_path):
    r = run_isl("export", "--model", golden_dir / "model.h5", "--bioimageio", tmp_path / "p")
    assert r.returncode == 2 and "--sample" in r.stderr
    assert not (tmp_path / "p").exists()
    wrong = tmp_path / "wrong.tif"
    tifffile.imwrite(wrong, np.zeros((5, 300, 300), np.uint16))
    r = run_isl("export", "--model", golden_dir / "model.h5", "--bioimageio", tmp_path / "p",
                "--sample", wrong)
    assert r.returncode == 1 and "wrong.tif" in r.stderr


# ---------------------------------------------------------------------------- OME-TIFF
def test_predict_ome_tiff(run_isl, small_model, tmp_path):
    """OME-XML of the input is read (pixel size, channel) and the predictions come back as
    one OME-TIFF with a named channel per (head, statistic), equal to the per-image TIFFs."""
    stack = np.random.default_rng(2).integers(0, 65536, size=(13, 40, 50), dtype=np.uint16)
    src = tmp_path / "in.ome.tif"
    tifffile.imwrite(src, stack, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.65,
                                                     "PhysicalSizeY": 0.65,
                                                     "Channel": {"Name": "phase"}})
    out = tmp_path / "out"
    r = run_isl("predict", "--model", small_model, "--input", src, "--output-dir", out,
                "--stats", "median,entropy", "--heads", "dapi_confocal,autoencoder",
                "--format", "ome-tiff", "--threads", 1)
    assert r.returncode == 0, r.stderr
    assert "pixel size 0.65 x 0.65 um" in r.stderr and "'phase'" in r.stderr
    with tifffile.TiffFile(out / "predictions.ome.tif") as tf:
        assert tf.is_ome and not tf.is_bigtiff
        meta = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]
        names = [c["Name"] for c in meta["Channel"]]
        data = tf.series[0].asarray()
    assert names == ["dapi_confocal_median", "dapi_confocal_entropy"] + \
        [f"autoencoder_{s}_z{z:02d}" for s in ("median", "entropy") for z in range(13)]
    assert meta["PhysicalSizeX"] == 0.65 and meta["SizeC"] == 28
    assert data.shape == (28, 40, 50) and data.dtype == np.float32
    np.testing.assert_array_equal(data[1], tifffile.imread(out / "dapi_confocal_entropy.tif"))
    np.testing.assert_array_equal(data[2:15], tifffile.imread(out / "autoencoder_median.tif"))


def test_predict_ome_tiff_bigtiff_and_errors(run_isl, small_model, tmp_path):
    stack = np.random.default_rng(2).integers(0, 65536, size=(13, 30, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    env = dict(os.environ, ISL_OME_BIGTIFF_BYTES="1000")  # 30 x 30 x 4 bytes is over it
    r = run_isl("predict", "--model", small_model, "--input", tmp_path / "s.tif", "--output-dir",
                tmp_path / "o", "--heads", "nfh_confocal", "--format", "ome-tiff", "--threads", 1,
                env=env)
    assert r.returncode == 0, r.stderr
    with tifffile.TiffFile(tmp_path / "o" / "predictions.ome.tif") as tf:
        assert tf.is_bigtiff and tf.is_ome
        np.testing.assert_array_equal(tf.series[0].asarray(),
                                      tifffile.imread(tmp_path / "o" / "nfh_confocal_median.tif"))
    r = run_isl("predict", "--model", small_model, "--input", tmp_path / "s.tif", "--output-dir",
                tmp_path / "o", "--format", "png")
    assert r.returncode == 2 and "ome-tiff" in r.stderr
    # Two channels interleaved with the z planes: not one z-stack.
    two = np.zeros((13, 2, 30, 30), np.uint16)
    tifffile.imwrite(tmp_path / "two.ome.tif", two, ome=True, metadata={"axes": "ZCYX"})
    r = run_isl("predict", "--model", small_model, "--input", tmp_path / "two.ome.tif",
                "--output-dir", tmp_path / "o2")
    assert r.returncode == 1 and "2 channels" in r.stderr
