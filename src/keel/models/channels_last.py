"""Whether a net's 4D weights (convolutions) are kept in channels-last memory layout while fitting."""

from __future__ import annotations

import torch
from torch import nn


def resolve_channels_last(setting: bool | str, net: nn.Module, device_type: str, world_size: int) -> tuple[bool, str]:
    """Whether to fit ``net`` with its 4D weights in channels-last layout, and why (``""``: nothing
    to say: a net without 4D weights, or ``false``).

    ``auto``: yes on the CPU in a single process (oneDNN picks its channels-last convolutions:
    the digits cnn trains ~1.2x faster, bench/bench_train.py); no on accelerators, where the gain
    depends on the precision and the GPU (``true`` asks for it), and no under DDP, whose gradient
    buckets are laid out for the default layout (torch warns of the mismatch).
    """
    if not (setting == "auto" or isinstance(setting, bool)):
        raise ValueError(f"model.channels_last={setting!r}: expected auto, true or false "
                         "(e.g. model.channels_last=auto)")
    if setting is False or not any(p.dim() == 4 for p in net.parameters()):
        return False, ""
    if setting is True:
        return True, "model.channels_last=true"
    if device_type != "cpu":
        return False, f"auto: on {device_type} only with model.channels_last=true"
    if world_size > 1:
        return False, f"auto: not under DDP ({world_size} processes)"
    return True, "auto: convolutions on the CPU"


def apply_channels_last(net: nn.Module, setting: bool | str, device_type: str, world_size: int) -> tuple[bool, str]:
    """:func:`resolve_channels_last`, and ``net``'s 4D weights moved to channels-last layout when
    it says yes (in place: the same Parameter objects, other strides)."""
    use, why = resolve_channels_last(setting, net, device_type, world_size)
    if use:
        net.to(memory_format=torch.channels_last)
    return use, why


__all__ = ["apply_channels_last", "resolve_channels_last"]
