"""Build the optimizer from its config, with torch's fused kernel where it can run.

``optimizer.fused`` (keel's key, not passed to torch as is):

- ``auto`` (the default of conf/optimizer/adam, adamw, sgd): the fused kernel when the
  optimizer has one and it can run here (every parameter a plain floating-point tensor on a
  device torch has fused kernels for: cpu, cuda, mps, xpu, ...; not ``16-mixed`` gradient
  scaling together with gradient clipping, which Lightning refuses for optimizers that unscale
  inside ``step``). One kernel updates every parameter: on this machine's CPU an Adam step of
  the digits mlp takes ~90 us instead of ~350-550 us (bench/bench_train.py measures the loop).
- ``true``: the fused kernel, or an error saying why it cannot run.
- ``false`` / absent: torch's default implementation.

The choice is stored in the optimizer's state like its other settings, so a run resumed from a
checkpoint keeps the implementation it was started with.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate

log = logging.getLogger("keel")

FUSED_CHOICES = ("auto", True, False, None)


def fused_devices() -> tuple[str, ...]:
    """Device types torch has fused optimizer kernels for."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        return tuple(_get_fused_kernels_supported_devices())
    except ImportError:  # a torch that moved the helper: the devices every recent release supports
        return ("cpu", "cuda", "mps", "xpu")


def has_fused(factory: Any) -> bool:
    """Whether the optimizer class behind ``factory`` (a class or a ``functools.partial`` of
    one, as Hydra's ``_partial_: true`` gives) takes a ``fused`` argument."""
    target = factory.func if isinstance(factory, functools.partial) else factory
    try:
        return "fused" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def fused_blocker(params: Iterable[torch.Tensor], *, grad_scaler: bool = False, clip: bool = False) -> str | None:
    """Why the fused kernel cannot update ``params`` here, or None when it can."""
    devices = fused_devices()
    for p in params:
        if type(p) not in (torch.Tensor, torch.nn.Parameter):
            return f"the parameters are {type(p).__name__} objects (e.g. sharded), not plain tensors"
        if not p.is_floating_point():
            return f"a parameter has dtype {p.dtype}"
        if p.device.type not in devices:
            return f"the parameters are on {p.device.type}, which has no fused kernels"
    if grad_scaler and clip:
        return ("trainer.precision=16-mixed scales the gradients and trainer.gradient_clip_val is set: "
                "Lightning cannot clip for an optimizer that unscales inside its step")
    return None


def build_optimizer(config: Mapping[str, Any], groups: list[dict[str, Any]], *, grad_scaler: bool = False,
                    clip: bool = False) -> torch.optim.Optimizer:
    """The optimizer of ``config`` (a ``_partial_`` optimizer config) over parameter ``groups``.

    Args:
        config: the ``optimizer`` config group, ``fused`` included (see the module doc).
        groups: parameter groups (:func:`keel.optim.param_groups`).
        grad_scaler: a ``16-mixed`` GradScaler scales the gradients.
        clip: gradient clipping is on (``trainer.gradient_clip_val``).

    Raises:
        ValueError: ``fused`` is not one of auto/true/false, or ``true`` where it cannot run.
    """
    cfg = dict(config)
    fused = cfg.pop("fused", None)
    if not (fused is None or fused == "auto" or isinstance(fused, bool)):
        raise ValueError(f"optimizer.fused={fused!r}: expected auto, true or false. Fix: optimizer.fused=auto")
    factory = instantiate(cfg)
    if fused in (None, False):
        return factory(groups)
    name = getattr(getattr(factory, "func", factory), "__name__", str(factory))
    if not has_fused(factory):
        if fused is True:
            raise ValueError(f"optimizer.fused=true: {name} has no fused implementation. Fix: optimizer.fused=false")
        return factory(groups)
    blocker = fused_blocker((p for g in groups for p in g["params"]), grad_scaler=grad_scaler, clip=clip)
    if blocker is not None:
        if fused is True:
            raise ValueError(f"optimizer.fused=true: {blocker}. Fix: optimizer.fused=auto (uses the fused kernel "
                             "only where it can run) or optimizer.fused=false")
        log.info("optimizer: %s without the fused kernel: %s", name, blocker)
        return factory(groups)
    return factory(groups, fused=True)


def align_state_layout(optimizer: torch.optim.Optimizer) -> int:
    """Give every per-parameter state tensor (Adam's moments, SGD's momentum buffer ...) its
    parameter's memory layout; returns how many were copied.

    Fused kernels walk a parameter, its gradient and its state as flat memory: a 4D weight in
    channels-last layout (``model.channels_last``) with moments restored from a checkpoint taken
    in the other layout would be updated element by element against the wrong moments, with no
    error (measured: torch's fused Adam, a 0.16 max error after one step). The values are kept;
    only the strides change, and only where they differ.
    """
    copied = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            for key, value in state.items():
                if (isinstance(value, torch.Tensor) and value.shape == p.shape and value.dim() > 1
                        and value.stride() != p.stride()):
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
                    copied += 1
    return copied


__all__ = ["FUSED_CHOICES", "align_state_layout", "build_optimizer", "fused_blocker", "fused_devices", "has_fused"]
