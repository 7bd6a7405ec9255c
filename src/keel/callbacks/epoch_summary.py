"""One console line per epoch, and one when the run stops early.

    epoch 3  train/loss 0.2345  val/acc 0.9777 (best 0.9814 at epoch 2)  lr 9.97e-04  0.41 s

Epochs are numbered from 0, as in Lightning's progress bar and keel's checkpoint names
(``epoch003.ckpt``). The line of an epoch is written when the next one starts (or training
ends): the LightningModule computes the epoch's train metrics in its own ``on_train_epoch_end``,
which Lightning calls after the callbacks' hook of that name, so the epoch's numbers are complete
only then. It goes through the ``keel`` logger: console and ``train.log``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

__all__ = ["EpochSummary", "epoch_line", "improved", "stop_line"]


def improved(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``best`` in ``mode`` (``min``/``max``); NaN never does."""
    if not math.isfinite(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def _num(v: float) -> str:
    return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def epoch_line(epoch: int, metrics: Mapping[str, float], loss: str, monitor: str | None, best: float | None,
               best_epoch: int | None, lr: float | None, seconds: float, max_epochs: int | None = None) -> str:
    """The per-epoch line. ``metrics`` holds the epoch's values (the monitored one only when the
    epoch was validated); ``best``/``best_epoch`` include this epoch."""
    parts = [f"epoch {epoch}" + (f"/{max_epochs - 1}" if max_epochs and max_epochs > 0 else "")]
    if loss in metrics:
        parts.append(f"{loss} {_num(metrics[loss])}")
    if monitor and monitor != loss and monitor in metrics:
        value = metrics[monitor]
        if best_epoch == epoch:
            parts.append(f"{monitor} {_num(value)} (best)")
        elif best is not None:
            parts.append(f"{monitor} {_num(value)} (best {_num(best)} at epoch {best_epoch})")
        else:
            parts.append(f"{monitor} {_num(value)}")
    if lr is not None:
        parts.append(f"lr {lr:.3g}")
    parts.append(f"{seconds:.2f} s")
    return "  ".join(parts)


def stop_line(stopped_epoch: int, reason: str | None, patience_exhausted: bool, monitor: str, patience: int,
              best: float | None, best_epoch: int | None, max_epochs: int | None) -> str:
    """The line saying that early stopping ended the run (``stopped_epoch``: the last one trained)."""
    of = f" of {max_epochs}" if max_epochs and max_epochs > 0 else ""
    head = f"early stopping after epoch {stopped_epoch} ({stopped_epoch + 1}{of} epochs trained)"
    if patience_exhausted:
        best_part = f"; best {_num(best)} at epoch {best_epoch}" if best is not None else ""
        return f"{head}: {monitor} did not improve for {patience} validations{best_part}"
    return f"{head}: {reason}" if reason else head


class EpochSummary(Callback):
    """Writes :func:`epoch_line` after every training epoch, and :func:`stop_line` when
    Lightning's ``EarlyStopping`` ended the run. Rank 0 only.

    Args:
        monitor: the validation metric shown with its best (``${monitor.metric}``); None: none.
        mode: ``min`` or ``max``: which way ``monitor`` improves.
        loss: the train loss metric shown.

    Raises:
        ValueError: for a ``mode`` other than min/max.
    """

    def __init__(self, monitor: str | None, mode: str = "max", loss: str = "train/loss") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r}: expected 'min' or 'max' (the way {monitor} improves)")
        self.monitor, self.mode, self.loss = monitor, mode, loss
        self.best: float | None = None
        self.best_epoch: int | None = None
        self._open: dict[str, Any] | None = None  # the epoch under way: number, start, lr, validated

    # -- state: the best so far survives a resume
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = state_dict.get("best"), state_dict.get("best_epoch")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close(trainer)
        lr = None
        if trainer.optimizers and trainer.optimizers[0].param_groups:
            lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        self._open = {"epoch": trainer.current_epoch, "start": time.perf_counter(), "lr": lr, "value": None}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._open is None or not self.monitor:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        self._open["value"] = value
        if improved(value, self.best, self.mode):
            self.best, self.best_epoch = value, self._open["epoch"]

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close(trainer)
        es = trainer.early_stopping_callback
        if es is None or not es.stopped_epoch or not trainer.is_global_zero:
            return
        reason = getattr(es, "stopping_reason", None)
        exhausted = getattr(reason, "name", "") == "PATIENCE_EXHAUSTED"
        log.info("%s", stop_line(es.stopped_epoch, getattr(es, "stopping_reason_message", None), exhausted,
                                 es.monitor, es.patience, self.best, self.best_epoch, trainer.max_epochs))

    def _close(self, trainer: L.Trainer) -> None:
        """Write the line of the epoch under way, if any."""
        epoch, self._open = self._open, None
        if epoch is None or not trainer.is_global_zero:
            return
        metrics = {}
        if self.loss in trainer.callback_metrics:
            metrics[self.loss] = float(trainer.callback_metrics[self.loss])
        if epoch["value"] is not None:
            metrics[self.monitor] = epoch["value"]
        log.info("%s", epoch_line(epoch["epoch"], metrics, self.loss, self.monitor, self.best, self.best_epoch,
                                  epoch["lr"], time.perf_counter() - epoch["start"], trainer.max_epochs))
