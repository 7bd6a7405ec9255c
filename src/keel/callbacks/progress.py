"""Lightning's TQDM progress bar, drawn once per update instead of two or three times."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from lightning.pytorch.utilities.types import STEP_OUTPUT


def _redraw_if_changed(bar: Any, metrics: dict[str, Any]) -> None:
    """Set the bar's postfix to ``metrics``; redraw only if that changed what it shows."""
    before = bar.postfix
    bar.set_postfix(metrics, refresh=False)
    if bar.postfix != before:
        bar.refresh()


class ProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` with the same bars, texts and ``refresh_rate``, and fewer redraws.

    Lightning's bar redraws the whole line twice at every update of the training bar (once
    for the new count, once more for the postfix) and twice at each epoch start (reset, then
    the description), and once more at the epoch end even when nothing shown has changed. A
    redraw formats the line and writes it to the terminal (~100 us); on a small model with
    short epochs that was 1-1.5 ms per epoch, several training steps. Here each update is one
    redraw: the postfix and the description are set without drawing and shown by the redraw
    that follows, and the epoch end redraws only if its metrics differ from those on screen.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        bar.set_description(f"Epoch {trainer.current_epoch}", refresh=False)
        bar.initial = 0
        bar.total = convert_inf(self.total_train_batches)  # None for a loader of unknown length
        bar.reset()  # the one redraw

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT,
                           batch: Any, batch_idx: int) -> None:
        n = batch_idx + 1
        bar = self.train_progress_bar
        if bar is not None and self._should_update(n, bar.total):
            if not bar.disable:
                bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
                bar.n = n
                bar.refresh()  # the one redraw: count and postfix

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            _redraw_if_changed(self.train_progress_bar, self.get_metrics(trainer, pl_module))
        if self._leave:
            self.train_progress_bar.close()


__all__ = ["ProgressBar"]
