"""Input standardization stored as buffers, so the exported model applies it itself."""

from collections.abc import Sequence

import torch
from torch import nn


class Standardize(nn.Module):
    """``(x - mean) / std`` with statistics fitted on the train split.

    Args:
        mean, std: per-channel (images, shape ``[C]``) or per-feature (flat, shape ``[F]``)
            statistics; a single value applies to every element.
        sample_ndim: rank of one sample; statistics broadcast over its axis 0 (channels or
            features) and over every later axis.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], sample_ndim: int) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std={list(std)}: every value must be > 0")
        view = (len(mean),) + (1,) * max(sample_ndim - 1, 0)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(view))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(view))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
