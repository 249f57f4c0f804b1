"""Tests of the Python and Java bindings, the examples and the binding docs.

    /usr/bin/python3 -m pytest -q tests/python/bindings/test_bindings.py

ISL_BUILD_DIR selects the build (default <source>/build); see conftest.py.
"""
import gc
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from .conftest import (  # noqa: F401  (fixtures)
    BUILD_DIR,
    EXAMPLES_BUILD_DIR,
    LABEL_HEADS,
    PYTHON_PACKAGE_DIR,
    SMALL_SHAPE,
    SOURCE_DIR,
    THREADS,
    bindings_tmp,
    golden,
    golden_model,
    islpy,
    java_tools,
    python_env,
    run,
    small_model,
    small_model_file,
    small_prediction,
    small_stack,
    small_stack_file,
)


def softmax(logits, axis=0):
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def median_agreement(a, b):
    return float(np.mean(np.abs(a - b) < 1e-6))


# ------------------------------------------------------------------------------------
# The package follows the header


def test_version_and_constants(islpy):
    from isl import _capi

    assert islpy.__version__ == _capi.isl_version_string() == islpy.version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", islpy.__version__)
    major, minor, patch = map(int, islpy.__version__.split("."))
    assert _capi.isl_version_number() == major * 10000 + minor * 100 + patch
    assert islpy.STATS == ("median", "mean", "mode", "std", "entropy", "p_nonzero")
    assert islpy.format_version() >= 1


def test_every_header_function_is_bound(islpy):
    """Each function of isl.h is wrapped by SWIG or replaced by a helper of isl.i."""
    from isl import _capi

    header = (SOURCE_DIR / "include" / "isl.h").read_text()
    functions = set(re.findall(r"ISL_API\s+[^;(]*?\b(isl_\w+)\s*\(", header))
    assert len(functions) > 30
    replaced = {
        "isl_model_config_init": "_model_create",
        "isl_model_create": "_model_create",
        "isl_model_add_heads": "_model_add_heads",
        "isl_predict_options_set_progress": "_predict_image",
        "isl_predict_options_set_ensemble": "_predict_options_set_ensemble",
        "isl_predict_tile": "_predict_tile",
        "isl_predict_image": "_predict_image",
        "isl_predict_image_rows": "_predict_image_rows",
        "isl_stats": "_stats",
        "isl_uncertain_mask": "_uncertain_mask",
        "isl_uncertainty_summary": "_uncertainty_summary",
        "isl_train_step": "_train_step",
        "isl_trainer_estimate_bn": "_trainer_estimate_bn",
        "isl_eval_pearson": "_eval_pearson",
        "isl_eval_heatmap": "_eval_heatmap",
        "isl_eval_otsu": "_eval_otsu",
        "isl_eval_segment_nuclei": "_eval_segment_nuclei",
        "isl_eval_object_errors": "_eval_object_errors",
        "isl_eval_object_radii": "_eval_object_radii",
        "isl_eval_ks_2samp": "_eval_ks_2samp",
        "isl_eval_error_image": "_eval_error_image",
        "isl_eval_map_image": "_eval_map_image",
        "isl_median5_until_stable": "_median5",
        "isl_downscale2": "_downscale2",
        "isl_flat_field_estimate": "_flat_field",
        "isl_flat_field_apply": "_flat_field_apply",
        "isl_dust_fluorescence_estimate": "_fluorescence_dust",
        "isl_dust_fluorescence_remove": "_fluorescence_dust_remove",
        "isl_normalize": "_normalize",
        "isl_normalize_light": "_normalize",
        "isl_stitch_pair_offset": "_stitch_pair_offset",
        "isl_stitch_solve": "_stitch_solve",
        "isl_stitch_canvas_size": "_stitch_blend",
        "isl_stitch_blend": "_stitch_blend",
    }
    missing = sorted(f for f in functions if f not in replaced and not hasattr(_capi, f))
    assert not missing, "functions of isl.h missing from the bindings: %s" % missing
    assert all(hasattr(_capi, helper) for helper in replaced.values())
    # Status codes: the Python enum and the exception classes match the C enum.
    c_codes = {name[len("ISL_ERROR_"):]: getattr(_capi, name)
               for name in dir(_capi) if name.startswith("ISL_ERROR_")}
    c_codes["OK"] = _capi.ISL_OK
    assert c_codes == {s.name: int(s) for s in islpy.Status}
    for status in islpy.Status:
        if status != islpy.Status.OK:
            cls = islpy._errors.error_class(status)
            assert cls.status == status and issubclass(cls, islpy.IslError)


# ------------------------------------------------------------------------------------
# Numbers


def test_golden_prediction(golden, golden_model):
    """Mean within 1e-4 and median equal at >= 99.9% of the pixels (README of the vectors)."""
    out = golden_model.predict(golden.stack, stats=("mean", "median"), threads=THREADS)
    assert set(out) == set(LABEL_HEADS)
    for head in LABEL_HEADS:
        mean, median = out[head]["mean"], out[head]["median"]
        assert mean.shape == median.shape == (266, 300) and mean.dtype == np.float32
        err = np.abs(mean - golden.expected[head + "/mean"]).max()
        assert err <= 1e-4, "%s/mean max error %g" % (head, err)
        agree = median_agreement(median, golden.expected[head + "/median"])
        assert agree >= 0.999, "%s/median agrees at %.4f%% of pixels" % (head, 100 * agree)


def test_stats_match_numpy(islpy):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (256, 5, 7)).astype(np.float32)
    p = softmax(logits.astype(np.float64))
    k = np.arange(256).reshape(256, 1, 1) / 255
    mean = (p * k).sum(0)
    std = np.sqrt((p * (k - mean) ** 2).sum(0))
    median = np.argmax(np.cumsum(p, 0) >= 0.5, axis=0) / 255
    entropy = -(p * np.log(p)).sum(0) / np.log(256)
    assert np.allclose(islpy.stats(logits, "mean"), mean, atol=1e-5)
    assert np.allclose(islpy.stats(logits, "std"), std, atol=1e-5)
    assert np.allclose(islpy.stats(logits, "entropy"), entropy, atol=1e-5)
    assert np.allclose(islpy.stats(logits, "mode"), np.argmax(p, 0) / 255)
    assert np.allclose(islpy.stats(logits, "p_nonzero"), 1 - p[0], atol=1e-5)
    assert median_agreement(islpy.stats(logits, "median"), median) >= 0.97
    assert islpy.stats(logits[:, 0, 0].tolist(), 1).shape == ()  # lists, stat by index
    with pytest.raises(islpy.InvalidArgumentError):
        islpy.stats(logits, "average")


def test_uncertain_mask_and_summary(islpy, small_model, small_stack):
    """uncertain_mask is std > threshold (NaN uncertain);
    uncertainty_summary prints each head's share of it, as isl predict --preview does."""
    assert islpy.UNCERTAIN_STD == pytest.approx(0.15)
    rng = np.random.default_rng(2)
    std = rng.uniform(0, 0.3, (9, 11)).astype(np.float32)
    std[0, 0] = np.nan
    for threshold in (islpy.UNCERTAIN_STD, float(np.median(std[1:]))):
        got = islpy.uncertain_mask(std, threshold)
        want = ~(std <= np.float32(threshold))
        assert got.dtype == bool and got.shape == std.shape
        assert np.array_equal(got, want) and 0 < got.sum() < got.size
    assert np.array_equal(islpy.uncertain_mask(std.astype(np.float64).T), islpy.uncertain_mask(std).T)
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(islpy.InvalidArgumentError):
            islpy.uncertain_mask(std, bad)

    out = small_model.predict(small_stack, stats=("median", "std"), threads=THREADS)
    shares = {h: 100 * np.mean(out[h]["std"] > 0.15) for h in out}
    want = ", ".join("%s %.1f%%" % (h, shares[h]) for h in out)
    assert islpy.uncertainty_summary(out) == (
        "uncertain (predicted std > 0.15): %s of the field" % want)
    with pytest.raises(islpy.InvalidArgumentError):
        islpy.uncertainty_summary({h: {"median": v["median"]} for h, v in out.items()})


def test_input_types_agree(small_model, small_stack, small_prediction):
    """uint16, float32 (same values) and non-contiguous input give the same prediction."""
    ref = small_prediction["dapi_confocal"]["mean"]
    as_float = small_model.predict(small_stack.astype(np.float32) / 65535, stats="mean",
                                   threads=THREADS)
    assert np.abs(as_float["dapi_confocal"]["mean"] - ref).max() < 1e-4
    fortran = np.asfortranarray(small_stack)
    out = small_model.predict(fortran, stats="mean", threads=THREADS)
    assert np.array_equal(out["dapi_confocal"]["mean"], ref)
    as_u8 = (small_stack >> 8).astype(np.uint8)
    u8 = small_model.predict(as_u8, stats="mean", threads=THREADS)["dapi_confocal"]["mean"]
    f = small_model.predict(as_u8.astype(np.float32) / 255, stats="mean", threads=THREADS)
    f = f["dapi_confocal"]["mean"]
    assert np.abs(u8 - f).max() < 1e-4


def test_stack_is_not_copied(islpy, small_stack):
    assert islpy._as_stack(small_stack) is small_stack
    assert islpy._as_stack(small_stack.astype(np.float32)).dtype == np.float32
    assert islpy._as_stack(small_stack.astype(np.float64)).dtype == np.float32


def test_predict_outputs(islpy, small_model, small_stack, small_prediction):
    z, h, w = small_stack.shape
    out = small_model.predict(small_stack, stats=islpy.STATS, heads=["nfh_confocal", "autoencoder"],
                              threads=THREADS)
    assert list(out) == ["nfh_confocal", "autoencoder"]
    assert list(out["nfh_confocal"]) == list(islpy.STATS)
    for stat, image in out["nfh_confocal"].items():
        assert image.shape == (h, w) and image.dtype == np.float32, stat
        assert np.all((image >= 0) & (image <= 1)), stat
    for stat, image in out["autoencoder"].items():
        assert image.shape == (z, h, w), stat
    assert np.allclose(out["nfh_confocal"]["median"] * 255, np.round(out["nfh_confocal"]["median"] * 255))
    # The same head alone, by index, gives the same numbers.
    alone = small_model.predict(small_stack, stats=("median", "mean"), heads=1, threads=THREADS)
    assert np.array_equal(alone["nfh_confocal"]["mean"], small_prediction["nfh_confocal"]["mean"])


def test_tile_size_does_not_change_results(small_model, small_stack, small_prediction):
    tiled = small_model.predict(small_stack, stats="mean", tile=266, threads=THREADS)
    assert np.abs(tiled["dapi_confocal"]["mean"] - small_prediction["dapi_confocal"]["mean"]).max() < 1e-5


def test_predict_rows_matches_predict(small_model, small_stack, small_prediction):
    images = {head: np.full(small_stack.shape[1:], np.nan, np.float32) for head in LABEL_HEADS}
    calls = []

    def rows(head, stat, y0, data):
        assert stat == "mean"
        calls.append((head, y0, data.shape))
        images[head][y0:y0 + data.shape[0]] = data

    small_model.predict_rows(small_stack, rows, stats="mean", tile=266, threads=THREADS)
    assert len(calls) >= 2
    for head in LABEL_HEADS:
        assert np.abs(images[head] - small_prediction[head]["mean"]).max() < 1e-5


def test_predict_tile(islpy, small_model, small_stack, small_prediction):
    """predict_tile on the padded stack reproduces predict (whose numbers the golden test checks)."""
    # The padding of the spec: reflect 121 pixels (24 + 242 = 266 and 40 + 242 = 282 are
    # already 250 + 16 m, so nothing more at the bottom and right).
    tile = np.pad(small_stack.astype(np.float32) / 65535, ((0, 0), (121, 121), (121, 121)),
                  mode="reflect")
    assert tile.shape == (13, 266, 282)
    logits = small_model.predict_tile(tile, threads=THREADS)
    assert set(logits) == set(LABEL_HEADS)
    assert logits["dapi_confocal"].shape == (256, 24, 40)
    for head in LABEL_HEADS:
        mean = islpy.stats(logits[head], "mean")
        assert np.abs(mean - small_prediction[head]["mean"]).max() < 1e-5
    probs = small_model.predict_tile(tile, probabilities=True, heads=["dapi_confocal", "autoencoder"],
                                     threads=THREADS)
    assert list(probs) == ["dapi_confocal", "autoencoder"]
    assert probs["autoencoder"].shape == (13 * 256, 24, 40)
    p = probs["dapi_confocal"]
    assert np.all(p >= 0)
    assert np.abs(p.sum(axis=0) - 1).max() < 1e-4
    assert np.abs(softmax(logits["dapi_confocal"]) - p).max() < 1e-5
    sums = probs["autoencoder"].reshape(13, 256, 24, 40).sum(axis=1)
    assert np.abs(sums - 1).max() < 1e-4


def test_ensemble_averages_the_members(islpy, small_model, small_stack, small_prediction):
    """ensemble=: the mean distribution of independently created models. Oracles: each
    model alone; the mixture's mean is the members' mean, its median lies between theirs."""
    with islpy.Model.create(base_depth=8, num_z=13, heads=("extra", "dapi_confocal"),
                            seed=4) as other:
        mixed = small_model.predict(small_stack, stats=("mean", "median", "p_nonzero"),
                                    heads="dapi_confocal", threads=THREADS, ensemble=[other])
        alone = other.predict(small_stack, stats=("mean", "median", "p_nonzero"),
                              heads="dapi_confocal", threads=THREADS)["dapi_confocal"]
        own = small_model.predict(small_stack, stats=("median", "p_nonzero"),
                                  heads="dapi_confocal", threads=THREADS)["dapi_confocal"]
        own["mean"] = small_prediction["dapi_confocal"]["mean"]
        got = mixed["dapi_confocal"]
        assert np.abs(alone["mean"] - own["mean"]).max() > 0.01  # the members differ
        for stat in ("mean", "p_nonzero"):
            assert np.abs(got[stat] - (own[stat] + alone[stat]) / 2).max() < 1e-5
        lo = np.minimum(own["median"], alone["median"])
        hi = np.maximum(own["median"], alone["median"])
        assert np.all((got["median"] >= lo) & (got["median"] <= hi))

        rows = np.full(small_stack.shape[1:], np.nan, np.float32)

        def sink(head, stat, y0, data):
            rows[y0:y0 + data.shape[0]] = data

        small_model.predict_rows(small_stack, sink, stats="mean", heads="dapi_confocal",
                                 tile=266, threads=THREADS, ensemble=(other,))
        assert np.abs(rows - got["mean"]).max() < 1e-5

        tile = np.pad(small_stack.astype(np.float32) / 65535, ((0, 0), (121, 121), (121, 121)),
                      mode="reflect")
        probs = [m.predict_tile(tile, probabilities=True, heads="dapi_confocal",
                                threads=THREADS)["dapi_confocal"] for m in (small_model, other)]
        logits = small_model.predict_tile(tile, heads="dapi_confocal", threads=THREADS,
                                          ensemble=[other])["dapi_confocal"]
        assert np.abs(softmax(logits) - (probs[0] + probs[1]) / 2).max() < 1e-5

        with pytest.raises(islpy.InvalidArgumentError, match="no head 'nfh_confocal'"):
            small_model.predict(small_stack, threads=THREADS, ensemble=[other])
        with pytest.raises(islpy.InvalidArgumentError, match="isl.Model"):
            small_model.predict(small_stack, threads=THREADS, ensemble=["model.h5"])
        with pytest.raises(islpy.InvalidArgumentError, match="at most 15"):
            small_model.predict(small_stack, threads=THREADS, ensemble=[other] * 16)
    with islpy.Model.create(base_depth=8, num_z=3, heads=["dapi_confocal"]) as planes:
        with pytest.raises(islpy.ShapeError, match="3 z planes"):
            small_model.predict(small_stack, threads=THREADS, ensemble=[planes])
    with pytest.raises(islpy.ClosedModelError):
        small_model.predict(small_stack, threads=THREADS, ensemble=[other])


def _mirror(a, flip):
    """Mirror image `flip` (bit 0: left-right, bit 1: up-down) of the last two axes."""
    if flip & 1:
        a = a[..., ::-1]
    if flip & 2:
        a = a[..., ::-1, :]
    return np.ascontiguousarray(a)


def test_flip_average_is_the_mixture_of_mirror_images(islpy, small_model):
    """flip_average=: the mean distribution over the stack's four mirror images. Oracle: the
    models predicting mirror images made here; rows of 8 + 16 m keep each pixel's phase of
    the network's stride 16 when the whole image is mirrored, as the library mirrors tiles."""
    stack = np.random.default_rng(5).integers(0, 65536, size=(13, 40, 56), dtype=np.uint16)
    stats = ("mean", "median", "p_nonzero")
    with islpy.Model.create(base_depth=8, num_z=13, heads=("extra", "dapi_confocal"),
                            seed=4) as other:
        views = []
        for model in (small_model, other):
            for flip in range(4):
                got = model.predict(_mirror(stack, flip), stats=stats, heads="dapi_confocal",
                                    threads=THREADS)["dapi_confocal"]
                views.append({k: _mirror(v, flip) for k, v in got.items()})
        assert np.abs(views[1]["mean"] - views[0]["mean"]).max() > 0.01  # not symmetric

        def check(got, members):
            for stat in ("mean", "p_nonzero"):
                want = np.mean([v[stat] for v in members], axis=0)
                assert np.abs(got[stat] - want).max() < 1e-5
            medians = np.array([v["median"] for v in members])
            assert np.all((got["median"] >= medians.min(0)) & (got["median"] <= medians.max(0)))

        flipped = small_model.predict(stack, stats=stats, heads="dapi_confocal", threads=THREADS,
                                      flip_average=True)["dapi_confocal"]
        check(flipped, views[:4])
        both = small_model.predict(stack, stats=stats, heads="dapi_confocal", threads=THREADS,
                                   flip_average=True, ensemble=[other])["dapi_confocal"]
        check(both, views)

        rows = np.full(stack.shape[1:], np.nan, np.float32)

        def sink(head, stat, y0, data):
            rows[y0:y0 + data.shape[0]] = data

        small_model.predict_rows(stack, sink, stats="mean", heads="dapi_confocal", tile=266,
                                 threads=THREADS, flip_average=True)
        assert np.abs(rows - flipped["mean"]).max() < 1e-5

        tile = np.random.default_rng(6).random((13, 266, 282), dtype=np.float32)
        probs = [_mirror(small_model.predict_tile(_mirror(tile, f), probabilities=True,
                                                  heads="dapi_confocal",
                                                  threads=THREADS)["dapi_confocal"], f)
                 for f in range(4)]
        logits = small_model.predict_tile(tile, heads="dapi_confocal", threads=THREADS,
                                          flip_average=True)["dapi_confocal"]
        assert np.abs(softmax(logits) - np.mean(probs, axis=0)).max() < 1e-5


def test_raw_camera_values_warn(islpy, small_model, small_stack):
    """A model without input normalization warns (UnusualInputWarning, as isl predict) when
    the stack's plane means lie outside [0.2, 0.8] of [0, 1] (a 12-bit camera's raw values);
    the prediction is still returned. Preprocessed stacks and global models do not warn."""
    import warnings as w

    raw = np.ascontiguousarray(small_stack // 16)
    means = raw.reshape(13, -1).mean(axis=1) / 65535
    with pytest.warns(islpy.UnusualInputWarning, match=f"means {means.min():.3g} to "):
        out = small_model.predict(raw, threads=THREADS)
    assert out["dapi_confocal"]["median"].shape == raw.shape[1:]
    with pytest.warns(islpy.UnusualInputWarning):
        small_model.predict_rows(raw, lambda *a: None, threads=THREADS)
    with pytest.warns(islpy.UnusualInputWarning):  # float32 values are used as they are
        small_model.predict(raw.astype(np.float32) / 65535, threads=THREADS)
    with w.catch_warnings():
        w.simplefilter("error")
        small_model.predict(small_stack, threads=THREADS)
        with islpy.Model.create(base_depth=8, num_z=13, heads="dapi_confocal",
                                input_normalization="global") as glob:
            glob.predict(raw, threads=THREADS)


def test_model_properties_save_load(islpy, small_model, small_model_file, small_stack,
                                    small_prediction):
    assert small_model.heads == LABEL_HEADS + ("autoencoder",)
    assert small_model.label_heads == LABEL_HEADS
    assert (small_model.num_z, small_model.base_depth) == (13, 16)
    assert small_model.input_normalization == "none"
    assert small_model.parameter_count > 0
    assert small_model.head_channels("autoencoder") == 13 * 256
    assert small_model.head_channels(0) == 256
    assert "base_depth=16" in repr(small_model)
    with islpy.Model.load(str(small_model_file)) as loaded:
        assert loaded.heads == small_model.heads
        assert loaded.parameter_count == small_model.parameter_count
        out = loaded.predict(small_stack, stats="mean", threads=THREADS)
    assert np.array_equal(out["dapi_confocal"]["mean"], small_prediction["dapi_confocal"]["mean"])
    assert loaded.closed and loaded.heads == small_model.heads  # readable after close
    with islpy.Model.create(base_depth=8, num_z=3, heads=["a"], input_normalization="global") as m:
        assert m.input_normalization == "global" and m.heads == ("a", "autoencoder")
    with pytest.raises(TypeError):
        islpy.Model(None)
    with pytest.raises(TypeError):
        pickle.dumps(small_model)


# ------------------------------------------------------------------------------------
# Errors


def test_missing_file_raises_io_error(islpy, bindings_tmp):
    with pytest.raises(islpy.IslIOError) as e:
        islpy.Model.load(bindings_tmp / "missing.h5")
    assert e.value.status == islpy.Status.IO
    assert "missing.h5" in str(e.value)
    assert isinstance(e.value, OSError)
    with pytest.raises(islpy.IslIOError):
        islpy.Model.load(bindings_tmp)  # a directory


def test_corrupt_files_raise_format_error(islpy, bindings_tmp, small_model_file):
    garbage = bindings_tmp / "garbage.h5"
    garbage.write_bytes(b"this is not an HDF5 file" * 10)
    truncated = bindings_tmp / "truncated.h5"
    truncated.write_bytes(small_model_file.read_bytes()[:50000])
    with pytest.raises(islpy.FormatError) as e:
        islpy.Model.load(garbage)
    assert e.value.status == islpy.Status.FORMAT and str(garbage) in str(e.value)
    # A file isl wrote carries a checksum: cut short, it is a damaged file (still a
    # FormatError for callers that catch that).
    with pytest.raises(islpy.DamagedFileError) as e:
        islpy.Model.load(truncated)
    assert e.value.status == islpy.Status.DAMAGED and str(truncated) in str(e.value)
    assert isinstance(e.value, islpy.FormatError) and "truncated" in str(e.value)


def test_prediction_errors(islpy, small_model, small_stack):
    with pytest.raises(islpy.ShapeError) as e:
        small_model.predict(small_stack[:12])
    assert e.value.status == islpy.Status.SHAPE and "13" in str(e.value)
    with pytest.raises(islpy.ShapeError):
        small_model.predict(small_stack[0])
    bad = small_stack.astype(np.float32) / 65535
    bad[3, 5, 7] = np.nan
    with pytest.raises(islpy.InvalidValueError) as e:
        small_model.predict(bad)
    assert e.value.status == islpy.Status.VALUE and "not finite" in str(e.value)
    with pytest.raises(islpy.InvalidValueError):
        small_model.predict(small_stack.astype(np.float32))  # floats outside [0, 1]
    with pytest.raises(islpy.InvalidArgumentError):
        small_model.predict(small_stack, stats="average")
    with pytest.raises(islpy.InvalidArgumentError):
        small_model.predict(small_stack, heads="gfp")
    with pytest.raises(islpy.InvalidArgumentError):
        small_model.predict(small_stack, tile=251)
    with pytest.raises(islpy.InvalidArgumentError):
        small_model.predict(small_stack, precision="fp64")
    with pytest.raises(TypeError):
        small_model.predict(small_stack.astype(np.int32))
    with pytest.raises(islpy.InvalidArgumentError):
        islpy.Model.create(base_depth=2)
    with pytest.raises(islpy.InvalidArgumentError):
        islpy.Model.create(base_depth=8, heads=["autoencoder"])


def test_bad_tiles(islpy, small_model):
    with pytest.raises(islpy.ShapeError) as e:
        small_model.predict_tile(np.zeros((13, 251, 250), np.float32))
    assert "250 + 16m" in str(e.value)
    with pytest.raises(islpy.ShapeError):
        small_model.predict_tile(np.zeros((12, 250, 250), np.float32))
    with pytest.raises(islpy.ShapeError):
        small_model.predict_tile(np.zeros((250, 250), np.float32))
    nan = np.zeros((13, 250, 250), np.float32)
    nan[0, 0, 0] = np.inf
    with pytest.raises(islpy.InvalidValueError):
        small_model.predict_tile(nan)
    with pytest.raises(islpy.ShapeError):
        islpy.stats(np.zeros((1, 4), np.float32), "mean")


def test_closed_model(islpy, small_model_file, small_stack):
    model = islpy.Model.load(small_model_file)
    model.close()
    model.close()  # idempotent
    assert model.closed and "closed" in repr(model)
    for call in (lambda: model.predict(small_stack), lambda: model.save("x.h5"),
                 lambda: model.predict_tile(np.zeros((13, 250, 250), np.float32))):
        with pytest.raises(islpy.ClosedModelError, match="closed"):
            call()
    assert issubclass(islpy.ClosedModelError, islpy.InvalidArgumentError)


def test_errors_pickle(islpy):
    e = islpy.ShapeError("bad shape")
    copy = pickle.loads(pickle.dumps(e))
    assert type(copy) is islpy.ShapeError and copy.status == islpy.Status.SHAPE
    assert str(copy) == "bad shape"
    io = pickle.loads(pickle.dumps(islpy.IslIOError("x: cannot open")))
    assert isinstance(io, OSError) and str(io) == "x: cannot open"


# ------------------------------------------------------------------------------------
# Progress, cancellation, threads


def test_progress_and_cancellation(islpy, small_model, small_stack):
    seen = []
    small_model.predict(small_stack, tile=266, threads=THREADS,
                        progress=lambda d, t: seen.append((d, t)))
    assert len(seen) >= 2 and seen[-1][0] == seen[-1][1] == len(seen)

    calls = []

    def cancel(done, total):
        calls.append(done)
        return True

    with pytest.raises(islpy.CancelledError) as e:
        small_model.predict(small_stack, tile=266, threads=THREADS, progress=cancel)
    assert e.value.status == islpy.Status.CANCELLED and calls == [1]

    # Only True cancels; other return values continue.
    small_model.predict(small_stack, tile=266, threads=THREADS, progress=lambda d, t: 1)

    def fails(done, total):
        raise ZeroDivisionError("from the callback")

    with pytest.raises(ZeroDivisionError, match="from the callback"):
        small_model.predict(small_stack, tile=266, threads=THREADS, progress=fails)

    stop = threading.Event()
    stop.set()
    with pytest.raises(islpy.CancelledError):
        small_model.predict(small_stack, threads=THREADS, cancel=stop)

    def stop_rows(head, stat, y0, rows):
        return True

    with pytest.raises(islpy.CancelledError):
        small_model.predict_rows(small_stack, stop_rows, threads=THREADS)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals are delivered to the main thread")
def test_sigint_cancels_prediction(small_model, small_stack):
    stack = np.ascontiguousarray(np.tile(small_stack, (1, 3, 3)))  # 72 x 120: 15 tiles of 266
    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
        seen = []
        with pytest.raises(Interrupted):
            timer.start()
            # The signal arrives while predicting.
            small_model.predict(stack, tile=266, threads=1,
                                progress=lambda d, t: seen.append(d) or time.sleep(0.02))
        assert len(seen) < 15
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)


def test_gil_is_released(small_model, small_stack, small_prediction):
    """A Python thread keeps running while another thread is inside a prediction."""
    stack = small_stack  # one tile, whose plan small_prediction has already created
    times = {}

    def predict():
        times["start"] = time.perf_counter()
        small_model.predict(stack, threads=1)
        times["end"] = time.perf_counter()

    worker = threading.Thread(target=predict)
    ticks = []
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
    worker.join()
    duration = times["end"] - times["start"]
    inside = [t for t in ticks if times["start"] <= t <= times["end"]]
    gaps = np.diff([times["start"]] + inside + [times["end"]])
    # With the GIL held, this thread would stall for the whole C call.
    assert len(inside) > 100, "main thread ran %d times during %.2f s" % (len(inside), duration)
    assert gaps.max() < 0.5 * duration, "main thread stalled %.3f of %.3f s" % (gaps.max(), duration)


def test_concurrent_predictions(small_model, small_stack, small_prediction):
    results, errors = [None] * 3, []

    def work(i):
        try:
            results[i] = small_model.predict(small_stack, stats=("median", "mean"), threads=1)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        for head in LABEL_HEADS:
            assert np.abs(r[head]["mean"] - small_prediction[head]["mean"]).max() < 1e-5


def test_close_waits_for_running_prediction(islpy, small_model_file, small_stack):
    model = islpy.Model.load(small_model_file)
    started = threading.Event()
    result = {}

    def progress(done, total):
        started.set()
        time.sleep(0.05)

    def work():
        result["out"] = model.predict(small_stack, tile=266, threads=THREADS, progress=progress)

    t = threading.Thread(target=work)
    t.start()
    started.wait(60)
    model.close()  # the prediction keeps the C model alive until it returns
    t.join()
    assert result["out"]["dapi_confocal"]["median"].shape == small_stack.shape[1:]
    with pytest.raises(islpy.ClosedModelError):
        model.predict(small_stack)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_repeated_load_free_does_not_leak(islpy, small_model_file):
    for _ in range(5):
        islpy.Model.load(small_model_file).close()
    gc.collect()
    before = rss_bytes()
    for i in range(50):
        if i % 2:
            with islpy.Model.load(small_model_file):
                pass
        else:
            islpy.Model.load(small_model_file)  # freed by the garbage collector
    gc.collect()
    growth = rss_bytes() - before
    assert growth < 4 << 20, "RSS grew by %.1f MB over 50 loads" % (growth / 2**20)


def test_repeated_predictions_do_not_leak(small_model, small_stack, small_prediction):
    def both():
        small_model.predict(small_stack, stats=("median", "mean"), threads=THREADS)
        small_model.predict_tile(np.zeros((13, 266, 282), np.float32), threads=THREADS)

    for _ in range(3):
        both()
    gc.collect()
    before = rss_bytes()
    for _ in range(10):
        both()
    gc.collect()
    growth = rss_bytes() - before
    assert growth < 4 << 20, "RSS grew by %.1f MB over 10 predictions" % (growth / 2**20)


# ------------------------------------------------------------------------------------
# Examples and docs


def test_python_example(small_model_file, small_stack_file, small_prediction, bindings_tmp):
    import tifffile
    from PIL import Image

    prefix = bindings_tmp / "py-example"
    z, h, w = SMALL_SHAPE
    result = run([sys.executable, SOURCE_DIR / "examples" / "predict.py", small_model_file,
                  small_stack_file, prefix, "--stats", "median,mean", "--crop", 0, 0, h, w],
                 env=python_env())
    assert "overlay.png" in result.stdout
    png = Image.open(str(prefix) + "_overlay.png")
    assert png.mode == "RGB" and png.size == (w, h)
    for head in LABEL_HEADS:
        mean = tifffile.imread(str(prefix) + "_%s_mean.tif" % head)
        assert np.array_equal(mean, small_prediction[head]["mean"])


@pytest.mark.parametrize("script", ["predict.py", "agreement.py", "cv_report.py",
                                    "validation_figure.py", "whole_field_figure.py"])
def test_examples_find_isl_of_the_source_tree(islpy, script, bindings_tmp):
    """Without PYTHONPATH, an example run from a source tree imports the isl of build/
    (examples/_isl_path.py)."""
    if PYTHON_PACKAGE_DIR != (SOURCE_DIR / "build" / "bindings" / "python").resolve():
        pytest.skip("the build directory is not <source>/build, where the examples look")
    env = {k: v for k, v in python_env().items() if k != "PYTHONPATH"}
    installed = subprocess.run([sys.executable, "-c", "import isl"], env=env,
                               cwd=bindings_tmp, capture_output=True)
    if installed.returncode == 0:
        pytest.skip("an installed isl is importable: the examples would not need build/")
    result = run([sys.executable, SOURCE_DIR / "examples" / script, "--help"], env=env,
                 cwd=bindings_tmp)
    assert result.stdout.startswith("usage: %s" % script)


def test_c_example(small_model_file, small_stack_file, small_prediction, bindings_tmp):
    import tifffile

    exe = EXAMPLES_BUILD_DIR / "predict_tiff"
    if not exe.exists():
        pytest.skip("examples/predict_tiff not built")
    prefix = bindings_tmp / "c-example"
    run([exe, small_model_file, small_stack_file, prefix])
    for head in LABEL_HEADS:
        mean = tifffile.imread(str(prefix) + "_%s_mean.tif" % head)
        median = tifffile.imread(str(prefix) + "_%s_median.tif" % head)
        assert mean.dtype == np.float32 and mean.shape == SMALL_SHAPE[1:]
        assert np.abs(mean - small_prediction[head]["mean"]).max() < 1e-5
        assert median_agreement(median, small_prediction[head]["median"]) >= 0.99
    usage = subprocess.run([str(exe)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
    missing = subprocess.run([str(exe), str(bindings_tmp / "none.h5"), str(small_stack_file),
                              str(prefix)], capture_output=True, text=True)
    assert missing.returncode == 1 and "cannot open" in missing.stderr


def python_blocks(markdown):
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_python_docs(small_model_file, small_stack_file, bindings_tmp):
    """Runs every Python snippet of docs/python.md, in order, as one script."""
    blocks = python_blocks((SOURCE_DIR / "docs" / "python.md").read_text())
    assert len(blocks) >= 6
    work = bindings_tmp / "python-docs"
    work.mkdir()
    shutil.copy(small_model_file, work / "model.h5")
    shutil.copy(small_stack_file, work / "stack.tif")
    (work / "snippets.py").write_text("\n".join(blocks))
    result = run([sys.executable, "snippets.py"], cwd=work, env=python_env())
    assert "cancelled:" in result.stdout
    assert "the input has 5 z planes but the model needs 13" in result.stdout
    assert (work / "new-model.h5").exists()
    # "Training": the same calls as test_trainer_* above
    assert "3 ['autoencoder', 'dapi_confocal', 'label', 'total']" in result.stdout
    assert (work / "checkpoint.h5").exists()


def java_compile(java_tools, sources, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    run([java_tools.javac, "-Xlint:all", "-cp", java_tools.jar, "-d", out_dir] + list(sources))


def java_run(java_tools, classes, main, args, cwd=None):
    return run([java_tools.java, "-cp", "%s%s%s" % (java_tools.jar, os.pathsep, classes),
                java_tools.library_path, main] + [str(a) for a in args], cwd=cwd)


def test_java_bindings(java_tools, golden, bindings_tmp):
    """tests/java/TestPredict.java: its own checks, and its golden prediction here."""
    classes = bindings_tmp / "java-test"
    java_compile(java_tools, [SOURCE_DIR / "tests" / "java" / "TestPredict.java"], classes)
    z, h, w = golden.stack.shape
    raw = bindings_tmp / "golden-u16.raw"
    golden.stack.astype("<u2").tofile(raw)
    out = bindings_tmp / "java-golden.raw"
    result = java_run(java_tools, classes, "TestPredict",
                      [golden.model, raw, z, h, w, out, bindings_tmp])
    assert "all Java checks passed" in result.stdout
    images = np.fromfile(out, dtype="<f4").reshape(len(LABEL_HEADS), 2, h, w)
    for i, head in enumerate(LABEL_HEADS):
        err = np.abs(images[i, 0] - golden.expected[head + "/mean"]).max()
        assert err <= 1e-4, "Java %s/mean max error %g" % (head, err)
        agree = median_agreement(images[i, 1], golden.expected[head + "/median"])
        assert agree >= 0.999, "Java %s/median agrees at %.4f" % (head, agree)


def test_java_pixel_size(java_tools, bindings_tmp):
    """tests/java/TestPixelSize.java: get/set, an unset size, and the files it saves."""
    import h5py

    work = bindings_tmp / "java-pixel-size"
    work.mkdir(exist_ok=True)
    classes = bindings_tmp / "java-pixel-size-classes"
    java_compile(java_tools, [SOURCE_DIR / "tests" / "java" / "TestPixelSize.java"], classes)
    out = java_run(java_tools, classes, "TestPixelSize", [work]).stdout
    assert "all Java pixel size checks passed" in out
    with h5py.File(work / "unset.h5", "r") as f:
        assert "pixel_size_um" not in f.attrs
    with h5py.File(work / "set.h5", "r") as f:
        assert f.attrs["pixel_size_um"] == 0.65


def test_java_preprocess(java_tools, bindings_tmp, islpy):
    """tests/java/TestPreprocess.java (org.isl.Preprocess) against scipy/numpy, and its
    fluorescence dust against a disk added by construction and the Python binding."""
    import scipy.ndimage as ndi

    work = bindings_tmp / "java-preprocess"
    work.mkdir(exist_ok=True)
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:37, 0:41]
    stair = (1000 + 10 * np.floor((x + 2 * y) / 6.0)).astype(np.float32)  # converges
    stair[rng.random(stair.shape) < 0.03] = 5000
    stack = rng.uniform(500, 1500, (5, 64, 48)).astype(np.float32)
    stair.astype("<f4").tofile(work / "staircase.raw")
    stack.astype("<f4").tofile(work / "stack.raw")
    # Fluorescence dust: offset 100, a background of 1000 with noise, and a disk of +300
    # counts of radius 10 at (20, 30) in every image (the iterated 5 x 5 median erases
    # disks of radius 6 and less); a background blur of 24 (the default, h / 16, is for
    # 2048-pixel fields: here it would follow the disk).
    yy, xx = np.mgrid[0:48, 0:64]
    disk = np.where((yy - 20) ** 2 + (xx - 30) ** 2 <= 100, 300.0, 0.0)
    dusty = (100 + 1000 + rng.uniform(-20, 20, (16, 48, 64)) + disk).astype(np.float32)
    dusty.astype("<f4").tofile(work / "dusty.raw")
    classes = bindings_tmp / "java-preprocess-classes"
    java_compile(java_tools, [SOURCE_DIR / "tests" / "java" / "TestPreprocess.java"], classes)
    out = java_run(java_tools, classes, "TestPreprocess", [work]).stdout

    def got(name, shape):
        return np.fromfile(work / ("java-%s.raw" % name), dtype="<f4").reshape(shape)

    ref = stair.copy()
    for n in range(32):
        nxt = ndi.median_filter(ref, size=5, mode="reflect")
        if np.array_equal(nxt, ref):
            break
        ref = nxt
    assert 1 <= n and "passes %d" % n in out
    np.testing.assert_array_equal(got("median", stair.shape), ref)
    np.testing.assert_allclose(got("downscale", (18, 20)),
                               stair[:36, :40].reshape(18, 2, 20, 2).mean((1, 3)), rtol=1e-6)
    med = np.median(stack.astype(np.float64), axis=0)
    blurred = ndi.gaussian_filter(med, 64 / 32, mode="reflect", truncate=4.0)
    field = blurred / blurred.mean()
    np.testing.assert_allclose(got("flat-field", med.shape), field, rtol=2e-6)
    np.testing.assert_allclose(got("dust", med.shape), med / med.mean(), rtol=2e-6)
    np.testing.assert_allclose(got("corrected", med.shape), stack[0] / field, rtol=1e-5)
    norm = got("normalized", med.shape).astype(np.float64)
    want = np.clip((stack[0] - stack[0].mean()) / stack[0].std() * 0.125 + 0.25, 0, 1)
    np.testing.assert_allclose(norm, want, atol=1e-6)
    assert "sigma 64.0" in out
    artifact = got("fdust", (48, 64))
    on, near = disk > 0, (yy - 20) ** 2 + (xx - 30) ** 2 <= 13 ** 2  # grown by a 5 x 5 square
    assert np.all(np.abs(artifact[on] - 300) < 15), artifact[on].min()
    assert np.all(artifact[~near] == 0)
    py_artifact, py_pixels = islpy.preprocess.fluorescence_dust(dusty, 100.0, 0.1, 24.0)
    np.testing.assert_array_equal(artifact, py_artifact)
    assert "dust pixels %d" % py_pixels in out and py_pixels >= on.sum()
    np.testing.assert_array_equal(got("fdust-removed", (48, 64)), dusty[0] - artifact)
    errors = [line for line in out.splitlines() if line.startswith("error ")]
    assert errors[0].startswith("error SHAPE") and "not 40 x 41" in errors[0], errors
    assert errors[1].startswith("error VALUE"), errors
    assert errors[2].startswith("error VALUE") and "not finite" in errors[2], errors
    assert errors[3].startswith("error VALUE") and "offset" in errors[3], errors


def test_java_example(java_tools, small_model_file, small_stack_file, small_prediction,
                      bindings_tmp):
    from PIL import Image

    classes = bindings_tmp / "java-example"
    java_compile(java_tools, [SOURCE_DIR / "examples" / "Predict.java"], classes)
    prefix = bindings_tmp / "java-example-out"
    java_run(java_tools, classes, "Predict", [small_model_file, small_stack_file, prefix])
    for head in LABEL_HEADS:
        png = np.asarray(Image.open(str(prefix) + "_%s_median.png" % head)).astype(np.float64)
        assert png.shape == SMALL_SHAPE[1:]
        expected = small_prediction[head]["median"] * 65535
        assert np.mean(np.abs(png - expected) <= 258) >= 0.99  # one of 255 levels


def test_java_docs(java_tools, small_model_file, small_stack, bindings_tmp):
    """Compiles and runs each complete program (first line // Name.java) of docs/java.md."""
    markdown = (SOURCE_DIR / "docs" / "java.md").read_text()
    programs = re.findall(r"^```java\n// (\w+)\.java\n(.*?)^```", markdown, flags=re.S | re.M)
    assert programs
    work = bindings_tmp / "java-docs"
    work.mkdir()
    shutil.copy(small_model_file, work / "model.h5")
    small_stack.astype("<u2").tofile(work / "stack.raw")
    for name, code in programs:
        (work / (name + ".java")).write_text(code)
        java_compile(java_tools, [work / (name + ".java")], work)
        z, h, w = small_stack.shape
        result = java_run(java_tools, work, name, ["model.h5", "stack.raw", z, h, w], cwd=work)
        assert "SHAPE: the input has 12 z planes" in result.stdout
        assert "IO: missing.h5" in result.stdout


# ------------------------------------------------------------------------------------
# ABI


def test_abi_symbols():
    """scripts/check-abi.sh: the exports match abi/isl.symbols and the ISL_API declarations
    (and, for a build with debug info, abidiff finds no change against abi/libisl.abi)."""
    if not (BUILD_DIR / "lib" / "libisl.so").exists():
        pytest.skip("libisl.so not built")
    result = subprocess.run(["bash", str(SOURCE_DIR / "scripts" / "check-abi.sh"), str(BUILD_DIR)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exported symbols match" in result.stdout


# ------------------------------------------------------------------------------------
# Training (isl.Trainer): tiny models, one 250 crop, one thread


def train_batch(heads=1, seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.random((1, 2, 250, 250), dtype=np.float32)
    targets = rng.random((1, heads, 8, 8), dtype=np.float32)
    return inputs, targets


def tiny_model(islpy, heads=("dapi_confocal",)):
    return islpy.Model.create(base_depth=8, num_z=2, heads=list(heads), seed=3)


def test_trainer_loss_decreases(islpy):
    inputs, targets = train_batch()
    with tiny_model(islpy) as model, \
            islpy.Trainer(model, learning_rate=1e-3, threads=THREADS) as trainer:
        assert trainer.label_heads == ("dapi_confocal",) and trainer.num_z == 2
        assert trainer.loss_names == ("dapi_confocal", "label", "autoencoder", "total")
        losses = [trainer.step(inputs, targets) for _ in range(5)]
        assert trainer.step_count == 5
        assert set(losses[0]) == set(trainer.loss_names)
        totals = [l["total"] for l in losses]
        assert all(b < a for a, b in zip(totals, totals[1:])), totals
        assert losses[-1]["dapi_confocal"] < losses[0]["dapi_confocal"]
        assert losses[0]["label"] == pytest.approx(losses[0]["dapi_confocal"])
        assert losses[0]["total"] == pytest.approx(
            0.5 * losses[0]["label"] + 0.5 * losses[0]["autoencoder"], rel=1e-5)
        snapshot = trainer.model()
        assert isinstance(snapshot, islpy.Model) and snapshot.heads == model.heads
        out = snapshot.predict_tile(inputs[0], threads=THREADS)
        assert out["dapi_confocal"].shape == (256, 8, 8)
        snapshot.close()
        assert trainer.estimate_bn([inputs, inputs]) == 2
    assert trainer.closed
    with pytest.raises(islpy.ClosedModelError):
        trainer.step(inputs, targets)


def test_trainer_masked_head_is_not_updated(islpy, bindings_tmp):
    import h5py

    inputs, targets = train_batch(heads=2)
    masks = np.ones(targets.shape, dtype=bool)
    masks[:, 1] = False
    with tiny_model(islpy, ("a", "b")) as model, islpy.Trainer(model, threads=THREADS) as t:
        model.save(bindings_tmp / "masked-before.h5")
        losses = t.step(inputs, targets, masks)
        t.model().save(bindings_tmp / "masked-after.h5")
    assert losses["b"] is None and losses["a"] is not None
    assert losses["label"] == pytest.approx(losses["a"])
    with h5py.File(bindings_tmp / "masked-before.h5", "r") as f0, \
            h5py.File(bindings_tmp / "masked-after.h5", "r") as f1:
        for name in ("weight", "bias", "bn/beta", "bn/gamma"):
            np.testing.assert_array_equal(f0["heads/b/" + name][()], f1["heads/b/" + name][()])
        assert not np.array_equal(f0["heads/a/weight"][()], f1["heads/a/weight"][()])


def test_trainer_save_load_resumes(islpy, bindings_tmp):
    inputs, targets = train_batch()
    path = bindings_tmp / "checkpoint.h5"
    with tiny_model(islpy) as model, islpy.Trainer(model, seed=7, threads=THREADS) as t:
        t.step(inputs, targets)
        t.save(path)
        saved = t.digest()
        expected = [t.step(inputs, targets) for _ in range(2)]
        expected_random = t.random()
        final = t.digest()
    assert len(saved) == 32 and int(saved, 16) >= 0 and final != saved
    with islpy.Trainer.load(path, seed=7, threads=THREADS) as resumed:
        assert resumed.step_count == 1 and resumed.label_heads == ("dapi_confocal",)
        assert resumed.digest() == saved
        assert [resumed.step(inputs, targets) for _ in range(2)] == expected
        assert resumed.random() == expected_random
        assert resumed.digest() == final
    with islpy.Model.load(path) as m:  # a checkpoint is a model file
        assert m.heads == ("dapi_confocal", "autoencoder")


def test_add_heads_and_frozen_trunk(islpy, bindings_tmp):
    """Model.add_heads copies the model with a new head; Trainer(freeze_trunk=True) then
    trains the heads only and resumes from checkpoints."""
    import h5py

    inputs, targets = train_batch(heads=2)
    masks = np.ones(targets.shape, dtype=bool)
    masks[:, 0] = False  # only the new label is known
    before, after = bindings_tmp / "frozen-before.h5", bindings_tmp / "frozen-after.h5"
    checkpoint = bindings_tmp / "frozen-checkpoint.h5"
    with tiny_model(islpy) as model, model.add_heads("tuj1", seed=1) as bigger:
        assert bigger.heads == ("dapi_confocal", "tuj1", "autoencoder")
        assert bigger.head_channels("tuj1") == 256
        assert bigger.parameter_count > model.parameter_count
        old = model.predict_tile(inputs[0], threads=THREADS)
        new = bigger.predict_tile(inputs[0], threads=THREADS)
        np.testing.assert_array_equal(old["dapi_confocal"], new["dapi_confocal"])
        assert new["tuj1"].shape == (256, 8, 8)
        with model.add_heads(["a", "b"]) as two:
            assert two.label_heads == ("dapi_confocal", "a", "b")
        for bad in (["tuj1"], [], ["autoencoder"], ["x", "x"], ["a/b"]):
            with pytest.raises(islpy.InvalidArgumentError):
                bigger.add_heads(bad)
        bigger.save(before)
        with islpy.Trainer(bigger, learning_rate=1e-3, freeze_trunk=True,
                           threads=THREADS) as t:
            losses = [t.step(inputs, targets, masks) for _ in range(3)]
            assert losses[0]["dapi_confocal"] is None
            assert losses[2]["tuj1"] < losses[0]["tuj1"]
            assert t.estimate_bn([inputs]) == 1  # the statistics are frozen: no change
            t.save(checkpoint)
            expected = t.step(inputs, targets, masks)
            t.model().save(after)
    with islpy.Trainer.load(checkpoint, learning_rate=1e-3, freeze_trunk=True,
                            threads=THREADS) as resumed:
        assert resumed.step_count == 3
        assert resumed.step(inputs, targets, masks) == expected
    with h5py.File(before, "r") as f0, h5py.File(after, "r") as f1:
        changed = []
        f0.visititems(lambda name, obj: changed.append(name) if isinstance(obj, h5py.Dataset)
                      and not np.array_equal(obj[()], f1[name][()]) else None)
    assert changed and all(name.startswith(("heads/tuj1/", "heads/autoencoder/"))
                           for name in changed), changed
    assert not any(name.endswith(("/mean", "/var")) for name in changed)


def test_frozen_batch_norm(islpy, bindings_tmp):
    """Trainer(freeze_bn=True) computes what prediction computes (the loss of a step is the
    cross-entropy of predict_tile's probabilities), trains every weight and leaves every
    batch-norm statistic as it was."""
    import h5py

    inputs, targets = train_batch()
    before, after = bindings_tmp / "freeze-bn-before.h5", bindings_tmp / "freeze-bn-after.h5"
    with tiny_model(islpy) as model, islpy.Trainer(model, threads=THREADS) as t:
        t.estimate_bn([inputs])  # statistics that fit the activations
        trained = t.model()
    with trained, islpy.Trainer(trained, learning_rate=1e-3, label_weight=1.0, freeze_bn=True,
                                threads=THREADS) as t:
        trained.save(before)
        probs = trained.predict_tile(inputs[0], probabilities=True, threads=THREADS)
        bins = np.rint(targets[0, 0] * 255).astype(int)
        p = np.take_along_axis(probs["dapi_confocal"], bins[None], 0)[0]
        expected = -np.log(p.astype(np.float64)).mean() / np.log(256)
        losses = [t.step(inputs, targets)["dapi_confocal"] for _ in range(4)]
        assert losses[0] == pytest.approx(expected, rel=1e-4)
        assert all(b < a for a, b in zip(losses, losses[1:])), losses
        t.model().save(after)
    with h5py.File(before, "r") as f0, h5py.File(after, "r") as f1:
        changed = []
        f0.visititems(lambda name, obj: changed.append(name) if isinstance(obj, h5py.Dataset)
                      and not np.array_equal(obj[()], f1[name][()]) else None)
    assert not any(name.endswith(("/mean", "/var")) for name in changed), changed
    assert "projection/weight" in changed and "modules/000/expand/weight" in changed
    assert any(name.endswith("/gamma") for name in changed)


def test_weight_average(islpy, bindings_tmp):
    """Trainer(average_from=2): average_model() is the mean of the models after steps 2
    and 3, and a checkpoint keeps it."""
    import h5py

    inputs, targets = train_batch()
    paths = [bindings_tmp / ("avg-step%d.h5" % k) for k in (2, 3)]
    checkpoint = bindings_tmp / "avg-checkpoint.h5"
    with tiny_model(islpy) as model, islpy.Trainer(
            model, learning_rate=1e-3, freeze_bn=True, average_from=2, threads=THREADS) as t:
        t.step(inputs, targets)
        assert t.average_count == 0
        with pytest.raises(islpy.InvalidArgumentError):
            t.average_model()
        for path in paths:
            t.step(inputs, targets)
            with t.model() as m:
                m.save(path)
        assert t.average_count == 2
        t.save(checkpoint)
        with t.average_model() as avg:
            avg.save(bindings_tmp / "avg.h5")
    with h5py.File(paths[0], "r") as a, h5py.File(paths[1], "r") as b, \
            h5py.File(bindings_tmp / "avg.h5", "r") as m:
        name = "modules/000/expand/weight"
        np.testing.assert_allclose(m[name][()], (a[name][()].astype(np.float64) + b[name][()]) / 2,
                                   rtol=1e-6, atol=1e-9)
    with islpy.Trainer.load(checkpoint, learning_rate=1e-3, freeze_bn=True, average_from=2,
                            threads=THREADS) as resumed:
        assert resumed.average_count == 2


@pytest.mark.parametrize("option, refusal", [("dropout", "dropout rate"),
                                             ("stochastic_depth", "stochastic depth rate")])
def test_dropout_and_stochastic_depth(islpy, bindings_tmp, option, refusal):
    """Trainer(dropout=P), Trainer(stochastic_depth=P): a step differs from the step
    without it and repeats with the same seed; another seed drops other values (skips
    other modules); whole channels differ again; a resumed trainer drops what an
    uninterrupted one does; bad rates are refused."""
    inputs, targets = train_batch()

    def losses(checkpoint=None, **kw):
        with tiny_model(islpy) as model:
            with islpy.Trainer(model, learning_rate=1e-3, threads=THREADS, **kw) as t:
                first = t.step(inputs, targets)
                if checkpoint is not None:
                    t.save(checkpoint)
                return list(first.values()) + list(t.step(inputs, targets).values())

    rate = {option: 0.3}
    plain = losses(seed=3)
    dropped = losses(seed=3, **rate)
    assert dropped != plain
    assert losses(seed=3, **rate) == dropped
    assert losses(seed=4, **rate) != dropped
    if option == "dropout":
        assert losses(seed=3, **rate, spatial_dropout=True) != dropped
    checkpoint = bindings_tmp / f"{option}.ckpt.h5"
    losses(checkpoint, seed=3, **rate)
    with islpy.Trainer.load(checkpoint, learning_rate=1e-3, seed=3, threads=THREADS,
                            **rate) as resumed:
        assert list(resumed.step(inputs, targets).values()) == dropped[len(dropped) // 2:]
    for bad in (-0.1, 0.95, float("nan")):
        with pytest.raises(islpy.InvalidArgumentError, match=refusal):
            with tiny_model(islpy) as model:
                islpy.Trainer(model, **{option: bad})


def test_keep_activations(islpy, bindings_tmp):
    """Trainer(keep_activations=True) trains bit for bit as without it (the library keeps
    the forward pass's batch-norm outputs instead of recomputing them), with stochastic
    depth, dropout and frozen statistics too; the steps do change the weights."""
    import h5py

    inputs, targets = train_batch()

    def arrays(path):
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda k, o: out.__setitem__(k, o[()])
                         if isinstance(o, h5py.Dataset) and o.dtype.kind == "f" else None)
        return out

    def run(name, **kw):
        path = bindings_tmp / ("keep-%s.h5" % name)
        with tiny_model(islpy) as model:
            with islpy.Trainer(model, learning_rate=1e-3, seed=3, threads=THREADS, **kw) as t:
                losses = [list(t.step(inputs, targets).values()) for _ in range(2)]
                with t.model() as trained:
                    trained.save(path)
        return losses, arrays(path)

    with tiny_model(islpy) as model:
        model.save(bindings_tmp / "keep-init.h5")
    initial = arrays(bindings_tmp / "keep-init.h5")
    for i, kw in enumerate(({}, {"stochastic_depth": 0.5, "dropout": 0.3, "freeze_bn": True})):
        losses, trained = run("recomputed%d" % i, **kw)
        kept_losses, kept = run("kept%d" % i, keep_activations=True, **kw)
        assert kept_losses == losses
        assert trained.keys() == kept.keys() == initial.keys()
        for k in trained:
            np.testing.assert_array_equal(kept[k], trained[k], err_msg=k)
        assert any(not np.array_equal(initial[k], trained[k]) for k in initial)


def test_weight_decay(islpy, bindings_tmp):
    """Trainer(weight_decay=L): after one step every convolution weight is the undecayed
    step's minus lr * L times its initial value; biases, gamma and beta are the undecayed
    step's (docs/training.md, "What is computed")."""
    import h5py

    inputs, targets = train_batch()
    paths = {}
    for name, decay in (("init", None), ("plain", None), ("decayed", 10.0)):
        paths[name] = bindings_tmp / ("wd-%s.h5" % name)
        with tiny_model(islpy) as model:
            if name == "init":
                model.save(paths[name])
                continue
            with islpy.Trainer(model, learning_rate=1e-3, weight_decay=decay,
                               threads=THREADS) as t:
                t.step(inputs, targets)
                with t.model() as m:
                    m.save(paths[name])
    with pytest.raises(islpy.InvalidArgumentError, match="weight decay"):
        with tiny_model(islpy) as model:
            islpy.Trainer(model, weight_decay=-1.0)
    arrays = {}
    for name, path in paths.items():
        with h5py.File(path, "r") as f:
            arrays[name] = {}
            f.visititems(lambda k, o: arrays[name].__setitem__(k, o[()])
                         if isinstance(o, h5py.Dataset) and o.dtype.kind == "f" else None)
    init, plain, decayed = arrays["init"], arrays["plain"], arrays["decayed"]
    weights = [k for k in init if k.endswith("/weight")]
    assert len(weights) > 10
    for k in init:
        if k in weights:
            np.testing.assert_allclose(decayed[k], plain[k] - 1e-3 * 10.0 * init[k], rtol=0,
                                       atol=2e-7, err_msg=k)
        else:
            np.testing.assert_array_equal(decayed[k], plain[k], err_msg=k)
    assert max(np.abs(init[k]).max() for k in weights) * 1e-2 > 1e-4


def test_trainer_bad_batches(islpy):
    inputs, targets = train_batch()
    with tiny_model(islpy) as model, islpy.Trainer(model, threads=THREADS) as t:
        with pytest.raises(islpy.ShapeError, match="4 dimensions"):
            t.step(inputs[0], targets)
        with pytest.raises(islpy.ShapeError, match="3 z planes but the model needs 2"):
            t.step(np.zeros((1, 3, 250, 250), np.float32), targets)
        with pytest.raises(islpy.ShapeError, match="250 \\+ 16m"):
            t.step(np.zeros((1, 2, 260, 260), np.float32), np.zeros((1, 1, 18, 18), np.float32))
        with pytest.raises(islpy.ShapeError, match="targets must have shape \\(1, 1, 8, 8\\)"):
            t.step(inputs, np.zeros((1, 2, 8, 8), np.float32))
        with pytest.raises(islpy.ShapeError, match="masks must have shape"):
            t.step(inputs, targets, np.ones((1, 1, 8, 9), bool))
        with pytest.raises(islpy.InvalidArgumentError):
            t.step(inputs, None, np.ones((1, 1, 8, 8), bool))
        with pytest.raises(islpy.InvalidValueError, match="outside \\[0, 1\\]"):
            t.step(inputs * 2, targets)
        with pytest.raises(ValueError):  # ShapeError is a ValueError
            t.step(inputs, targets[:, :, :4])
        assert t.step_count == 0
        assert t.step(inputs)["dapi_confocal"] is None  # autoencoder alone
    with pytest.raises(islpy.InvalidArgumentError):
        islpy.Trainer(tiny_model(islpy), label_weight=2.0)
    with pytest.raises(islpy.IslIOError):
        islpy.Trainer.load("/nonexistent/checkpoint.h5")
