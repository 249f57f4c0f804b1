"""Evaluation of predicted against true fluorescence images (docs/evaluation.md).

Thin wrappers of the C functions isl_eval_* (include/isl.h): arrays in, numpy arrays and
dicts out. The paper's definitions (STAR Methods) and the choices made where it is vague
are in docs/evaluation.md.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import numpy.typing as npt

from . import _capi

__all__ = ["evaluate", "pearson", "heatmap", "otsu", "segment_nuclei", "object_errors",
           "object_radii", "ks_2samp", "error_image", "map_image", "display"]


def _f32(a: npt.ArrayLike) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _mask(mask: Optional[npt.ArrayLike]) -> Optional[np.ndarray]:
    return None if mask is None else np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8)


def pearson(predicted: npt.ArrayLike, truth: npt.ArrayLike, mask: Optional[npt.ArrayLike] = None,
            *, max_pixels: int = 1_000_000, seed: int = 0) -> Tuple[float, int]:
    """Pearson r over `max_pixels` pixels drawn (seeded) from the mask; (r, pixels used)."""
    return _capi._eval_pearson(_f32(predicted), _f32(truth), _mask(mask), int(max_pixels),
                               int(seed))


def heatmap(predicted: npt.ArrayLike, truth: npt.ArrayLike, mask: Optional[npt.ArrayLike] = None,
            *, bins: int = 10) -> np.ndarray:
    """(bins, bins) counts per 1,000 pixels; rows: true bin, columns: predicted bin."""
    return _capi._eval_heatmap(_f32(predicted), _f32(truth), _mask(mask), int(bins))


def otsu(image: npt.ArrayLike, mask: Optional[npt.ArrayLike] = None) -> float:
    """Otsu's threshold (256 bins over [0, 1]); foreground is >= the threshold."""
    return _capi._eval_otsu(_f32(image), _mask(mask))


def segment_nuclei(image: npt.ArrayLike, *, threshold: Optional[float] = None, min_area: int = 1,
                   split_touching: bool = True) -> Tuple[np.ndarray, int]:
    """(int32 labels, number of objects): threshold (Otsu's if None), 8-connected
    components, a watershed for touching nuclei."""
    th = -1.0 if threshold is None else float(threshold)
    return _capi._eval_segment_nuclei(_f32(image), th, int(min_area), int(bool(split_touching)))


def object_errors(true_labels: npt.ArrayLike, predicted_labels: npt.ArrayLike, *,
                  exclude_border: bool = True) -> Dict[str, Any]:
    """Split, merged, added, missed and accuracy of predicted against true objects."""
    t = np.ascontiguousarray(true_labels, dtype=np.int32)
    p = np.ascontiguousarray(predicted_labels, dtype=np.int32)
    return _capi._eval_object_errors(t, int(t.max(initial=0)), p, int(p.max(initial=0)),
                                     int(bool(exclude_border)))


def object_radii(labels: npt.ArrayLike) -> np.ndarray:
    """Equivalent radius sqrt(area / pi) in pixels of objects 1..max(labels)."""
    a = np.ascontiguousarray(labels, dtype=np.int32)
    return _capi._eval_object_radii(a, int(a.max(initial=0)))


def ks_2samp(a: npt.ArrayLike, b: npt.ArrayLike) -> Tuple[float, float]:
    """Two-sided two-sample Kolmogorov-Smirnov test: (statistic, p-value)."""
    return _capi._eval_ks_2samp(np.ascontiguousarray(a, dtype=np.float64).ravel(),
                                np.ascontiguousarray(b, dtype=np.float64).ravel())


def error_image(predicted: npt.ArrayLike, truth: npt.ArrayLike) -> np.ndarray:
    """RGB uint8 composite: gray agreement, magenta too bright, teal too dim."""
    return _capi._eval_error_image(_f32(predicted), _f32(truth))


def map_image(values: npt.ArrayLike, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """RGB uint8 picture of a map (entropy, std) with a viridis-like colour scale."""
    return _capi._eval_map_image(_f32(values), float(lo), float(hi))


def display(x: npt.ArrayLike) -> np.ndarray:
    """The paper's display transform clip((x - 0.2) / 0.6, 0, 1)."""
    return np.clip((np.asarray(x, dtype=np.float64) - 0.2) / 0.6, 0.0, 1.0)


def evaluate(predicted: npt.ArrayLike, truth: npt.ArrayLike, mask: Optional[npt.ArrayLike] = None,
             *, max_pixels: int = 1_000_000, seed: int = 0, bins: int = 10,
             nuclei: bool = False, min_area: int = 20, exclude_border: bool = True,
             entropy: Optional[npt.ArrayLike] = None,
             std: Optional[npt.ArrayLike] = None) -> Dict[str, Any]:
    """Every metric of one label: a dict with "pearson", "pixels", "heatmap" (bins x bins,
    per 1,000), "error_image" (H x W x 3 uint8) and, when given, "entropy_image" and
    "std_image". With nuclei=True (nuclear labels) also "threshold_true",
    "threshold_predicted", "labels_true", "labels_predicted", "objects" (object_errors),
    "radii_true", "radii_predicted" and "ks" = (statistic, p-value) of the radii."""
    p, t = _f32(predicted), _f32(truth)
    r, used = pearson(p, t, mask, max_pixels=max_pixels, seed=seed)
    out: Dict[str, Any] = {"pearson": r, "pixels": used, "heatmap": heatmap(p, t, mask, bins=bins),
                           "error_image": error_image(p, t)}
    if entropy is not None:
        out["entropy_image"] = map_image(entropy, 0.0, 1.0)
    if std is not None:
        out["std_image"] = map_image(std, 0.0, 0.25)
    if nuclei:
        for key, image in (("true", t), ("predicted", p)):
            th = otsu(image)
            labels, _ = segment_nuclei(image, threshold=th, min_area=min_area)
            out["threshold_" + key] = th
            out["labels_" + key] = labels
            out["radii_" + key] = object_radii(labels)
        out["objects"] = object_errors(out["labels_true"], out["labels_predicted"],
                                       exclude_border=exclude_border)
        if len(out["radii_true"]) and len(out["radii_predicted"]):
            out["ks"] = ks_2samp(out["radii_true"], out["radii_predicted"])
    return out
