"""Base DataModule for datasets that fit in memory: split, contract check, fast loaders."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from keel.data.batches import IndexBatchSampler
from keel.data.contract import ContractReport, ContractViolationError, TensorContract, Violation
from keel.data.split import stratified_split

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class InMemoryDataModule(L.LightningDataModule):
    """Reads all rows once, splits them (seeded, stratified), checks every split against the
    contract, fits standardization on the train split and serves whole batches by tensor
    indexing. Subclasses implement :meth:`load`.

    Args:
        contract: the data contract as config data (see :class:`TensorContract`).
        batch_size: rows per batch on each process.
        val_fraction, test_fraction: fractions of all rows held out.
        split_seed: seed of the split (independent of the run seed).
        seed: seed of the per-epoch shuffle (the run seed).
        num_workers, pin_memory: DataLoader settings.
        on_violation: ``raise``: stop before training and list every violation.

    Raises:
        ContractViolationError: in :meth:`setup`, when any split breaks the contract.
    """

    def __init__(
        self,
        contract: Mapping[str, Any],
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        on_violation: str = "raise",
    ) -> None:
        super().__init__()
        if on_violation != "raise":
            raise ValueError(f"on_violation={on_violation!r}: expected 'raise'")
        self.contract = TensorContract.from_dict(contract)
        self.batch_size = batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split_seed, self.seed = split_seed, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.reports: dict[str, ContractReport] = {}
        self._data: dict[str, TensorDataset] = {}
        self._labels: dict[str, np.ndarray] = {}
        self._mean: list[float] = []
        self._std: list[float] = []

    @abstractmethod
    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Return all rows: features ``(N, *contract.shape)`` and integer labels ``(N,)``."""

    @property
    def source(self) -> str:
        """Where the rows come from, for error messages."""
        return type(self).__name__

    def setup(self, stage: str | None = None) -> None:
        """Load, split and check every split once (later calls are no-ops)."""
        if self._data:
            return
        x, y = self.load()
        if len(x) != len(y):
            raise ContractViolationError(
                [ContractReport(self.contract.name, "all", len(x), (_length_violation(len(x), len(y)),))], self.source
            )
        parts = stratified_split(np.asarray(y), self.val_fraction, self.test_fraction, self.split_seed)
        reports = {name: self.contract.check(x[idx], y[idx], name, row_ids=idx) for name, idx in parts.items()}
        self.reports = reports
        if any(not r.ok for r in reports.values()):
            raise ContractViolationError(list(reports.values()), self.source)
        for name, idx in parts.items():
            xs = torch.from_numpy(np.ascontiguousarray(x[idx]))
            ys = torch.from_numpy(np.asarray(y[idx]).astype(np.int64))
            self._data[name] = TensorDataset(xs, ys)
            self._labels[name] = np.asarray(y[idx])
        self._fit_standardization(self._data["train"].tensors[0])
        log.info(
            "data %s: %s rows -> train %d, val %d, test %d; contract %r holds on every split",
            self.source, len(x), *(len(self._data[s]) for s in SPLITS), self.contract.name,
        )

    def _fit_standardization(self, x: torch.Tensor) -> None:
        # Per channel for images ([C, H, W]), per feature for flat samples ([F]).
        axis_dims = [0] + list(range(2, x.ndim))
        xf = x.double()
        self._mean = xf.mean(dim=axis_dims).tolist()
        std = xf.std(dim=axis_dims).clamp_min(1e-6)
        self._std = std.tolist()

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Standardization fitted on the train split, as plain data (stored in checkpoints)."""
        if not self._mean:
            raise RuntimeError("call setup() before reading preprocessing")
        return {"mean": self._mean, "std": self._std, "sample_ndim": len(self.contract.shape)}

    def class_counts(self, split: str = "train") -> list[int]:
        """Rows per class of ``split``, in contract class order."""
        labels = self._labels[split]
        return [int((labels == c).sum()) for c in self.contract.classes]

    def split_sizes(self) -> dict[str, int]:
        return {s: len(d) for s, d in self._data.items()}

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, split: str, train: bool) -> DataLoader:
        if not self._data:
            self.setup()
        rank, world = self._rank_world()
        sampler = IndexBatchSampler(
            len(self._data[split]), self.batch_size, shuffle=train, seed=self.seed,
            rank=rank, world_size=world, pad=train,
        )
        return DataLoader(
            self._data[split], sampler=sampler, batch_size=None, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


def _length_violation(nx: int, ny: int) -> Violation:
    return Violation("shape", "label", abs(nx - ny), nx, detail=f"{nx} feature rows but {ny} labels")
