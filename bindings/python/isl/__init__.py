"""In Silico Labeling: predict fluorescence images from transmitted-light z-stacks.

Python bindings of the isl C library (Christiansen et al., Cell 2018). A deep network
predicts, for every pixel, a probability distribution over 256 intensities of each
fluorescent label ("head"); predictions are summarised by per-pixel statistics such as
the median (the paper's images) or the mean.

Example::

    import isl
    import tifffile

    stack = tifffile.imread("stack.tif")            # (13, y, x) uint16
    with isl.Model.load("model.h5") as model:
        out = model.predict(stack, stats=("median", "mean"))
    nuclei = out["dapi_confocal"]["median"]          # float32 (y, x) in [0, 1]

:class:`Trainer` trains a model (Adam on the paper's per-pixel 256-bin loss).

Errors of the C library raise subclasses of :class:`IslError` (one per status code).
Long calls release the GIL, so several threads can predict with one model at a time.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import _capi, _errors, preprocess
from ._evaluate import (
    display, error_image, evaluate, heatmap, ks_2samp, map_image, object_errors, object_radii,
    otsu, pearson, segment_nuclei,
)
from ._errors import (
    BackendError,
    CancelledError,
    ClosedModelError,
    DamagedFileError,
    FormatError,
    InternalError,
    InvalidArgumentError,
    InvalidValueError,
    IslError,
    IslIOError,
    OutOfMemoryError,
    ShapeError,
    Status,
    UnsupportedError,
)

__all__ = [
    "Model",
    "Trainer",
    "stats",
    "uncertain_mask",
    "uncertainty_summary",
    "UNCERTAIN_STD",
    "version",
    "format_version",
    "STATS",
    "AUTOENCODER",
    "TILE_CONTEXT",
    "UnusualInputWarning",
    "evaluate",
    "pearson",
    "heatmap",
    "otsu",
    "segment_nuclei",
    "object_errors",
    "object_radii",
    "ks_2samp",
    "error_image",
    "map_image",
    "display",
    "preprocess",
    *_errors.__all__,
]

#: Version of the C library, "major.minor.patch".
__version__: str = _capi.isl_version_string()

#: Names of the per-pixel statistics, in the order of the C enum isl_stat.
STATS: Tuple[str, ...] = tuple(_capi.isl_stat_name(i) for i in range(_capi.ISL_STAT_COUNT))

#: Name of the autoencoder head (it predicts the input stack itself).
AUTOENCODER: str = _capi.ISL_AUTOENCODER_NAME

#: A tile of side n (250 + 16 m) predicts n - TILE_CONTEXT output pixels per side.
TILE_CONTEXT: int = _capi.ISL_TILE_CONTEXT

#: Predicted standard deviation above which :func:`uncertain_mask` marks a pixel as not to
#: be trusted (the C library's ISL_UNCERTAIN_STD; measured in docs/training.md).
UNCERTAIN_STD: float = float(_capi.ISL_UNCERTAIN_STD)

_NUM_CLASSES = _capi.ISL_NUM_CLASSES
_PRECISIONS = {"fp32": _capi.ISL_PRECISION_FP32, "bf16": _capi.ISL_PRECISION_BF16}

#: Plane means (in [0, 1]) outside this range warn for models without input normalization.
_USUAL_MEAN = (0.2, 0.8)


class UnusualInputWarning(UserWarning):
    """The stack does not look preprocessed as the model's training data (raw camera
    values given to a model without input normalization); the prediction still ran."""


PathLike = Union[str, "os.PathLike[str]"]
StatNames = Union[str, Iterable[str]]
HeadNames = Union[None, str, Iterable[Union[str, int]]]
ProgressFn = Callable[[int, int], Optional[bool]]
FloatArray = npt.NDArray[np.float32]


def version() -> str:
    """Version of the C library ("major.minor.patch")."""
    return _capi.isl_version_string()


def format_version() -> int:
    """Model file format version this library writes (and the newest it reads)."""
    return _capi.isl_model_format_version()


def _stat_index(stat: Union[str, int]) -> int:
    if isinstance(stat, str):
        index = _capi.isl_stat_from_name(stat)
        if index < 0:
            raise InvalidArgumentError(
                "unknown statistic %r (one of %s)" % (stat, ", ".join(STATS)))
        return index
    if isinstance(stat, (int, np.integer)) and 0 <= int(stat) < len(STATS):
        return int(stat)
    raise InvalidArgumentError("unknown statistic %r (one of %s)" % (stat, ", ".join(STATS)))


def _stat_list(stats: StatNames) -> List[int]:
    if isinstance(stats, str):
        stats = (stats,)
    result: List[int] = []
    for s in stats:
        index = _stat_index(s)
        if index not in result:
            result.append(index)
    if not result:
        raise InvalidArgumentError("select at least one statistic")
    return result


def stats(logits: npt.ArrayLike, stat: Union[str, int] = "median") -> FloatArray:
    """A per-pixel statistic of distributions given as logits.

    Args:
        logits: array of shape (classes, ...), e.g. the (256, h, w) output of
            :meth:`Model.predict_tile` for one head; converted to float32 C order if needed.
        stat: one of :data:`STATS` ("median", "mean", "mode", "std", "entropy",
            "p_nonzero").

    Returns:
        float32 array of shape ``logits.shape[1:]``. Median, mean and mode are intensities
        in [0, 1] (bin k is k / (classes - 1)).
    """
    array = np.ascontiguousarray(logits, dtype=np.float32)
    return _capi._stats(array, _stat_index(stat))


def uncertain_mask(std: npt.ArrayLike, threshold: float = UNCERTAIN_STD) -> np.ndarray:
    """Where a prediction cannot be trusted: ``std > threshold`` (NaN counts as uncertain).

    Args:
        std: the "std" statistic of a head, e.g. ``model.predict(stack, ("median", "std"))
            [head]["std"]``; converted to float32 C order if needed.
        threshold: positive; the default :data:`UNCERTAIN_STD` was measured on out-of-fold
            predictions, where almost every pixel with an error above 0.1 lay above it.

    Returns:
        bool array of ``std``'s shape, True where uncertain.
    """
    array = np.ascontiguousarray(std, dtype=np.float32)
    return _capi._uncertain_mask(array, float(threshold))


def uncertainty_summary(prediction: Dict[str, Dict[str, FloatArray]],
                        threshold: float = UNCERTAIN_STD) -> str:
    """One line saying how much of the field cannot be trusted, as ``isl predict --preview``
    prints it: ``"uncertain (predicted std > 0.15): dapi_confocal 12.3%, ... of the field"``.

    Args:
        prediction: the result of :meth:`Model.predict` with "std" among its stats; every
            head that has it is summarised (the autoencoder is skipped).
        threshold: as in :func:`uncertain_mask`.

    Raises:
        InvalidArgumentError: no head of ``prediction`` has the "std" statistic.
    """
    heads, counts, pixels = [], [], 0
    for head, images in prediction.items():
        if head == AUTOENCODER or "std" not in images:
            continue
        mask = uncertain_mask(images["std"], threshold)
        heads.append(head)
        counts.append(int(np.count_nonzero(mask)))
        pixels = mask.size
    if not heads:
        raise InvalidArgumentError('the prediction has no "std" statistic: predict with '
                                   'stats=("median", "std")')
    # The wording is the C library's (isl_uncertainty_summary), as the CLI prints it.
    return _capi._uncertainty_summary(heads, counts, pixels, float(threshold))


def _as_stack(stack: npt.ArrayLike) -> np.ndarray:
    """The stack as a C-contiguous uint8/uint16/float32 (z, y, x) array, copied only if needed."""
    array = np.asarray(stack)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype in (np.float16, np.float64):
        array = array.astype(np.float32)
    elif array.dtype not in (np.uint8, np.uint16, np.float32):
        raise TypeError(
            "the stack must be uint8, uint16 or float32 (integers are scaled to [0, 1]), not %s"
            % array.dtype)
    if array.ndim != 3:
        raise ShapeError("the stack must have 3 dimensions (z, y, x), not shape %s"
                         % (array.shape,))
    return np.ascontiguousarray(array)  # the same array when it is already contiguous


class _Handle:
    """Owns the C model; frees it once closed and no call is using it."""

    __slots__ = ("_ptr", "_lock", "_users", "_closed")

    def __init__(self, ptr) -> None:
        self._ptr = ptr
        self._lock = threading.Lock()
        self._users = 0
        self._closed = False

    def __enter__(self):
        with self._lock:
            if self._closed:
                raise ClosedModelError("this isl.Model has been closed")
            self._users += 1
            return self._ptr

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            self._users -= 1
            ptr = self._take()
        if ptr is not None:
            _capi.isl_model_free(ptr)

    def _take(self):
        if self._closed and self._users == 0 and self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            return ptr
        return None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ptr = self._take()
        if ptr is not None:
            _capi.isl_model_free(ptr)


class _Closable:
    """Context manager protocol and finalizer of the public handle classes: close() on
    leaving a with block and when garbage-collected."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


_TOKEN = object()


class Model(_Closable):
    """A network with its weights: immutable once created or loaded.

    Create one with :meth:`Model.load` or :meth:`Model.create`. A model is safe to share
    between threads: any number of them may predict at the same time. Release it with
    :meth:`close` or a ``with`` block (or let it be garbage collected); calls on a closed
    model raise :class:`ClosedModelError`, while its descriptive properties stay readable.
    """

    def __init__(self, _handle, _token: object = None) -> None:
        if _token is not _TOKEN:
            raise TypeError("use isl.Model.load(path) or isl.Model.create(...)")
        self._handle = _Handle(_handle)
        ptr = _handle
        self._heads: Tuple[str, ...] = tuple(
            _capi.isl_model_head_name(ptr, i) for i in range(_capi.isl_model_num_heads(ptr)))
        self._channels: Tuple[int, ...] = tuple(
            _capi.isl_model_head_channels(ptr, i) for i in range(len(self._heads)))
        self._num_z: int = _capi.isl_model_num_z(ptr)
        self._base_depth: int = _capi.isl_model_base_depth(ptr)
        self._parameter_count: int = _capi.isl_model_parameter_count(ptr)
        self._input_normalization: str = _capi.isl_model_input_normalization(ptr)
        um = _capi.isl_model_pixel_size(ptr)
        self._pixel_size: Optional[float] = um if um > 0 else None

    # -- creation -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: PathLike) -> "Model":
        """Loads and validates a model file (format "isl-model", see docs/model-format.md).

        Raises:
            IslIOError: the file cannot be opened or read.
            FormatError: the file is not a valid model (the message names the dataset).
        """
        return cls(_capi.isl_model_load(os.fsdecode(path)), _TOKEN)

    @classmethod
    def create(cls, *, base_depth: int = 400, num_z: int = 13, heads: Sequence[str] = (),
               seed: int = 0, input_normalization: str = "none") -> "Model":
        """Creates a model with random weights (He initialisation) and an autoencoder head.

        Args:
            base_depth: width of the network (400 in the paper; 16 or 32 for tests).
            num_z: transmitted-light planes per input (13 in the paper).
            heads: names of the label heads, e.g. ``["dapi_confocal"]``.
            seed: seed of the random weights.
            input_normalization: "none" (the stack is used as scaled to [0, 1]) or "global"
                (each plane normalized to mean 0.5, standard deviation 0.125).
        """
        if isinstance(heads, str):
            heads = [heads]
        return cls(_capi._model_create(int(base_depth), int(num_z), list(heads), int(seed),
                                       str(input_normalization)), _TOKEN)

    def add_heads(self, names: Union[str, Sequence[str]], seed: int = 0) -> "Model":
        """Transfer learning (the paper's condition E, Figure S5): a new model with label
        heads ``names`` appended after the label heads (before the autoencoder), with
        random initial weights drawn from ``seed``; the trunk and the existing heads are
        copied, so they predict exactly as before. Train it with :class:`Trainer`
        (``freeze_trunk=True`` trains the heads only).

        Raises:
            InvalidArgumentError: no name, a name the model already has, a repeated or
                invalid name, or "autoencoder".
        """
        if isinstance(names, str):
            names = [names]
        with self._handle as ptr:
            return Model(_capi._model_add_heads(ptr, list(names), int(seed)), _TOKEN)

    def save(self, path: PathLike) -> None:
        """Writes the model atomically (to a temporary file renamed over ``path``)."""
        with self._handle as ptr:
            _capi.isl_model_save(ptr, os.fsdecode(path))

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Releases the model. Idempotent; a prediction still running keeps it alive until it ends."""
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._handle.closed

    def __getstate__(self):
        raise TypeError("an isl.Model cannot be pickled; save() it and load() the file instead")

    def __repr__(self) -> str:
        return "<isl.Model base_depth=%d num_z=%d heads=%r%s>" % (
            self._base_depth, self._num_z, self._heads, " closed" if self.closed else "")

    # -- description ----------------------------------------------------------------------

    @property
    def heads(self) -> Tuple[str, ...]:
        """Names of all heads: the label heads, then "autoencoder" (if the model has one)."""
        return self._heads

    @property
    def label_heads(self) -> Tuple[str, ...]:
        """Names of the label heads (predicted by default)."""
        return tuple(h for h in self._heads if h != AUTOENCODER)

    @property
    def num_z(self) -> int:
        """Number of transmitted-light planes the model needs."""
        return self._num_z

    @property
    def base_depth(self) -> int:
        """Width of the network (400 in the paper)."""
        return self._base_depth

    @property
    def parameter_count(self) -> int:
        """Number of stored parameters (weights, biases and batch-norm statistics)."""
        return self._parameter_count

    @property
    def input_normalization(self) -> str:
        """"none" or "global"."""
        return self._input_normalization

    @property
    def pixel_size(self) -> Optional[float]:
        """Pixel size in micrometres of the stacks the model was trained on (the model
        file's pixel_size_um); None if unknown."""
        return self._pixel_size

    def head_channels(self, head: Union[str, int]) -> int:
        """Output channels of a head: 256, or num_z * 256 for the autoencoder."""
        return self._channels[self._head_index(head)]

    # -- prediction -----------------------------------------------------------------------

    def _head_index(self, head: Union[str, int]) -> int:
        if isinstance(head, str):
            if head in self._heads:
                return self._heads.index(head)
        elif isinstance(head, (int, np.integer)) and 0 <= int(head) < len(self._heads):
            return int(head)
        raise InvalidArgumentError("unknown head %r (the model has %s)"
                                   % (head, ", ".join(self._heads)))

    def _head_list(self, heads: HeadNames) -> Optional[List[int]]:
        """Indices of the selected heads, or None for the default (all label heads)."""
        if heads is None:
            return None
        if isinstance(heads, (str, int, np.integer)):
            heads = [heads]
        result: List[int] = []
        for h in heads:
            index = self._head_index(h)
            if index not in result:
                result.append(index)
        if not result:
            raise InvalidArgumentError("select at least one head")
        return result

    def _options(self, heads: Optional[List[int]], stat_ids: Optional[List[int]], tile: int,
                 threads: int, memory_limit: Optional[int], precision: str,
                 probabilities: bool = False, flip_average: bool = False):
        if precision not in _PRECISIONS:
            raise InvalidArgumentError("precision must be 'fp32' or 'bf16', not %r" % (precision,))
        options = _capi.isl_predict_options_create()
        try:
            if tile:
                _capi.isl_predict_options_set_tile_size(options, int(tile))
            if threads:
                _capi.isl_predict_options_set_threads(options, int(threads))
            if memory_limit is not None:
                if int(memory_limit) <= 0:
                    raise InvalidArgumentError("memory_limit must be a positive number of bytes")
                _capi.isl_predict_options_set_memory_limit(options, int(memory_limit))
            if precision != "fp32":  # the library's default
                _capi.isl_predict_options_set_precision(options, _PRECISIONS[precision])
            if heads is not None:
                _capi.isl_predict_options_set_heads(options, heads)
            if stat_ids is not None:
                _capi.isl_predict_options_set_stats(options, stat_ids)
            if probabilities:
                _capi.isl_predict_options_set_probabilities(options, 1)
            if flip_average:
                _capi.isl_predict_options_set_flip_average(options, 1)
        except BaseException:
            _capi.isl_predict_options_free(options)
            raise
        return options

    def _check_ensemble(self, ensemble: Sequence["Model"]) -> List["Model"]:
        members = list(ensemble)
        for m in members:
            if not isinstance(m, Model):
                raise InvalidArgumentError("ensemble members must be isl.Model, not %s"
                                           % type(m).__name__)
        return members

    @contextlib.contextmanager
    def _in_use(self, options, ensemble: List["Model"]):
        """This model's pointer, with the ensemble's models held open and set on options."""
        with contextlib.ExitStack() as stack:
            ptr = stack.enter_context(self._handle)
            others = [stack.enter_context(m._handle) for m in ensemble]
            if others:
                _capi._predict_options_set_ensemble(options, others)
            yield ptr

    @staticmethod
    def _progress(progress: Optional[ProgressFn], cancel: Optional[threading.Event]):
        if progress is None and cancel is None:
            return None

        def call(done: int, total: int) -> bool:
            if cancel is not None and cancel.is_set():
                return True
            return progress is not None and progress(done, total) is True

        return call

    def predict(self, stack: npt.ArrayLike, stats: StatNames = ("median",),
                heads: HeadNames = None, *, tile: int = 0, threads: int = 0,
                memory_limit: Optional[int] = None, progress: Optional[ProgressFn] = None,
                cancel: Optional[threading.Event] = None, precision: str = "fp32",
                ensemble: Sequence["Model"] = (),
                flip_average: bool = False) -> Dict[str, Dict[str, FloatArray]]:
        """Predicts the fluorescence labels of a whole transmitted-light z-stack.

        The image is mirror-padded and run in tiles whose size bounds the memory; the
        result does not depend on the tile size. The GIL is released meanwhile.

        Args:
            stack: (num_z, y, x) array of uint8 or uint16 (scaled to [0, 1] by 1/255 or
                1/65535) or float32 (used as is); any size. A C-contiguous array is used
                without copying; other layouts, byte orders and float16/float64 are converted.
            stats: statistic name(s) among :data:`STATS`.
            heads: head name(s) or indices; default: all label heads (not the autoencoder).
            tile: input side of the tiles, 266 + 16 m; 0 chooses the tile shape that
                needs the least arithmetic within ``memory_limit``.
            threads: threads used by this prediction (0 = all cores).
            memory_limit: bound on the working memory in bytes (default 1.75 GiB).
            progress: ``progress(done, total)`` is called after each tile (with the GIL);
                returning True cancels (:class:`CancelledError`), and an exception it raises
                cancels the prediction and propagates.
            cancel: a :class:`threading.Event`; setting it (e.g. from another thread)
                cancels the prediction at the next tile.
            precision: "fp32" or "bf16" (bfloat16 convolutions on CPUs that have them).
            ensemble: other models (up to 15) whose probability distributions are averaged
                with this one's before the statistics are taken. Independently trained
                models err differently, so their mean predicts better. They must read the
                same planes with the same input normalization and have the selected heads
                (matched by name). Each tile runs every model.
            flip_average: also predict the stack's three mirror images (left-right,
                up-down, both), mirror them back and average the four distributions
                (test-time augmentation; 4x the time). On the bundled model it raised
                the held-out Pearson r of every label (README).

        Returns:
            ``{head: {stat: image}}``; each image is float32 (y, x), or (num_z, y, x) for
            the autoencoder head.

        Raises:
            ShapeError: the stack does not have num_z planes.
            InvalidValueError: the stack holds NaN or infinity, or floats outside [0, 1]
                for a model without input normalization.
            CancelledError: cancelled through ``progress`` or ``cancel``.
        """
        array = _as_stack(stack)
        stat_ids = _stat_list(stats)
        head_ids = self._head_list(heads)
        selected = head_ids if head_ids is not None else [
            i for i, name in enumerate(self._heads) if name != AUTOENCODER]
        _, height, width = array.shape
        outputs: List[Optional[np.ndarray]] = [None] * (len(self._heads) * len(STATS))
        result: Dict[str, Dict[str, FloatArray]] = {}
        for h in selected:
            name = self._heads[h]
            shape: Tuple[int, ...] = (height, width)
            if name == AUTOENCODER:
                shape = (self._channels[h] // _NUM_CLASSES, height, width)
            result[name] = {}
            for s in stat_ids:
                image = np.empty(shape, dtype=np.float32)
                outputs[h * len(STATS) + s] = image
                result[name][STATS[s]] = image
        members = self._check_ensemble(ensemble)
        options = self._options(head_ids, stat_ids, tile, threads, memory_limit, precision,
                                flip_average=flip_average)
        try:
            with self._in_use(options, members) as ptr:
                _capi._predict_image(ptr, options, array, outputs, self._progress(progress, cancel))
        finally:
            _capi.isl_predict_options_free(options)
        self._warn_unusual_input(array)
        return result

    def _warn_unusual_input(self, array: np.ndarray) -> None:
        """As ``isl predict``: a model without input normalization predicts only stacks
        preprocessed like its training data (plane means near 0.5 of [0, 1]); raw camera
        images give confident nonsense, so say so (docs/cli.md, "Input values")."""
        if self._input_normalization != "none":
            return
        scale = {np.dtype(np.uint8): 1 / 255, np.dtype(np.uint16): 1 / 65535}.get(array.dtype, 1.0)
        means = array.reshape(array.shape[0], -1).mean(axis=1, dtype=np.float64) * scale
        if means.min() < _USUAL_MEAN[0] or means.max() > _USUAL_MEAN[1]:
            warnings.warn(
                f"the input's planes have means {means.min():.3g} to {means.max():.3g} (values "
                f"scaled to [0, 1]); this model (input normalization \"none\") expects stacks "
                f"preprocessed like its training data, typically means near 0.5: predictions of "
                f"raw camera images are not meaningful (docs/cli.md, \"Input values\")",
                UnusualInputWarning, stacklevel=3)

    def predict_rows(self, stack: npt.ArrayLike,
                     callback: Callable[[str, str, int, FloatArray], Optional[bool]],
                     stats: StatNames = ("median",), heads: HeadNames = None, *,
                     tile: int = 0, threads: int = 0, memory_limit: Optional[int] = None,
                     progress: Optional[ProgressFn] = None,
                     cancel: Optional[threading.Event] = None, precision: str = "fp32",
                     ensemble: Sequence["Model"] = (), flip_average: bool = False) -> None:
        """Like :meth:`predict`, but streams finished rows instead of returning whole images.

        Memory stays bounded for images of any size. ``callback(head, stat, y0, rows)``
        receives rows ``[y0, y0 + len)`` as a float32 array of shape (len, x), or
        (num_z, len, x) for the autoencoder; rows arrive in order, each exactly once.
        Returning True cancels (:class:`CancelledError`); an exception propagates.
        """
        array = _as_stack(stack)
        stat_ids = _stat_list(stats)
        head_ids = self._head_list(heads)
        names = self._heads

        def rows(head: int, stat: int, y0: int, data: np.ndarray) -> bool:
            if names[head] != AUTOENCODER:
                data = data[0]
            return callback(names[head], STATS[stat], y0, data) is True

        members = self._check_ensemble(ensemble)
        options = self._options(head_ids, stat_ids, tile, threads, memory_limit, precision,
                                flip_average=flip_average)
        try:
            with self._in_use(options, members) as ptr:
                _capi._predict_image_rows(ptr, options, array, rows,
                                          self._progress(progress, cancel))
        finally:
            _capi.isl_predict_options_free(options)
        self._warn_unusual_input(array)

    def predict_tile(self, tile: npt.ArrayLike, probabilities: bool = False,
                     heads: HeadNames = None, *, threads: int = 0,
                     precision: str = "fp32", ensemble: Sequence["Model"] = (),
                     flip_average: bool = False) -> Dict[str, FloatArray]:
        """Runs the network once on one tile, without padding.

        Args:
            tile: (num_z, h, w) float32, already scaled (and normalized), with h and w
                each 250 + 16 m (250, 266, 282, ...).
            probabilities: return probabilities (softmax) instead of logits.
            heads: head name(s) or indices; default: all label heads.
            ensemble: other models averaged with this one (see :meth:`predict`); the
                logits are then the log of the mean probabilities.
            flip_average: also run the tile's mirror images and average (see
                :meth:`predict`); the logits are then the log of the mean probabilities.

        Returns:
            ``{head: array}`` of shape (256, h - 242, w - 242), or (num_z * 256, ...) for the
            autoencoder: channel-major, as PyTorch. :func:`isl.stats` summarises it.

        Raises:
            ShapeError: h or w is not 250 + 16 m, or the tile does not have num_z planes.
        """
        array = np.ascontiguousarray(tile, dtype=np.float32)
        if array.ndim != 3:
            raise ShapeError("the tile must have 3 dimensions (z, y, x), not shape %s"
                             % (array.shape,))
        head_ids = self._head_list(heads)
        if head_ids is None:
            head_ids = [i for i, name in enumerate(self._heads) if name != AUTOENCODER]
        _, h, w = array.shape
        out_h, out_w = max(h - TILE_CONTEXT, 0), max(w - TILE_CONTEXT, 0)
        outputs: List[Optional[np.ndarray]] = [None] * len(self._heads)
        result: Dict[str, FloatArray] = {}
        for i in head_ids:
            outputs[i] = np.empty((self._channels[i], out_h, out_w), dtype=np.float32)
            result[self._heads[i]] = outputs[i]  # type: ignore[assignment]
        members = self._check_ensemble(ensemble)
        options = self._options(None, None, 0, threads, None, precision, probabilities,
                                flip_average)
        try:
            with self._in_use(options, members) as ptr:
                _capi._predict_tile(ptr, options, array, outputs)
        finally:
            _capi.isl_predict_options_free(options)
        return result


def _train_options(learning_rate: Optional[float], label_weight: Optional[float],
                   seed: Optional[int],
                   bn_decay: Optional[float], rate_drop: Optional[Tuple[int, float]],
                   adam: Optional[Tuple[float, float, float]], threads: int,
                   freeze_trunk: bool, freeze_bn: bool, average_from: int,
                   weight_decay: Optional[float], dropout: float = 0.0,
                   spatial_dropout: bool = False, stochastic_depth: float = 0.0,
                   keep_activations: bool = False):
    options = _capi.isl_train_options_create()
    try:
        # Only what the caller set: the defaults live in the library.
        if learning_rate is not None:
            _capi.isl_train_options_set_learning_rate(options, float(learning_rate))
        if label_weight is not None:
            _capi.isl_train_options_set_label_weight(options, float(label_weight))
        if seed is not None:
            _capi.isl_train_options_set_seed(options, int(seed))
        if freeze_trunk:
            _capi.isl_train_options_set_freeze_trunk(options, 1)
        if freeze_bn:
            _capi.isl_train_options_set_freeze_bn(options, 1)
        if average_from:
            _capi.isl_train_options_set_average_from(options, int(average_from))
        if bn_decay is not None:
            _capi.isl_train_options_set_bn_decay(options, float(bn_decay))
        if weight_decay is not None:
            _capi.isl_train_options_set_weight_decay(options, float(weight_decay))
        if dropout or spatial_dropout:
            _capi.isl_train_options_set_dropout(options, float(dropout), int(bool(spatial_dropout)))
        if stochastic_depth:
            _capi.isl_train_options_set_stochastic_depth(options, float(stochastic_depth))
        if keep_activations:
            _capi.isl_train_options_set_keep_activations(options, 1)
        if rate_drop is not None:
            step, rate = rate_drop
            _capi.isl_train_options_set_rate_drop(options, int(step), float(rate))
        if adam is not None:
            beta1, beta2, epsilon = adam
            _capi.isl_train_options_set_adam(options, float(beta1), float(beta2), float(epsilon))
        if threads:
            _capi.isl_train_options_set_threads(options, int(threads))
    except BaseException:
        _capi.isl_train_options_free(options)
        raise
    return options


class Trainer(_Closable):
    """A model being trained: weights, batch-norm averages, Adam state, step count and a
    random generator (see the "Training" section of include/isl.h and docs/training.md).

    Create one from a :class:`Model` (its weights are copied) or resume a checkpoint with
    :meth:`Trainer.load`. Release it with :meth:`close` or a ``with`` block. Calls on one
    trainer are serialized (a lock); :meth:`step` releases the GIL while it runs.

    Options (all keyword arguments of the constructor and :meth:`load`; not stored in
    checkpoints):
        learning_rate: Adam learning rate (None: the library's 1e-4).
        label_weight: weight w of the loss ``w * label + (1 - w) * autoencoder`` (None:
            the library's 0.5);
            1 trains without the autoencoder head (models without one need 1).
        seed: seed of the trainer's random generator (:meth:`random`; None: the
            library's 0).
        bn_decay: decay of the batch-norm moving averages (None: the library's 0.99).
        rate_drop: ``(step, rate)``: from 1-based ``step`` on, use learning rate ``rate``.
        adam: ``(beta1, beta2, epsilon)`` (None: 0.9, 0.999, 1e-8).
        weight_decay: AdamW's decoupled weight decay: each step first shrinks every
            convolution's weights by ``1 - rate * weight_decay`` (biases and batch-norm
            gamma and beta do not decay; None: the library's 0, none).
        threads: threads of the training work (0 = all cores).
        freeze_trunk: train only the heads (transfer learning, :meth:`Model.add_heads`):
            the trunk's weights and every batch-norm statistic stay as they are, batch
            norms use the stored statistics as prediction does, and :meth:`estimate_bn`
            changes nothing.
        freeze_bn: normalize with the stored batch-norm statistics, as prediction does,
            and keep them; every weight still trains. For a last phase of training from a
            trained model (docs/training.md, "Why frozen statistics").
        average_from: from this 1-based step on, also keep the running mean of the
            weights (:meth:`average_model`; 0 = never). Meant with ``freeze_bn``.
        dropout: probability of dropping each value of every head's input while training
            (the rest scaled by ``1 / (1 - dropout)``; 0 = none, at most 0.9). The mask is a
            function of ``seed``, the step and the head: a resumed trainer drops what an
            uninterrupted one would.
        spatial_dropout: with ``dropout``, drop whole channels of a crop instead of single
            values.
        stochastic_depth: in each step, each trunk module skips its expand-reduce branch
            (keeping its residual path) with probability ``stochastic_depth * d / 32``, d
            being its depth (1..32) on the path to the heads; a branch that runs is scaled
            to match, so prediction needs no change (0 = none, at most 0.9). A function of
            ``seed``, the step and the module: a resumed trainer skips what an
            uninterrupted one would.
        keep_activations: keep every batch norm's output from the forward pass for the
            backward pass instead of recomputing it: the same results bit for bit, about
            5% less time a step for about 55% more memory (docs/performance.md).
    """

    def __init__(self, model: Model, *, learning_rate: Optional[float] = None,
                 label_weight: Optional[float] = None,
                 seed: Optional[int] = None, bn_decay: Optional[float] = None,
                 rate_drop: Optional[Tuple[int, float]] = None,
                 adam: Optional[Tuple[float, float, float]] = None, threads: int = 0,
                 freeze_trunk: bool = False, freeze_bn: bool = False, average_from: int = 0,
                 weight_decay: Optional[float] = None, dropout: float = 0.0,
                 spatial_dropout: bool = False, stochastic_depth: float = 0.0,
                 keep_activations: bool = False, _ptr=None) -> None:
        self._lock = threading.Lock()
        self._ptr = None
        options = _train_options(learning_rate, label_weight, seed, bn_decay, rate_drop, adam,
                                 threads, freeze_trunk, freeze_bn, average_from, weight_decay,
                                 dropout, spatial_dropout, stochastic_depth, keep_activations)
        try:
            if _ptr is None:
                if not isinstance(model, Model):
                    raise TypeError("model must be an isl.Model, not %s" % type(model).__name__)
                with model._handle as mptr:
                    ptr = _capi.isl_trainer_create(mptr, options)
                heads, num_z = model.heads, model.num_z
            else:  # load
                ptr = _capi.isl_trainer_load(_ptr, options)
                try:
                    mptr = _capi.isl_trainer_model(ptr)
                except BaseException:
                    _capi.isl_trainer_free(ptr)
                    raise
                snapshot = Model(mptr, _TOKEN)
                heads, num_z = snapshot.heads, snapshot.num_z
                snapshot.close()
        finally:
            _capi.isl_train_options_free(options)
        self._ptr = ptr
        self._num_z: int = num_z
        self._label_heads: Tuple[str, ...] = tuple(h for h in heads if h != AUTOENCODER)
        assert _capi.isl_trainer_num_losses(ptr) == len(self._label_heads) + 3

    @classmethod
    def load(cls, path: PathLike, **options) -> "Trainer":
        """Resumes from a checkpoint written by :meth:`save`: the next step gives the same
        results, bit for bit, as if training had not stopped (given the same options,
        batches and thread count). Takes the constructor's keyword options."""
        return cls(None, _ptr=os.fsdecode(path), **options)  # type: ignore[arg-type]

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Releases the trainer. Idempotent."""
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            ptr, self._ptr = self._ptr, None
        if ptr is not None:
            _capi.isl_trainer_free(ptr)

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def __getstate__(self):
        raise TypeError("an isl.Trainer cannot be pickled; save() a checkpoint and load() it")

    def __repr__(self) -> str:
        return "<isl.Trainer heads=%r%s>" % (
            self._label_heads, " closed" if self.closed else " step_count=%d" % self.step_count)

    def _checked(self):
        if self._ptr is None:
            raise ClosedModelError("this isl.Trainer has been closed")
        return self._ptr

    # -- description ----------------------------------------------------------------------

    @property
    def label_heads(self) -> Tuple[str, ...]:
        """Names of the label heads, in the order of the targets' second axis."""
        return self._label_heads

    @property
    def num_z(self) -> int:
        """Number of transmitted-light planes of the inputs."""
        return self._num_z

    @property
    def loss_names(self) -> Tuple[str, ...]:
        """Keys of the dicts returned by :meth:`step`, in the C order."""
        return self._label_heads + ("label", AUTOENCODER, "total")

    @property
    def step_count(self) -> int:
        """Steps taken so far (restored by :meth:`load`)."""
        with self._lock:
            return int(_capi.isl_trainer_step_count(self._checked()))

    # -- training -------------------------------------------------------------------------

    def _inputs(self, inputs: npt.ArrayLike) -> np.ndarray:
        array = np.ascontiguousarray(inputs, dtype=np.float32)
        if array.ndim != 4:
            raise ShapeError("inputs must have 4 dimensions (batch, z, y, x), not shape %s"
                             % (array.shape,))
        return array

    def step(self, inputs: npt.ArrayLike, targets: Optional[npt.ArrayLike] = None,
             masks: Optional[npt.ArrayLike] = None) -> Dict[str, Optional[float]]:
        """One optimization step (forward with batch statistics, loss, backward, Adam).

        Args:
            inputs: (B, num_z, h, w) floats in [0, 1]; h and w each 250 + 16 m.
            targets: (B, L, h - 242, w - 242) floats in [0, 1] (the centers of the crops;
                L = ``len(label_heads)``), or None to train the autoencoder alone.
            masks: bool or uint8 array of the targets' shape, nonzero where the label is
                known; None: every target pixel is known.

        Returns:
            ``{name: loss}`` for :attr:`loss_names`, computed before the update: each label
            head's mean cross-entropy / ln 256 over its known pixels, "label" (the mean over
            heads with known pixels), "autoencoder" and "total". A loss that was not computed
            (no known pixel of a head; no autoencoder term) is None; a head without a known
            pixel is not updated.

        Raises:
            ShapeError: shapes that do not fit each other or the model, or a crop side
                that is not 250 + 16 m.
            InvalidValueError: an input, or a known target, outside [0, 1] (or NaN).
        """
        array = self._inputs(inputs)
        t = m = None
        if targets is not None:
            t = np.ascontiguousarray(targets, dtype=np.float32)
        if masks is not None:
            if targets is None:
                raise InvalidArgumentError("masks were given without targets")
            m = np.asarray(masks)
            if m.dtype != np.bool_:
                m = m != 0
            m = np.ascontiguousarray(m)
        with self._lock:
            losses = _capi._train_step(self._checked(), self._num_z, array, t, m)
        return {name: (None if np.isnan(v) else float(v))
                for name, v in zip(self.loss_names, losses)}

    def estimate_bn(self, batches: Iterable[npt.ArrayLike]) -> int:
        """Re-estimates the batch-norm population statistics from batches of inputs (each
        (B, num_z, h, w) in [0, 1]) instead of the moving averages; the weights are not
        updated. Returns the number of batches used."""
        count = 0
        with self._lock:
            ptr = self._checked()
            for batch in batches:
                _capi._trainer_estimate_bn(ptr, self._num_z, self._inputs(batch), count)
                count += 1
        if count == 0:
            raise InvalidArgumentError("estimate_bn needs at least one batch")
        return count

    def random(self) -> int:
        """The next 64-bit value of the trainer's random generator (saved in checkpoints):
        for choosing crops so that a resumed run draws the same ones."""
        with self._lock:
            return int(_capi.isl_trainer_random(self._checked()))

    def digest(self) -> str:
        """A fingerprint (XXH3-128, 32 hex digits) of everything a checkpoint holds: weights,
        batch-norm statistics, optimizer state, weight average, step count and random
        generator. Equal states give equal digests (a trainer and the same checkpoint
        loaded with the same options), so two runs, or the processes of a data-parallel
        run, can be checked for identical training without comparing arrays."""
        with self._lock:
            return bytes(_capi.isl_trainer_digest(self._checked())).hex()

    # -- results --------------------------------------------------------------------------

    def model(self) -> Model:
        """A snapshot of the current weights and batch-norm statistics as a new :class:`Model`."""
        with self._lock:
            return Model(_capi.isl_trainer_model(self._checked()), _TOKEN)

    def average_model(self) -> Model:
        """The running mean of the weights since step ``average_from`` as a new
        :class:`Model` (with the current batch-norm statistics). Raises
        :class:`InvalidArgumentError` before the first averaged step."""
        with self._lock:
            return Model(_capi.isl_trainer_average_model(self._checked()), _TOKEN)

    @property
    def average_count(self) -> int:
        """Steps in the weight average so far (restored by :meth:`load`)."""
        with self._lock:
            return int(_capi.isl_trainer_average_count(self._checked()))

    def save(self, path: PathLike) -> None:
        """Writes a checkpoint atomically: a model file (loadable by :meth:`Model.load`)
        plus the Adam moments, the step count and the random generator."""
        with self._lock:
            _capi.isl_trainer_save(self._checked(), os.fsdecode(path))
