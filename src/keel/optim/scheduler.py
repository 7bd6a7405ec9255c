"""Build a Lightning ``lr_scheduler`` dict from the ``scheduler`` config group."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    OneCycleLR,
    ReduceLROnPlateau,
    SequentialLR,
)


def _target(partial: Any) -> Any:
    return partial.func if isinstance(partial, functools.partial) else partial


def build_scheduler(
    spec: Mapping[str, Any], optimizer: Optimizer, total_epochs: int, total_steps: int
) -> dict[str, Any] | None:
    """Return the ``lr_scheduler`` entry of ``configure_optimizers``, or None.

    Args:
        spec: the ``scheduler`` config group as plain data: ``scheduler`` (a ``_partial_``
            torch scheduler config or None), ``interval`` (``epoch``/``step``), ``frequency``,
            ``monitor`` (metric for ReduceLROnPlateau), ``warmup`` (intervals of linear
            warmup) and ``warmup_start_factor``.
        optimizer: the optimizer to schedule.
        total_epochs, total_steps: the run's length, used where the config leaves
            ``T_max`` (cosine: the run's length minus the warmup) or ``total_steps``
            (one-cycle) as null, so the schedule ends with the run.

    Raises:
        ValueError: an interval other than epoch/step; warmup on ReduceLROnPlateau (it
            cannot be chained) or OneCycleLR (it warms up itself); a plateau scheduler
            without ``monitor``; one-cycle stepping per epoch.
    """
    if spec.get("scheduler") is None:
        return None
    interval = spec["interval"]
    if interval not in ("epoch", "step"):
        raise ValueError(f"scheduler.interval={interval!r}: expected 'epoch' or 'step'")
    warmup = int(spec["warmup"])
    horizon = total_steps if interval == "step" else total_epochs
    partial = instantiate(spec["scheduler"])
    target = _target(partial)
    kwargs: dict[str, Any] = {}
    keywords = partial.keywords if isinstance(partial, functools.partial) else {}
    if target is CosineAnnealingLR and keywords.get("T_max") is None:
        kwargs["T_max"] = max(horizon - warmup, 1)
    if target is OneCycleLR and warmup:
        raise ValueError(
            f"scheduler.warmup={warmup}: OneCycleLR warms up itself (pct_start). Fix: scheduler.warmup=0"
        )
    if target is OneCycleLR and keywords.get("total_steps") is None:
        if interval != "step":
            raise ValueError("OneCycleLR steps every batch: set scheduler.interval=step")
        kwargs["total_steps"] = max(total_steps, 1)
    if target is ReduceLROnPlateau:
        if warmup:
            raise ValueError(
                f"scheduler.warmup={warmup}: ReduceLROnPlateau cannot follow a warmup. Fix: scheduler.warmup=0"
            )
        if not spec.get("monitor"):
            raise ValueError("ReduceLROnPlateau needs scheduler.monitor, e.g. scheduler.monitor=val/loss")
    scheduler: torch.optim.lr_scheduler.LRScheduler | ReduceLROnPlateau = partial(optimizer, **kwargs)
    if warmup > 0:
        ramp = LinearLR(optimizer, start_factor=float(spec["warmup_start_factor"]), end_factor=1.0, total_iters=warmup)
        scheduler = SequentialLR(optimizer, schedulers=[ramp, scheduler], milestones=[warmup])
    out: dict[str, Any] = {"scheduler": scheduler, "interval": interval, "frequency": int(spec["frequency"])}
    if spec.get("monitor"):
        out["monitor"] = spec["monitor"]
    return out
