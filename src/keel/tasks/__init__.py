"""Tasks: one file per task (classification, regression); ``get_task(name)`` gives its object.

Light on purpose (no torch at import): config checks read the names a task logs.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from keel.errors import KeelError

if TYPE_CHECKING:
    from keel.tasks.base import Task

TASKS = ("classification", "regression")
_MODULES = {"classification": ("keel.tasks.classification", "Classification"),
            "regression": ("keel.tasks.regression", "Regression")}
_CACHE: dict[str, Task] = {}


class TaskError(KeelError):
    """The task cannot be told, or does not fit the data (e.g. an ambiguous target column)."""


def get_task(name: str) -> Task:
    """The task object for ``name`` (``classification`` or ``regression``).

    Raises:
        TaskError: an unknown name, with the allowed ones.
    """
    if name not in _MODULES:
        raise TaskError(f"task={name!r}: expected one of {', '.join(TASKS)} (or auto: from the data). "
                        "Fix: e.g. task=regression")
    if name not in _CACHE:
        module, cls = _MODULES[name]
        _CACHE[name] = getattr(import_module(module), cls)()
    return _CACHE[name]


def metric_mode(metric: str) -> str:
    """``max`` or ``min``: which way a metric name of any task improves (``val/r2_best``: max,
    ``test/rmse``: min). The leaf names of the tasks do not collide, so the name alone decides;
    an unknown leaf counts as a loss when it says so, else as a score (``max``)."""
    leaf = metric.rsplit("/", 1)[-1].removesuffix("_best")
    for name in TASKS:
        higher = get_task(name).higher_is_better.get(leaf)
        if higher is not None:
            return "max" if higher else "min"
    return "min" if "loss" in leaf else "max"


__all__ = ["TASKS", "TaskError", "get_task", "metric_mode"]
