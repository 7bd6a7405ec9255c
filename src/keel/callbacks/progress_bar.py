"""Lightning's TQDM progress bar with the running train loss, and off when nobody watches it.

Uses the bar's documented extension point (``get_metrics``, "implement this to override the
items displayed"): the loss is read only when the bar redraws (every ``refresh_rate`` batches),
so training steps pay nothing for it.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["ProgressBar"]


class ProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` showing ``loss``: the mean train loss over the last ``window`` batches.

    Args:
        refresh_rate, process_position, leave: as ``TQDMProgressBar``; 0 hides the bar.
        only_on_terminal: hide the bar when stderr is not a terminal (a log file, a CI job, a
            SLURM output): redraws written to a file are noise, and keel's per-epoch line
            (keel.callbacks.EpochSummary) says the same once per epoch.
        window: batches in the running loss.
    """

    def __init__(self, refresh_rate: int = 10, process_position: int = 0, leave: bool = False,
                 only_on_terminal: bool = True, window: int = 20) -> None:
        if only_on_terminal and not _stderr_is_terminal():
            refresh_rate = 0
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        if window < 1:
            raise ValueError(f"window={window}: expected at least 1 batch")
        self.window = window

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the run is named by its directory, not a version number
        running = getattr(pl_module, "running_train_loss", None)
        if trainer.training and callable(running):
            value = running(self.window)
            if value is not None:
                return {"loss": value, **items}  # first: what a person watches
        return items


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False
