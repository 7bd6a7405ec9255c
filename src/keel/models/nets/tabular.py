"""Tabular preprocessing inside the model: imputation, standardization, one-hot categories."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TabularPreprocess(nn.Module):
    """Encode raw table rows ``(N, columns)`` as the net's input ``(N, width)``.

    Input columns follow the contract's column order: numeric columns hold their values
    (NaN where missing), category columns hold the category's index (-1 where missing).
    Numeric: NaN -> train mean, then ``(x - mean) / std``; nullable columns add a 0/1
    missing indicator. Category ``j`` with ``k`` categories -> ``k + 1`` one-hot slots
    (slot 0: missing). Every statistic is a buffer fitted on the train split, so the exported
    model applies exactly the training transforms.

    Args:
        numeric: input column index of each numeric column.
        mean, std, fill: per numeric column statistics (``fill`` imputes NaN).
        nullable: per numeric column, whether to add a missing indicator.
        categorical: input column index of each category column.
        cardinalities: number of categories of each category column.
    """

    def __init__(
        self,
        numeric: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        fill: Sequence[float],
        nullable: Sequence[bool],
        categorical: Sequence[int],
        cardinalities: Sequence[int],
    ) -> None:
        super().__init__()
        if not (len(numeric) == len(mean) == len(std) == len(fill) == len(nullable)):
            raise ValueError("numeric, mean, std, fill and nullable must have one entry per numeric column")
        if len(categorical) != len(cardinalities):
            raise ValueError("categorical and cardinalities must have one entry per category column")
        if any(s <= 0 for s in std):
            raise ValueError(f"std={list(std)}: every value must be > 0")
        self.register_buffer("numeric", torch.tensor(list(numeric), dtype=torch.long))
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))
        self.register_buffer("fill", torch.tensor(list(fill), dtype=torch.float32))
        self.register_buffer("indicator", torch.tensor([i for i, n in enumerate(nullable) if n], dtype=torch.long))
        self.register_buffer("categorical", torch.tensor(list(categorical), dtype=torch.long))
        # One row of slot values per category column, padded with an impossible code.
        width = max(list(cardinalities) + [0]) + 1
        slots = torch.full((len(cardinalities), width), -2.0)
        for j, k in enumerate(cardinalities):
            slots[j, : k + 1] = torch.arange(-1, k, dtype=torch.float32)
        self.register_buffer("slots", slots)
        self.cardinalities = [int(k) for k in cardinalities]
        # Python ints, so tracing/export sees fixed branches rather than tensor conditions.
        self.n_numeric, self.n_indicator = len(numeric), int(self.indicator.numel())
        self.width = len(numeric) + int(self.indicator.numel()) + sum(k + 1 for k in self.cardinalities)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.n_numeric:
            num = x.index_select(1, self.numeric)
            missing = torch.isnan(num)
            num = torch.where(missing, self.fill, num)
            parts.append((num - self.mean) / self.std)
            if self.n_indicator:
                parts.append(missing.index_select(1, self.indicator).to(x.dtype))
        if self.cardinalities:
            codes = x.index_select(1, self.categorical)  # (N, C)
            onehot = (codes.unsqueeze(2) == self.slots.unsqueeze(0)).to(x.dtype)  # (N, C, width)
            for j, k in enumerate(self.cardinalities):
                parts.append(onehot[:, j, : k + 1])
        return torch.cat(parts, dim=1)
