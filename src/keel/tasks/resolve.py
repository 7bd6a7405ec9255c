"""``task=auto`` made concrete before the config is checked, and the task's defaults filled in.

Order of evidence: the ``task`` key when it names a task; the data contract (``task:
regression``, or a list of ``classes``); for a table file without a contract, its target column
(:func:`keel.tasks.infer.infer_task`, which reads that one column). A named task that disagrees
with the contract is refused. Light: omegaconf and yaml, pandas only to read a target column.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from keel.tasks import TASKS, TaskError, get_task

log = logging.getLogger("keel")

AUTO = "auto"


@dataclass(frozen=True)
class ResolvedTask:
    """The run's task, where it came from (``config``, ``contract``, ``inferred``) and why."""

    name: str
    source: str
    reason: str = ""

    def describe(self) -> str:
        if self.source == "inferred":
            other = next(t for t in TASKS if t != self.name)
            return f"task: {self.name} (inferred: {self.reason}; task={other} to choose otherwise)"
        if self.source == "contract":
            return f"task: {self.name} (declared by the data contract {self.reason})"
        return f"task: {self.name}"


def _select(cfg: Any, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def contract_task(spec: Any) -> tuple[str, str] | None:
    """(task, contract name) that a contract spec (mapping or YAML path) declares; None when there
    is no contract or it cannot be read (the config check reports an unreadable one)."""
    if spec is None:
        return None
    try:
        if isinstance(spec, DictConfig):
            spec = OmegaConf.to_container(spec, resolve=True)
        from keel.data.contract import load_contract_spec

        data = load_contract_spec(spec)
    except Exception:  # noqa: BLE001 - a missing/bad contract file: validate_config names it
        return None
    task = data.get("task", "classification")
    if task not in TASKS:
        return None  # the contract check reports the bad value
    return str(task), repr(str(data.get("name", "?")))


def _target_values(cfg: Any) -> Any:
    """The target column of ``data.path`` (None when the data has no file and target to read, or
    the file cannot be read: the config check and the data module then say why)."""
    path, target = _select(cfg, "data.path"), _select(cfg, "data.target")
    if not (isinstance(path, str) and path and isinstance(target, str) and target):
        return None
    from keel.data.table_io import TableReadError, table_format

    p = Path(path)
    try:
        fmt = table_format(p, _select(cfg, "data.format") or "auto")
    except TableReadError:
        return None
    import pandas as pd

    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(p).names
            if target not in names:
                raise TaskError(f"data.target={target!r}: no such column in {p}; columns are {names}. "
                                "Fix: data.target=<the column to predict>")
            return pd.read_parquet(p, columns=[target])[target]
        header = list(pd.read_csv(p, sep="\t" if p.suffix.lower() == ".tsv" else ",", nrows=0).columns)
        if target not in header:
            raise TaskError(f"data.target={target!r}: no such column in {p}; columns are {header}. "
                            "Fix: data.target=<the column to predict>")
        return pd.read_csv(p, sep="\t" if p.suffix.lower() == ".tsv" else ",", usecols=[target])[target]
    except TaskError:
        raise
    except Exception:  # noqa: BLE001 - unreadable: the data module reports it with its fix
        return None


def resolve_task(cfg: Any) -> ResolvedTask:
    """The run's task from ``cfg`` (see the module docstring).

    Raises:
        TaskError: an unknown ``task``, a task the contract contradicts, a target column that
            does not exist or is ambiguous, or ``task=auto`` with nothing to tell it from.
    """
    requested = _select(cfg, "task")
    requested = AUTO if requested is None else str(requested)
    if requested != AUTO:
        get_task(requested)  # an unknown name: TaskError with the allowed ones
    declared = contract_task(_select(cfg, "data.contract"))
    if declared is not None:
        task, name = declared
        if requested not in (AUTO, task):
            raise TaskError(
                f"task={requested} but the data contract {name} declares a {task} target"
                + (" (a list of classes)" if task == "classification" else " (task: regression)")
                + f". Fix: task={task} (or task=auto), or give a {requested} contract (data.contract=<file.yaml>)"
            )
        return ResolvedTask(task, "contract", name)
    if requested != AUTO:
        return ResolvedTask(requested, "config")
    if _select(cfg, "data.target_at") == "next":  # data=csv_windows: the next value of a series
        return ResolvedTask("regression", "inferred", "data.target_at=next predicts the series' next value")
    values = _target_values(cfg)
    if values is not None:
        from keel.tasks.infer import infer_task

        found = infer_task(values, str(_select(cfg, "data.target")))
        return ResolvedTask(found.task, "inferred", found.reason)
    if _select(cfg, "data.path"):
        # the file is missing or unreadable: the config check reports it; classification is only
        # a placeholder that lets the other checks run (the run is refused anyway)
        return ResolvedTask("classification", "placeholder")
    raise TaskError("task=auto: the data declares no contract and has no target column to look at, so the task "
                    "cannot be told. Fix: task=classification or task=regression")


def with_task(cfg: DictConfig, task: ResolvedTask) -> DictConfig:
    """A copy of ``cfg`` with ``task`` set and each ``auto`` default the task decides filled in:
    ``monitor.metric``, ``monitor.mode`` (from the monitored metric), ``optimized_metric`` and
    ``model.loss.name``. ``cfg`` itself is not changed."""
    out = copy.deepcopy(cfg)
    t = get_task(task.name)
    with open_dict(out):
        out.task = task.name
        if _select(out, "monitor.metric") == AUTO:
            out.monitor.metric = t.monitor
        if _select(out, "monitor.mode") == AUTO:
            metric = _select(out, "monitor.metric")
            out.monitor.mode = t.mode(metric) if isinstance(metric, str) else "max"
        if "optimized_metric" in out and _select(out, "optimized_metric") == AUTO:
            out.optimized_metric = t.optimized
        loss = _select(out, "model.loss")
        if isinstance(loss, DictConfig) and loss.get("name") == AUTO:
            loss.name = t.loss_name(loss)
    return out


__all__ = ["AUTO", "ResolvedTask", "contract_task", "resolve_task", "with_task"]
