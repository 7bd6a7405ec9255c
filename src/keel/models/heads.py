"""What a net's raw output becomes at the end of the model: the task's outputs, in the exported graph too."""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """Logits ``(N, C)`` -> ``(logits, softmax probabilities)``."""

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits, torch.softmax(logits, dim=-1)


class RegressionHead(nn.Module):
    """The net predicts the target standardized with the train split's ``mean`` and ``std``;
    this head restores the target's own units: ``(N, 1)`` -> ``(prediction (N,),)``.

    Training compares the standardized prediction with :meth:`standardize` of the target, so the
    loss is on a unit scale whatever the target's units; the exported graph ends here, so a bundle
    answers in the target's units.
    """

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"target std={std!r}: expected > 0 (a constant target cannot be learned)")
        self.register_buffer("mean", torch.tensor(float(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(float(std), dtype=torch.float32))

    def standardize(self, y: torch.Tensor) -> torch.Tensor:
        return (y.float() - self.mean) / self.std

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor]:
        return (z[..., 0].float() * self.std + self.mean,)


__all__ = ["ClassificationHead", "RegressionHead"]
