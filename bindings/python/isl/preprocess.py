"""The paper's image preprocessing (STAR Methods, "Preprocessing pipeline"), as
``isl preprocess`` and ``isl flat-field`` do it; see docs/preprocessing.md.

Every function takes numpy arrays (any real dtype; converted to float32) and returns new
float32 arrays; the inputs are not modified::

    import isl.preprocess as pp
    ff = pp.flat_field(tiles)                  # tiles: (n, y, x), e.g. every plane of a plate
    stack = pp.preprocess(raw, flat_field=ff)  # raw: (z, y, x) camera counts
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import numpy.typing as npt

from . import _capi

__all__ = ["LIGHTS", "median5_until_stable", "downscale2", "flat_field_sigma", "flat_field",
           "flat_field_apply", "fluorescence_dust", "remove_fluorescence_dust", "normalize",
           "preprocess", "stitch_pair_offset", "stitch_solve", "stitch_blend"]

FloatArray = npt.NDArray[np.float32]

#: Lights and the paper's normalization of each: (mean, standard deviation).
LIGHTS = {"transmitted": (0.5, 0.125), "fluorescence": (0.25, 0.125)}
_LIGHT_ENUM = {"transmitted": _capi.ISL_LIGHT_TRANSMITTED,
               "fluorescence": _capi.ISL_LIGHT_FLUORESCENCE}


def _f32(a: npt.ArrayLike, ndim: tuple, what: str) -> FloatArray:
    a = np.array(a, dtype=np.float32, order="C", copy=True)
    if a.ndim not in ndim:
        raise ValueError(f"{what} must have {' or '.join(map(str, ndim))} dimensions, "
                         f"not {a.ndim}")
    return a


def _light(light: str) -> str:
    if light not in LIGHTS:
        raise ValueError(f"light must be one of {', '.join(LIGHTS)}, not {light!r}")
    return light


def median5_until_stable(image: npt.ArrayLike, max_passes: int = 32) -> tuple:
    """5 x 5 median filter (edges reflected) repeated until nothing changes, at most
    max_passes times. Returns (filtered image, passes that changed something)."""
    out = _f32(image, (2,), "image")
    passes = _capi._median5(out, int(max_passes))
    return out, passes


def downscale2(image: npt.ArrayLike) -> FloatArray:
    """Bilinear 2x downscaling: the mean of each 2 x 2 block (an odd last row or column is
    dropped)."""
    return _capi._downscale2(_f32(image, (2,), "image"))


def flat_field_sigma(light: str, height: int) -> float:
    """The paper's blur: height / 32 for transmitted light, height / 16 for fluorescence."""
    return _capi.isl_flat_field_sigma(_LIGHT_ENUM[_light(light)], int(height))


def flat_field(images: npt.ArrayLike, light: str = "transmitted",
               sigma: Optional[float] = None, dust: bool = False) -> FloatArray:
    """A flat field from images (n, y, x) of one microscope: the per-pixel median, blurred
    by a Gaussian (sigma: the paper's for the light unless given), scaled to mean 1.
    dust=True: no blur, the transmitted-light dust field."""
    a = _f32(images, (3,), "images")
    if dust:
        if sigma is not None:
            raise ValueError("dust and sigma exclude each other")
        sigma = 0.0
    elif sigma is None:
        sigma = flat_field_sigma(light, a.shape[1])
    return _capi._flat_field(a, float(sigma))


def flat_field_apply(image: npt.ArrayLike, field: npt.ArrayLike) -> FloatArray:
    """image / field, pixel by pixel (the field must be positive)."""
    out = _f32(image, (2,), "image")
    _capi._flat_field_apply(out, _f32(field, (2,), "field"))
    return out


def fluorescence_dust(images: npt.ArrayLike, sensor_offset: float, threshold: float = 0.1,
                      sigma: Optional[float] = None) -> tuple:
    """The paper's fluorescence dust artifact (additive, at the same place in every image)
    from images (n, y, x) that share it: returns (artifact, number of dust pixels), the
    artifact float32 (y, x), 0 off the dust. sensor_offset: the camera's reading in the dark
    (e.g. 100 counts); threshold: dust where the median-smoothed mean image exceeds the
    background by more than threshold x background; sigma: the background blur (default
    y / 16). See docs/preprocessing.md, "Fluorescence dust"."""
    a = _f32(images, (3,), "images")
    return _capi._fluorescence_dust(a, float(sensor_offset), float(threshold),
                                    0.0 if sigma is None else float(sigma))


def remove_fluorescence_dust(image: npt.ArrayLike, artifact: npt.ArrayLike) -> FloatArray:
    """image - artifact (float32), as isl_dust_fluorescence_remove and ``isl preprocess
    --dust-artifact`` do."""
    out = _f32(image, (2,), "image")
    _capi._fluorescence_dust_remove(out, _f32(artifact, (2,), "artifact"))
    return out


def normalize(image: npt.ArrayLike, light: str = "transmitted",
              mean: Optional[float] = None, sd: Optional[float] = None) -> FloatArray:
    """Affine map to the light's mean and standard deviation (or the ones given), clipped
    to [0, 1]."""
    m, s = LIGHTS[_light(light)]
    out = _f32(image, (2,), "image")
    _capi._normalize(out, m if mean is None else float(mean), s if sd is None else float(sd))
    return out


def preprocess(stack: npt.ArrayLike, light: str = "transmitted",
               flat_field: Optional[npt.ArrayLike] = None,
               dust_field: Optional[npt.ArrayLike] = None, median: Optional[bool] = None,
               downscale: bool = False, normalize_planes: bool = True) -> FloatArray:
    """What ``isl preprocess`` does, plane by plane of a (z, y, x) or (y, x) array: median
    filter (default for fluorescence), downscaling, flat-field and dust correction (fields
    of one plane or one per plane, of the size after downscaling), normalization."""
    _light(light)
    a = _f32(stack, (2, 3), "stack")
    planes = a[None] if a.ndim == 2 else a
    if median is None:
        median = light == "fluorescence"
    fields = [None if f is None else _f32(f, (2, 3), name)
              for f, name in ((flat_field, "flat_field"), (dust_field, "dust_field"))]
    out = []
    for z, p in enumerate(planes):
        if median:
            p, _ = median5_until_stable(p)
        if downscale:
            p = downscale2(p)
        for f in fields:
            if f is not None:
                p = flat_field_apply(p, f if f.ndim == 2 else f[z])
        if normalize_planes:
            p = normalize(p, light)
        out.append(p)
    result = np.stack(out)
    return result[0] if a.ndim == 2 else result


def stitch_pair_offset(a: npt.ArrayLike, b: npt.ArrayLike, nominal: tuple,
                       search: int) -> tuple:
    """Where tile b lies in tile a's coordinates, (offset_y, offset_x, ncc): the maximum of
    the normalized cross-correlation within +-search pixels of nominal (y, x)."""
    return _capi._stitch_pair_offset(_f32(a, (2,), "a"), _f32(b, (2,), "b"),
                                     float(nominal[0]), float(nominal[1]), int(search))


def stitch_solve(tiles: int, pairs: npt.ArrayLike, offsets: npt.ArrayLike) -> np.ndarray:
    """Tile positions (tiles, 2) minimizing sum |p_j - p_i - o_ij|^2, tile 0 at (0, 0);
    pairs (p, 2) of tile indices (i, j), offsets (p, 2) of p_j - p_i."""
    return _capi._stitch_solve(int(tiles), np.ascontiguousarray(pairs, np.int32),
                               np.ascontiguousarray(offsets, np.float64))


def stitch_blend(tiles: npt.ArrayLike, positions: npt.ArrayLike) -> FloatArray:
    """The feathered composite of tiles (n, y, x) at positions (n, 2), rounded to whole
    pixels and shifted so that the smallest is 0."""
    return _capi._stitch_blend(_f32(tiles, (3,), "tiles"),
                               np.ascontiguousarray(positions, np.float64))
