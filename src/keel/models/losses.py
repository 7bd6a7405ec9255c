"""The tasks' training losses as modules (their buffers travel with the model)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

REGRESSION_LOSSES = ("mse", "huber", "l1")


class CrossEntropy(nn.Module):
    """Cross-entropy on float32 logits, with optional per-class ``weight`` and ``label_smoothing``."""

    def __init__(self, num_classes: int, weight: Sequence[float] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if weight is not None and len(weight) != num_classes:
            raise ValueError(f"model.loss.class_weights has {len(weight)} values but the data has {num_classes} classes")
        self.register_buffer("weight", None if weight is None else torch.tensor(list(weight), dtype=torch.float32))
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, weight=self.weight, label_smoothing=self.label_smoothing)


class RegressionLoss(nn.Module):
    """``mse``, ``huber`` (``delta`` in standard deviations of the target) or ``l1`` of standardized values."""

    def __init__(self, name: str = "mse", delta: float = 1.0) -> None:
        super().__init__()
        if name not in REGRESSION_LOSSES:
            raise ValueError(f"model.loss.name={name!r}: expected one of {', '.join(REGRESSION_LOSSES)} for regression")
        if not delta > 0:
            raise ValueError(f"model.loss.huber_delta={delta!r}: expected > 0")
        self.name, self.delta = name, float(delta)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.name == "mse":
            return F.mse_loss(pred, target)
        if self.name == "huber":
            return F.huber_loss(pred, target, delta=self.delta)
        return F.l1_loss(pred, target)


__all__ = ["CrossEntropy", "REGRESSION_LOSSES", "RegressionLoss"]
