"""Seeded, stratified train/val/test split of row indices (by class, or by quantile bins of a
numeric target: :func:`quantile_strata`)."""

from __future__ import annotations

from typing import Any

import numpy as np


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Split row indices into ``train``/``val``/``test``, keeping class proportions.

    Each class contributes ``round(count * fraction)`` rows to val and to test (at least one
    when it has 3 or more rows) and the rest to train. The same ``seed`` gives the same
    split on any machine. Returned index arrays are sorted.

    Raises:
        ValueError: a fraction outside (0, 1), or their sum >= 1.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction}, test_fraction={test_fraction}: each must be in (0, 1) and their sum < 1"
        )
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n = idx.size
        n_val = int(round(n * val_fraction))
        n_test = int(round(n * test_fraction))
        if n >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        n_val = min(n_val, max(n - 1, 0))
        n_test = min(n_test, max(n - 1 - n_val, 0))
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    return {k: np.sort(np.concatenate(v)) if v else np.array([], dtype=np.int64) for k, v in parts.items()}


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(labels)-1`` into ``(keep, holdout)``, ``fraction`` of each class
    held out (at least one row of each class with 3 or more rows). Both arrays sorted.

    Raises:
        ValueError: ``fraction`` outside (0, 1).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction}: expected a value in (0, 1)")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    keep, hold = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_hold = int(round(idx.size * fraction))
        if idx.size >= 3:
            n_hold = max(n_hold, 1)
        n_hold = min(n_hold, max(idx.size - 1, 0))
        hold.append(idx[:n_hold])
        keep.append(idx[n_hold:])
    empty = np.array([], dtype=np.int64)
    return (np.sort(np.concatenate(keep)) if keep else empty, np.sort(np.concatenate(hold)) if hold else empty)


def quantile_strata(values: Any, bins: int = 10) -> np.ndarray:
    """Strata for splitting rows by a numeric target: the quantile bin of each value.

    The cut points are the quantiles of the finite values at ``linspace(0, 1, bins + 1)``
    (interior ones, de-duplicated); a value goes to the bin above each cut it is >= to, so
    equal values always share a bin and heavily repeated values make fewer bins. Values that
    are not finite numbers (NaN, Inf, None, text that is not a number) form one more stratum,
    ``-1``, so they still split (and are then reported by the contract check). Feeding the
    result to :func:`stratified_split` keeps the target's range in every split.

    Args:
        values: 1-D numbers (array, list or pandas Series; object arrays are read value by value).
        bins: number of quantile bins, >= 1.

    Returns:
        int64 stratum per row: ``0..bins-1`` or ``-1``.

    Raises:
        ValueError: ``bins`` < 1, or ``values`` not 1-D.
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins={bins!r}: expected an integer >= 1")
    v = _as_float(values)
    finite = np.isfinite(v)
    strata = np.full(v.shape, -1, dtype=np.int64)
    if finite.any():
        cuts = np.unique(np.quantile(v[finite], np.linspace(0.0, 1.0, int(bins) + 1)[1:-1]))
        strata[finite] = np.searchsorted(cuts, v[finite], side="right")
    return strata


def _as_float(values: Any) -> np.ndarray:
    """``values`` as float64, NaN for anything that is not a number (booleans count as numbers
    only in a boolean array: object values True/False are not a target's numbers)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D array of target values, got shape {arr.shape}")
    if arr.dtype.kind in "biuf":
        return arr.astype(np.float64)
    out = np.full(arr.shape, np.nan)
    for i, x in enumerate(arr.tolist()):
        if isinstance(x, bool) or x is None:
            continue
        try:
            out[i] = float(x)
        except (TypeError, ValueError, OverflowError):
            pass
    return out
