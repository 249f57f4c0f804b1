"""Exceptions of the isl package: one class per isl_status of the C library.

This module is pure Python and imported by the C extension to raise errors, so it must
not import the extension itself.
"""
from __future__ import annotations

import enum
from typing import Dict, Type

__all__ = [
    "Status",
    "IslError",
    "InvalidArgumentError",
    "OutOfMemoryError",
    "IslIOError",
    "FormatError",
    "ShapeError",
    "InvalidValueError",
    "UnsupportedError",
    "CancelledError",
    "BackendError",
    "InternalError",
    "DamagedFileError",
    "ClosedModelError",
]


class Status(enum.IntEnum):
    """Status codes of the C library (``isl_status``); values are stable across releases."""

    OK = 0
    INVALID_ARGUMENT = 1
    OUT_OF_MEMORY = 2
    IO = 3
    FORMAT = 4
    SHAPE = 5
    VALUE = 6
    UNSUPPORTED = 7
    CANCELLED = 8
    BACKEND = 9
    INTERNAL = 10
    DAMAGED = 11


class IslError(Exception):
    """Base class of the errors reported by the isl library.

    Attributes:
        status: the :class:`Status` code of the failure.
        message: the detailed message of the C library (``isl_last_error()``).
    """

    status: Status = Status.INTERNAL

    def __new__(cls, message: str = "", status: "Status | int | None" = None):
        # Only the message reaches the built-in base (OSError would read two arguments as
        # errno and strerror).
        return super().__new__(cls, message)

    def __init__(self, message: str = "", status: "Status | int | None" = None) -> None:
        super().__init__(message)
        if status is not None:
            try:
                self.status = Status(status)
            except ValueError:
                self.status = status  # type: ignore[assignment]
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # picklable, e.g. across multiprocessing workers
        return (type(self), (self.message, int(self.status)))


class InvalidArgumentError(IslError, ValueError):
    """An argument is invalid: unknown head or statistic, bad tile size, ..."""

    status = Status.INVALID_ARGUMENT


class OutOfMemoryError(IslError, MemoryError):
    """Memory could not be allocated."""

    status = Status.OUT_OF_MEMORY


class IslIOError(IslError, OSError):
    """A file cannot be opened, read or written."""

    status = Status.IO


class FormatError(IslError):
    """A file is corrupt, truncated or not in the expected layout."""

    status = Status.FORMAT


class ShapeError(IslError, ValueError):
    """Dimensions do not fit each other or the model (e.g. the number of z planes)."""

    status = Status.SHAPE


class InvalidValueError(IslError, ValueError):
    """NaN, infinity or an out-of-range value in the input."""

    status = Status.VALUE


class UnsupportedError(IslError):
    """Valid but not supported (sample format, CPU feature)."""

    status = Status.UNSUPPORTED


class CancelledError(IslError):
    """The work was cancelled: the progress callback returned True or a cancel event was set."""

    status = Status.CANCELLED


class BackendError(IslError, RuntimeError):
    """oneDNN, HDF5 or libtiff failed unexpectedly."""

    status = Status.BACKEND


class InternalError(IslError, RuntimeError):
    """A bug in isl; please report it."""

    status = Status.INTERNAL


class DamagedFileError(FormatError):
    """A file's content does not match the checksum isl stored in it (truncated or bit-flipped)."""

    status = Status.DAMAGED


class ClosedModelError(InvalidArgumentError):
    """A :class:`isl.Model` was used after :meth:`isl.Model.close`."""


_BY_STATUS: Dict[int, Type[IslError]] = {
    cls.status: cls
    for cls in (
        InvalidArgumentError,
        OutOfMemoryError,
        IslIOError,
        FormatError,
        ShapeError,
        InvalidValueError,
        UnsupportedError,
        CancelledError,
        BackendError,
        InternalError,
        DamagedFileError,
    )
}


def error_class(status: int) -> Type[IslError]:
    """The exception class of a status code (IslError for unknown codes)."""
    return _BY_STATUS.get(int(status), IslError)


def _from_status(status: int, message: str) -> IslError:
    """Called by the C extension to build the exception of a failed call."""
    return error_class(status)(message, status)
