"""What keel needs from a data module (README "Your own data"), and the check that names what is
missing before training starts.

The easy way is to subclass :class:`keel.data.InMemoryDataModule` and implement one method,
``load() -> (features, labels)``: splitting, contract checks on every split, drift and leakage,
preprocessing fitted on the train split, class counts or target statistics and the batches all
come with it. Any other ``LightningDataModule`` works when it provides :class:`KeelDataModule`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from keel.errors import KeelError


@runtime_checkable
class KeelDataModule(Protocol):
    """A LightningDataModule keel can train, test, export and serve from.

    After ``setup()``:

    - ``contract``: a keel data contract (``keel.data.TensorContract`` or ``TableContract``):
      checked on every split, stored in checkpoints and bundles; its ``task`` is the run's.
    - ``preprocessing``: the input preprocessing fitted on the train split, as plain data for
      ``keel.models.nets.build_preprocess`` (``{"type": "standardize", "mean": ..., "std": ...,
      "sample_ndim": ...}`` or the tabular spec); it becomes part of the model and the ONNX graph.
    - ``net_input_shape``: the shape of one sample as the net receives it (after preprocessing).
    - ``split_arrays(split)``: ``(features, targets)`` numpy arrays of ``train``/``val``/``test``
      (export parity and int8 calibration run on them; the data fingerprint hashes them unless
      the module lists its files). A module whose splits do not fit in memory (streamed tables,
      decoded images) takes ``split_arrays(split, limit=N)``: at most N rows, always the same
      ones (int8 calibration asks the train split for a bounded sample this way).
    - ``split_sizes()``: rows per split.
    - ``class_counts(split)`` (classification: rows per class, in contract order; for
      ``class_weights=balanced``) or ``target_stats(split)`` (regression: ``mean``, ``std``,
      ``min``, ``max``, ``count`` of the target, which the model standardizes with).
    - the Lightning loaders ``train_dataloader``/``val_dataloader``/``test_dataloader`` yielding
      ``(features, targets)`` batches.

    Optional (keel uses them when present): ``reference`` (train-split statistics for drift at
    serving time; none: the bundle carries no drift reference), ``drift`` and ``dropped``
    (reports written to the run directory), ``data_report()`` (the contract report per split),
    ``source`` (where the rows come from, for messages).
    """

    contract: Any

    def setup(self, stage: str | None = None) -> None: ...

    @property
    def preprocessing(self) -> Mapping[str, Any]: ...

    @property
    def net_input_shape(self) -> Sequence[int]: ...

    def split_arrays(self, split: str) -> tuple[Any, Any]: ...

    def split_sizes(self) -> Mapping[str, int]: ...

    def train_dataloader(self) -> Any: ...

    def val_dataloader(self) -> Any: ...

    def test_dataloader(self) -> Any: ...


# what is needed, and what each is for (the message names both)
METHODS = {
    "setup": "reads and splits the data",
    "train_dataloader": "training batches",
    "val_dataloader": "validation batches",
    "test_dataloader": "test batches",
    "split_arrays": "split_arrays(split) -> (features, targets) numpy arrays: export parity, int8 calibration",
    "split_sizes": "split_sizes() -> rows per split: the run record",
}
TASK_METHODS = {
    "classification": ("class_counts", "class_counts(split) -> rows per class: class_weights=balanced"),
    "regression": ("target_stats", "target_stats(split) -> mean, std, min, max, count: the target's scaling"),
}
AFTER_SETUP = {
    "contract": "a keel data contract (keel.data.TensorContract or TableContract): checks, checkpoint, bundle",
    "preprocessing": "the input preprocessing fitted on the train split, as a dict for build_preprocess",
    "net_input_shape": "the shape of one sample, for the net's input_shape",
}
FIX = ("Fix: subclass keel.data.InMemoryDataModule and implement load() -> (features, labels), which gives all of "
       "this (README 'Your own data'), or add the missing parts")


class DataModuleError(KeelError):
    """The data module does not provide what keel needs; the message names every missing part."""


def _where(dm: Any) -> str:
    cls = type(dm)
    try:
        path = inspect.getsourcefile(cls) or cls.__module__
    except TypeError:
        path = cls.__module__
    return f"{cls.__module__}.{cls.__qualname__} ({path})"


def _missing_method(dm: Any, name: str) -> bool:
    """Not callable, or Lightning's own placeholder (its DataModule hooks raise "must be implemented")."""
    import lightning as L

    method = getattr(dm, name, None)
    if not callable(method):
        return True
    own = getattr(type(dm), name, None)
    return own is not None and own is getattr(L.LightningDataModule, name, object())


def protocol_problems(dm: Any, task: str | None = None) -> list[str]:
    """The missing parts of ``dm`` after its ``setup()``, each ``name: what it is for``: the
    methods, the attributes setup must have set and the task's method (``task``: the
    contract's, when ``None``)."""
    problems = [f"{name}: {why}" for name, why in METHODS.items()
                if name != "setup" and _missing_method(dm, name)]
    for name, why in AFTER_SETUP.items():
        try:
            value = getattr(dm, name)
        except Exception:  # noqa: BLE001  a property that fails is as missing as an absent one
            value = None
        if value is None:
            problems.append(f"{name}: {why}")
    contract = getattr(dm, "contract", None)
    if contract is not None:
        lacking = [m for m in ("to_dict", "fingerprint") if not callable(getattr(contract, m, None))]
        if lacking or getattr(contract, "task", None) not in TASK_METHODS:
            problems.append(f"contract: a {type(contract).__name__} is not a keel data contract (expected "
                            "keel.data.TensorContract or TableContract, e.g. keel.data.contract_from_dict(spec))")
        task = getattr(contract, "task", None) if getattr(contract, "task", None) in TASK_METHODS else task
    if task in TASK_METHODS:
        name, why = TASK_METHODS[task]
        if _missing_method(dm, name):
            problems.append(f"{name}: {why} ({task})")
    return problems


def check_data_module(dm: Any, task: str | None = None) -> None:
    """After ``dm.setup()``: raise :class:`DataModuleError` naming every missing part of ``dm``
    (see :func:`protocol_problems`; ``task``: the run's, when known); nothing has trained yet."""
    problems = protocol_problems(dm, task if task in TASK_METHODS else None)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DataModuleError(f"data module {_where(dm)} does not provide what keel needs ({len(problems)} "
                              f"missing):\n{lines}\n{FIX}")


__all__ = ["DataModuleError", "KeelDataModule", "check_data_module", "contract_data_report", "protocol_problems"]


def contract_data_report(dm: Any, **extra: Any) -> dict[str, Any]:
    """``data_report()`` of a keel data module after setup: its source, contract and fingerprint,
    ``on_violation``, every split's contract report, split sizes and what was dropped, plus the
    module's own ``extra`` keys; plain data (for ``<run>/data/contract_report.json``)."""
    return {
        "source": dm.source,
        "contract": dm.contract.to_dict(),
        "fingerprint": dm.contract.fingerprint(),
        **extra,
        "on_violation": dm.on_violation,
        "splits": {k: r.to_dict() for k, r in dm.reports.items()},
        "split_sizes": dm.split_sizes(),
        "dropped": dm.dropped or {"total": 0, "splits": {}},
    }


def class_names(dm: Any) -> list[str]:
    """The names of ``dm``'s classes, in label order: the module's own ``class_names`` when it has
    them (an image folder's subfolder names), else its contract's; [] for a regression or a module
    without a contract."""
    own = getattr(dm, "class_names", None)
    if isinstance(own, (list, tuple)) and own and all(isinstance(n, str) for n in own):
        return list(own)
    names = getattr(getattr(dm, "contract", None), "class_names", None)
    try:
        return [str(c) for c in names] if names else []
    except TypeError:
        return []
