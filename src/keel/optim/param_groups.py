"""Parameter groups: optionally keep biases and normalization weights out of weight decay."""

from __future__ import annotations

from typing import Any

from torch import nn

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, no_decay_bias_norm: bool) -> list[dict[str, Any]]:
    """Return optimizer parameter groups for ``model``'s trainable parameters.

    With ``no_decay_bias_norm``, biases and the weights of normalization layers go into a
    second group with ``weight_decay=0`` (decaying them only shrinks useful scale/shift
    terms); the first group keeps the optimizer's configured decay. Groups carry a ``name``
    so the LR monitor labels them.
    """
    if not no_decay_bias_norm:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "name": "all"}]
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, _NORMS) or pname.endswith("bias"):
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups
