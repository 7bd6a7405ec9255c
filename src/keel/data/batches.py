"""Whole-batch index sampling for in-memory data, sharded across DDP ranks."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch


class IndexBatchSampler:
    """Yields ``LongTensor`` index batches of this rank's shard of ``n`` rows.

    Used as a DataLoader ``sampler`` with ``batch_size=None`` over a dataset that accepts
    index tensors, so a batch is one tensor gather instead of ``batch_size`` ``__getitem__``
    calls and a collate.

    Args:
        n: rows in the split.
        batch_size: rows per batch (the last batch may be smaller unless ``drop_last``).
        shuffle: draw a new permutation each epoch from ``seed + epoch`` (identical on all ranks).
        seed: base seed of the permutation.
        rank, world_size: this process's shard: rows ``perm[rank::world_size]``.
        pad: repeat leading rows so every rank gets the same number (training: DDP needs
            equal step counts). Evaluation leaves it False so each row is counted once.
        drop_last: drop a final partial batch.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = False,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside world_size={world_size}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.pad, self.drop_last = rank, world_size, pad, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of each epoch: a new shuffle per epoch."""
        self.epoch = epoch

    def _shard_size(self) -> int:
        if self.pad:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        size = self._shard_size()
        return size // self.batch_size if self.drop_last else math.ceil(size / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.arange(self.n)
        if self.world_size > 1:
            if self.pad and self.n % self.world_size:
                total = math.ceil(self.n / self.world_size) * self.world_size
                perm = perm.repeat(math.ceil(total / self.n))[:total]  # wraps even when n < world_size
            perm = perm[self.rank :: self.world_size]
        stop = len(self) * self.batch_size if self.drop_last else perm.numel()
        for start in range(0, stop, self.batch_size):
            yield perm[start : start + self.batch_size]
