"""Lightning's TQDM progress bar, drawn once per update and at most every ``min_interval`` seconds."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf
from lightning.pytorch.utilities.types import STEP_OUTPUT


class ThrottledTqdm(Tqdm):
    """Lightning's ``Tqdm`` whose ``refresh()`` draws at most once every ``min_interval``
    seconds (tqdm's own ``mininterval``, which Lightning bypasses by calling ``refresh()``).
    A draw skipped for that reason is remembered: ``flush()`` draws it."""

    def __init__(self, *args: Any, min_interval: float = 0.0, **kwargs: Any) -> None:
        self.min_interval = float(min_interval)
        self.pending = False
        self._drawn_at = -math.inf
        super().__init__(*args, **kwargs)

    def refresh(self, nolock: bool = False, lock_args: Any = None) -> bool:
        now = time.monotonic()
        if now - self._drawn_at < self.min_interval:
            self.pending = True
            return False
        self._drawn_at, self.pending = now, False
        return super().refresh(nolock=nolock, lock_args=lock_args)

    def flush(self) -> None:
        """Draw the current state if a draw was skipped since the last one."""
        if self.pending and not self.disable:
            self.unthrottle()
            self.refresh()

    def unthrottle(self) -> None:
        """Let the next ``refresh()`` draw however soon it comes."""
        self._drawn_at = -math.inf


def _redraw_if_changed(bar: Any, metrics: dict[str, Any]) -> None:
    """Set the bar's postfix to ``metrics``; redraw only if that changed what it shows."""
    before = bar.postfix
    bar.set_postfix(metrics, refresh=False)
    if bar.postfix != before:
        bar.refresh()


class ProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` with the same bars, texts and ``refresh_rate``, and far fewer redraws.

    Lightning's bar redraws the whole line twice at every update of the training bar (once
    for the new count, once more for the postfix), twice at each epoch start (reset under the
    previous epoch's name, then the name) and again at the epoch end even when nothing shown
    has changed, however little time has passed. A redraw formats the line and writes it to
    the terminal (40-50 us to a file, more to a terminal); with short epochs that is most of
    the bar's cost, and in a log file (SLURM, CI) every frame is kept.

    Here each update of the training bar is one redraw (the postfix and the name are set
    without drawing and shown by the draw that follows), the epoch end redraws only if its
    metrics differ from those on screen, and the training bar's updates draw at most every
    ``min_interval`` seconds (tqdm's default ``mininterval``, 0.1 s): each epoch's start is
    drawn, and a skipped draw is made at the epoch end and before validation, so the bar never
    stays behind while nothing moves.
    ``min_interval=0`` draws every ``refresh_rate`` batches as Lightning does.

    Args:
        refresh_rate: batches between updates; 0 hides the bars.
        process_position: the bars' line offset (several processes or progress bars at once).
        leave: keep each epoch's training bar on screen.
        min_interval: the least seconds between two draws of the training bar.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False,
                 min_interval: float = 0.1) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        if not (isinstance(min_interval, (int, float)) and min_interval >= 0):
            raise ValueError(f"callbacks.progress_bar.min_interval={min_interval!r}: expected seconds >= 0. "
                             "Fix: e.g. callbacks.progress_bar.min_interval=0.1 (0: draw at every update)")
        self.min_interval = float(min_interval)

    def init_train_tqdm(self) -> Tqdm:
        """Lightning's training bar, throttled to one draw per ``min_interval``."""
        return ThrottledTqdm(
            desc=self.train_description,
            position=(2 * self.process_position),
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
            min_interval=self.min_interval,
        )

    def _flush_train_bar(self) -> None:
        bar = self._train_progress_bar
        if isinstance(bar, ThrottledTqdm):
            bar.flush()

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        bar.set_description(f"Epoch {trainer.current_epoch}", refresh=False)
        bar.initial = 0
        bar.total = convert_inf(self.total_train_batches)  # None for a loader of unknown length
        if isinstance(bar, ThrottledTqdm):
            bar.unthrottle()  # a new epoch is always shown, however soon after the last draw
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
            self._flush_train_bar()
        if self._leave:
            self.train_progress_bar.close()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush_train_bar()  # the training bar shows where training stopped for validation
        super().on_validation_start(trainer, pl_module)


__all__ = ["ProgressBar", "ThrottledTqdm"]
