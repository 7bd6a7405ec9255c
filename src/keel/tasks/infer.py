"""Which task a target column asks for, when the config does not say (``task=auto``).

The rule, on the target's non-missing values:
- text, booleans or categories: classification;
- any value that is not a whole number (0.5, 151.3): regression;
- whole numbers only: classification when they take at most ``MAX_CLASSES_SURE`` distinct
  values, regression when they take more than ``MIN_VALUES_NUMBER`` (no class list holds that
  many labels sensibly); in between the column could be either (23 age bands or an age) and the
  run is refused with the two ways to choose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from keel.tasks import TaskError

# Up to this many distinct whole numbers: class labels (digits 0-9, ratings 1-5, 0/1).
MAX_CLASSES_SURE = 10
# More distinct whole numbers than this: a quantity (counts, prices in whole units, scores).
MIN_VALUES_NUMBER = 50


@dataclass(frozen=True)
class Inferred:
    """The task a target column asks for and the one line that says why."""

    task: str
    reason: str


def infer_task(values: Any, target: str) -> Inferred:
    """The task of target column ``target`` from its values (a pandas Series or array).

    Raises:
        TaskError: the column is empty, or ambiguous (whole numbers with a middling number of
            distinct values): the message says how to choose.
    """
    import pandas as pd

    s = pd.Series(values) if not isinstance(values, pd.Series) else values
    s = s.dropna()
    fix = "Fix: task=classification or task=regression"
    if s.empty:
        raise TaskError(f"data.target={target!r}: the column has no values, so its task cannot be told. {fix}")
    if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
        k = s.astype(str).nunique()
        return Inferred("classification", f"target {target!r} holds text or booleans ({k} distinct values)")
    v = s.to_numpy(dtype=np.float64)
    if not np.isfinite(v).all():
        # Inf: not a class label; the contract check reports it as a bad target value
        return Inferred("regression", f"target {target!r} holds non-integer numbers")
    whole = bool(np.all(v == np.round(v)))
    if not whole:
        return Inferred("regression", f"target {target!r} holds non-integer numbers "
                                      f"({np.unique(v).size} distinct values in {v.size} rows)")
    k = int(np.unique(v).size)
    lo, hi = v.min(), v.max()
    span = f"{k} distinct whole numbers in {v.size} rows, {lo:g}..{hi:g}"
    if k <= MAX_CLASSES_SURE:
        return Inferred("classification", f"target {target!r} holds {span}")
    if k > MIN_VALUES_NUMBER:
        return Inferred("regression", f"target {target!r} holds {span}")
    raise TaskError(
        f"data.target={target!r} holds {span}: that could be {k} classes or a number to predict, so keel will "
        f"not guess. {fix} (classification learns one class per value; regression predicts the number)"
    )


__all__ = ["Inferred", "MAX_CLASSES_SURE", "MIN_VALUES_NUMBER", "infer_task"]
