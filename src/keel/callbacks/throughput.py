"""Log training (and validation) throughput every epoch: ``train/samples_per_s``, ``train/steps_per_s``, ``val/samples_per_s``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch


def batch_size(batch: Any) -> int:
    """Rows in a batch: the first dimension of its first tensor (a Python int: no host sync).

    Accepts a tensor, a tuple/list (``(x, y)``) or a mapping of tensors; 0 when none is found.
    """
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        n = batch_size(item)
        if n:
            return n
    return 0


def rates(samples: int, steps: int, seconds: float, world_size: int = 1) -> dict[str, float]:
    """Throughput of one process's epoch, for the whole job.

    Args:
        samples: rows this process handled.
        steps: optimizer steps (the same on every process).
        seconds: wall time of the epoch on this process.
        world_size: processes: every one handles as many rows (train shards are padded to the
            same size), so the job's samples/s is this process's times ``world_size``.

    Returns:
        ``{"samples_per_s", "steps_per_s"}``; empty when ``seconds <= 0`` (nothing to report).
    """
    if seconds <= 0:
        return {}
    return {"samples_per_s": samples * world_size / seconds, "steps_per_s": steps / seconds}


class _Clock:
    """Wall time from :meth:`begin` to the last :meth:`mark`, minus time excluded in between
    (``excluded`` is a running total of seconds spent elsewhere, e.g. in validation)."""

    def __init__(self) -> None:
        self.start = self.last = 0.0
        self.samples = 0
        self._excluded_start = self._excluded_last = 0.0

    def begin(self, excluded: float = 0.0) -> None:
        self.start = self.last = time.perf_counter()
        self.samples = 0
        self._excluded_start = self._excluded_last = excluded

    def mark(self, rows: int = 0, excluded: float = 0.0) -> None:
        self.samples += rows
        self.last = time.perf_counter()
        self._excluded_last = excluded

    @property
    def seconds(self) -> float:
        return (self.last - self.start) - (self._excluded_last - self._excluded_start)


def _sync(device: torch.device) -> None:
    # Once per epoch boundary: queued GPU work belongs to the epoch being timed.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Throughput(L.Callback):
    """Every epoch, log to every logger (rank 0, no ``self.log``: throughput stays out of the
    run's metrics, which must be identical for identical seeds):

    - ``train/samples_per_s``: training rows per second over all processes (this
      process's rate times the world size; DDP train shards are equal by construction);
    - ``train/steps_per_s``: optimizer steps per second;
    - ``val/samples_per_s`` (``val=True``): validation rows per second over all processes
      (eval shards differ by at most one row per process).

    The train epoch is timed from ``on_train_epoch_start`` to the end of its last batch, minus
    any validation run inside it; batch sizes are read from tensor shapes, so no step waits for
    the device (a CUDA device is synchronized once at each end of a timed epoch).

    Args:
        val: also log validation throughput.
    """

    def __init__(self, val: bool = True) -> None:
        self.val = val
        self._train = _Clock()
        self._valid = _Clock()
        self._step_start = 0
        self._val_started = 0.0
        self._val_seconds = 0.0  # running total of validation time inside fit

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(pl_module.device)
        self._train.begin(self._val_seconds)
        self._step_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx + 1 == trainer.num_training_batches:
            _sync(pl_module.device)
        self._train.mark(batch_size(batch), self._val_seconds)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        r = rates(self._train.samples, trainer.global_step - self._step_start, self._train.seconds, trainer.world_size)
        self._log(trainer, {f"train/{k}": v for k, v in r.items()})

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # validation in the middle of a train epoch (val_check_interval < 1) is not training time
        if trainer.training:
            self._val_seconds += time.perf_counter() - self._val_started

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            _sync(pl_module.device)
            self._valid.begin()

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._valid.mark(batch_size(batch))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.val:
            return
        _sync(pl_module.device)
        self._valid.mark()
        r = rates(self._valid.samples, 0, self._valid.seconds, trainer.world_size)
        if r:
            self._log(trainer, {"val/samples_per_s": r["samples_per_s"]})

    @staticmethod
    def _log(trainer: L.Trainer, metrics: dict[str, float]) -> None:
        if not metrics or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
