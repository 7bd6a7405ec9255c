"""Throughput callback: batch sizes without host syncs, the rate arithmetic, epoch timing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from keel.callbacks import Throughput
from keel.callbacks import throughput as tp
from keel.callbacks.throughput import batch_size, rates


def test_batch_size_reads_the_first_tensor_shape():
    x, y = torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)
    assert batch_size((x, y)) == 5
    assert batch_size([x, y]) == 5
    assert batch_size({"x": torch.zeros(7, 2), "y": torch.zeros(7)}) == 7
    assert batch_size(x) == 5
    assert batch_size(torch.tensor(3.0)) == 1  # a scalar is one sample
    assert batch_size(("meta", [torch.zeros(4, 1)])) == 4  # nested, non-tensors skipped
    assert batch_size(("no tensors", 3)) == 0
    assert isinstance(batch_size((x, y)), int)


def test_rates_scale_samples_by_world_size_not_steps():
    assert rates(640, 10, 2.0) == {"samples_per_s": 320.0, "steps_per_s": 5.0}
    # two processes, each 640 rows in 2 s: the job does 640 rows/s, still 5 optimizer steps/s
    assert rates(640, 10, 2.0, world_size=2) == {"samples_per_s": 640.0, "steps_per_s": 5.0}
    assert rates(640, 10, 0.0) == {}
    assert rates(0, 0, -1.0) == {}


class _Logger:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _trainer(logger: _Logger, world_size: int = 1, rank_zero: bool = True) -> SimpleNamespace:
    return SimpleNamespace(global_step=0, num_training_batches=3, world_size=world_size, is_global_zero=rank_zero,
                           loggers=[logger], sanity_checking=False, training=True)


def test_epoch_timing_excludes_validation_and_logs_rates(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(tp.time, "perf_counter", clock)
    logger = _Logger()
    trainer = _trainer(logger, world_size=2)
    module = SimpleNamespace(device=torch.device("cpu"))
    batch = (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    cb = Throughput(val=True)

    # sanity check: not timed, nothing logged
    trainer.sanity_checking = True
    cb.on_validation_start(trainer, module)
    cb.on_validation_epoch_start(trainer, module)
    cb.on_validation_batch_end(trainer, module, None, batch, 0)
    cb.on_validation_epoch_end(trainer, module)
    trainer.sanity_checking = False
    assert logger.rows == []

    cb.on_train_epoch_start(trainer, module)  # t = 0
    for i, t in enumerate([1.0, 2.0]):
        clock.now = t
        trainer.global_step += 1
        cb.on_train_batch_end(trainer, module, None, batch, i)
    # validation in the middle of the epoch (val_check_interval < 1): 1 s, not training time
    clock.now = 2.5
    cb.on_validation_start(trainer, module)
    cb.on_validation_epoch_start(trainer, module)
    clock.now = 3.0
    cb.on_validation_batch_end(trainer, module, None, (torch.zeros(10, 2), torch.zeros(10)), 0)
    clock.now = 3.5
    cb.on_validation_epoch_end(trainer, module)
    cb.on_validation_end(trainer, module)
    assert logger.rows == [(2, {"val/samples_per_s": pytest.approx(10 * 2 / 1.0)})]
    clock.now = 4.0
    trainer.global_step += 1
    cb.on_train_batch_end(trainer, module, None, batch, 2)
    # end-of-epoch validation and checkpointing happen after the last batch: not counted either
    clock.now = 9.0
    cb.on_validation_start(trainer, module)
    clock.now = 10.0
    cb.on_validation_end(trainer, module)
    clock.now = 11.0
    cb.on_train_epoch_end(trainer, module)

    step, metrics = logger.rows[-1]
    assert step == 3
    # 3 batches of 4 rows in 4 s minus 1 s of validation = 3 s; x2 processes
    assert metrics == {"train/samples_per_s": pytest.approx(12 * 2 / 3.0),
                       "train/steps_per_s": pytest.approx(3 / 3.0)}


def test_only_rank_zero_logs_and_val_can_be_off(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(tp.time, "perf_counter", clock)
    logger = _Logger()
    module = SimpleNamespace(device=torch.device("cpu"))
    batch = (torch.zeros(2, 1), torch.zeros(2))
    for rank_zero, val in ((False, True), (True, False)):
        trainer = _trainer(logger, rank_zero=rank_zero)
        cb = Throughput(val=val)
        cb.on_validation_epoch_start(trainer, module)
        clock.now += 1.0
        cb.on_validation_batch_end(trainer, module, None, batch, 0)
        cb.on_validation_epoch_end(trainer, module)
    assert logger.rows == []


def test_an_epoch_without_batches_logs_nothing(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(tp.time, "perf_counter", clock)
    logger = _Logger()
    trainer = _trainer(logger)
    module = SimpleNamespace(device=torch.device("cpu"))
    cb = Throughput()
    cb.on_train_epoch_start(trainer, module)
    clock.now = 5.0
    cb.on_train_epoch_end(trainer, module)
    assert logger.rows == []
