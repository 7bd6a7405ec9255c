"""What a task is to keel: the names it logs and how it reads them, light enough for config checks.

A task (classification, regression) owns everything that differs between them: the loss, the
metrics and their names, the monitored and optimized defaults, what the run record keeps of the
test split, the export parity rule, the int8 budget, the drift of the target and what a bundle
serves. Everything else in keel asks the task (``keel.tasks.get_task(name)``), never
``if task == ...``. This base class holds the name logic every task shares; the torch side of
each task is imported inside its methods, so that composing and checking a config imports
neither torch nor Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

SPLITS = ("train", "val", "test")


class Task:
    """Names and defaults of one task (subclasses set the class attributes).

    Attributes:
        name: ``classification`` or ``regression``.
        metrics: what ``val/`` and ``test/`` log each epoch, in display order (``loss`` first).
        train_default: what the training split logs unless ``model.train_metrics`` says otherwise.
        best: metrics that get a best-so-far ``val/<metric>_best``.
        higher_is_better: per metric, whether larger is better (``loss`` is not).
        monitor: the default ``monitor.metric`` (checkpointing, early stopping, plateau).
        optimized: the default ``optimized_metric`` (what train.py returns to a sweeper).
        losses: the ``model.loss.name`` values the task accepts (the first is the default).
        outputs: the exported graph's output names, in order.
    """

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    train_default: ClassVar[tuple[str, ...]]
    best: ClassVar[tuple[str, ...]]
    higher_is_better: ClassVar[Mapping[str, bool]]
    monitor: ClassVar[str]
    optimized: ClassVar[str]
    losses: ClassVar[tuple[str, ...]]
    outputs: ClassVar[tuple[str, ...]]
    # what a net config's ``norm: auto`` (conf/model/mlp.yaml) becomes for this task
    default_norm: ClassVar[str]

    # ------------------------------------------------------------------ names
    def train_metric_set(self, value: str | Sequence[str] | None) -> tuple[str, ...]:
        """``model.train_metrics`` as names in :attr:`metrics` order: ``all``, or a list of them.

        Raises:
            ValueError: naming the value, what is allowed and the fix.
        """
        allowed = ", ".join(self.metrics)
        if value is None:
            return self.train_default
        if value == "all":
            return self.metrics
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"model.train_metrics={value!r}: expected all or a list of {allowed} ({self.name}). "
                             f"Fix: e.g. model.train_metrics=[{','.join(self.train_default)}] or model.train_metrics=all")
        unknown = [v for v in value if v not in self.metrics]
        if unknown:
            raise ValueError(f"model.train_metrics={list(value)!r}: unknown {', '.join(map(repr, unknown))} for "
                             f"{self.name}; expected all or a list of {allowed}. "
                             f"Fix: e.g. model.train_metrics=[{','.join(self.train_default)}]")
        return tuple(m for m in self.metrics if m in value)

    def best_names(self) -> tuple[str, ...]:
        return tuple(f"val/{m}_best" for m in self.best)

    def logged_names(self, train_metrics: str | Sequence[str] | None = None) -> tuple[str, ...]:
        """The names a run logs: the training split's chosen metrics, every val/test metric, the bests."""
        train = self.train_metric_set(train_metrics)
        return (tuple(f"train/{m}" for m in train) + tuple(f"{s}/{m}" for s in SPLITS[1:] for m in self.metrics)
                + self.best_names())

    def metric_names(self) -> tuple[str, ...]:
        """Every name this task can log (``model.train_metrics=all``)."""
        return self.logged_names("all")

    def mode(self, metric: str) -> str:
        """``max`` or ``min``: which way ``metric`` (e.g. ``val/rmse_best``) improves."""
        leaf = metric.rsplit("/", 1)[-1].removesuffix("_best")
        return "max" if self.higher_is_better.get(leaf, False) else "min"

    # ------------------------------------------------------------------ config
    def loss_problems(self, loss: Mapping[str, Any]) -> list[str]:
        """Problems of ``model.loss`` for this task (config check; each with its fix)."""
        name = loss.get("name", "auto")
        if name != "auto" and name not in self.losses:
            return [f"model.loss.name={name!r}: expected auto or one of {', '.join(self.losses)} for {self.name}. "
                    f"Fix: e.g. model.loss.name={self.losses[0]}"]
        return []

    def prepare_net(self, net: dict[str, Any]) -> dict[str, Any]:
        """The net config with ``norm: auto`` resolved to :attr:`default_norm` (a copy)."""
        out = dict(net)
        if out.get("norm") == "auto":
            out["norm"] = self.default_norm
        return out

    @staticmethod
    def int8_verdict(metric: str, fp32: float, int8: float, change: float, loss: float, budget_key: str,
                     budget: float, why: str, **fields: Any) -> dict[str, Any]:
        """The int8 decision record both tasks write: kept when ``loss`` (the metric's loss, in the
        budget's unit) is at most ``budget``; otherwise ``reason`` says ``why`` and names the budget
        ``quantize.<budget_key>``. ``fields``: the task's own keys, kept beside the common ones."""
        accepted = loss <= budget + 1e-12
        out = {"metric": metric, "fp32": fp32, "int8": int8, "change": change, "budget": budget,
               "accepted": accepted, **fields}
        if not accepted:
            out["reason"] = (f"{why} exceeds the budget quantize.{budget_key}={budget}; model.int8.onnx left out of "
                             "the bundle")
        return out

    def loss_name(self, loss: Mapping[str, Any]) -> str:
        """``model.loss.name`` with ``auto`` resolved to the task's default loss."""
        name = loss.get("name", "auto")
        return self.losses[0] if name in (None, "auto") else str(name)

    def __repr__(self) -> str:
        return f"<task {self.name}>"


__all__ = ["SPLITS", "Task"]
