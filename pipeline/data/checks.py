"""Checks every reader applies to the raw arrays it reads: each failure is a :class:`DatasetError` naming the
source, the key and what was expected."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from pipeline.data.dataset import ACTION_TOLERANCE, DatasetError


def check_array(arr: Any, source: str | os.PathLike[str], key: str, *, ndim: tuple[int, ...],
                length: int | None = None, width: int | None = None) -> np.ndarray:
    """Validate a raw array read from a file and return it as float64 numpy.

    ``ndim`` lists the accepted ranks; a rank-2 array with one column is accepted where rank 1 is expected
    and flattened. ``length`` / ``width`` check dims 0 and 1. Non-numeric data, wrong shapes and NaN/Inf raise
    DatasetError naming ``source`` and ``key``.
    """
    a = np.asarray(arr)
    if a.dtype.kind not in "biuf":
        raise DatasetError(source, key, f"expected a numeric array, got dtype {a.dtype}")
    if 1 in ndim and a.ndim == 2 and a.shape[1] == 1 and 2 not in ndim:
        a = a[:, 0]
    if a.ndim not in ndim:
        raise DatasetError(source, key, f"expected an array of rank {' or '.join(map(str, ndim))}, "
                           f"got shape {list(a.shape)}")
    if length is not None and a.shape[0] != length:
        raise DatasetError(source, key, f"expected length {length}, got shape {list(a.shape)}")
    if width is not None and (a.ndim < 2 or a.shape[1] != width):
        raise DatasetError(source, key, f"expected {width} columns, got shape {list(a.shape)}")
    a = a.astype(np.float64, copy=False)
    # Values beyond the float32 range would turn into Inf when the dataset is cast to float32.
    finite = np.isfinite(a) & (np.abs(a) <= np.finfo(np.float32).max)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise DatasetError(source, key, f"expected finite values within float32 range, found "
                           f"{a.reshape(a.shape[0], -1)[row][~finite.reshape(a.shape[0], -1)[row]][0]!r} at row {row}")
    return a


def check_flags(arr: np.ndarray, source: str | os.PathLike[str], key: str) -> np.ndarray:
    """Validate 0/1 flags (bool or numeric) and return them as a bool array."""
    if not np.isin(arr, (0, 1)).all():
        bad = arr[~np.isin(arr, (0, 1))][0]
        raise DatasetError(source, key, f"expected 0/1 flags, found value {bad!r}")
    return arr.astype(bool)


def check_actions(actions: np.ndarray, source: str | os.PathLike[str], key: str) -> None:
    """Raise DatasetError when an action leaves ``[-1, 1]`` by more than :data:`ACTION_TOLERANCE`."""
    if actions.size and float(np.abs(actions).max()) > 1.0 + ACTION_TOLERANCE:
        row = int(np.argwhere(np.abs(actions) > 1.0 + ACTION_TOLERANCE)[0][0])
        raise DatasetError(source, key, f"expected actions in [-1, 1], found {actions[row].tolist()} at row {row} "
                           f"(min {actions.min():.6g}, max {actions.max():.6g})")


def finite_or_none(value: Any) -> float | None:
    """``float(value)`` when it is a finite number, else ``None`` (metadata scores may be missing or junk)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
