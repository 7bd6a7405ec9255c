"""Stop on SIGTERM / SIGUSR1 with a checkpoint that resumes exactly where training stopped.

Clusters ask a job to stop before they kill it: SLURM sends ``--signal=USR1@90`` before the
time limit and SIGTERM on preemption or ``scancel``; Kubernetes and torchrun send SIGTERM.
:class:`StopSignals` turns either signal into a request; while training runs,
:class:`Preemption` honours it at the end of the current training batch: it writes
``checkpoints/last.ckpt`` (atomically, through keel's checkpoint IO) with the position inside
the epoch, and raises :class:`Interrupted`. Outside the training loop (data setup, testing,
export) the request stops the run at once: the newest epoch checkpoint is already on disk.
``python train.py ckpt_path=auto run_dir=DIR`` continues from the saved batch: the train
loader's state in the checkpoint (:class:`keel.data.batches.ResumableLoader`) skips the
batches already trained and the RNG states are restored (:class:`keel.callbacks.RngState`),
so the resumed run draws what the uninterrupted one would have.

Under SLURM (``SLURM_JOB_ID`` set, ``scontrol`` on PATH) the job is requeued after the
checkpoint is written, as Lightning's own SLURM handler does; keel installs its handler
first, so Lightning's (which saves an ``hpc_ckpt`` keel's resume would not look for) stays off.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L

log = logging.getLogger("keel")

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Interrupted(SystemExit):
    """The run stopped on a signal; exit status ``128 + signum`` as a shell reports a signal death."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """Handlers for SIGTERM and SIGUSR1 that record a stop request.

    While a :class:`Preemption` callback is active (the training loop runs), a signal is only
    recorded and forwarded to DDP child processes; the callback stops at the next batch end.
    Otherwise the handler raises :class:`Interrupted` at once. Use as a context manager around
    the whole run; the previous handlers come back on exit. In the main thread only (Python
    delivers signals there); elsewhere it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.callback: Preemption | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        callback = self.callback
        if callback is not None and callback.active:
            if first:
                log.warning("received %s: stopping after the current training batch, with a checkpoint",
                            signal_name(signum))
            callback.forward(signum)
            return
        raise Interrupted(signum, f"stopped by {signal_name(signum)}; continue it with ckpt_path=auto")


class Preemption(L.Callback):
    """Saves a mid-epoch checkpoint and stops when :class:`StopSignals` recorded a signal.

    Args:
        signals: the run's :class:`StopSignals`.
        ckpt_path: where to write the checkpoint (the run's ``checkpoints/last.ckpt``, which
            ``ckpt_path=auto`` resumes from).
        resume_hint: the command that continues the run (printed and recorded).
    """

    KEY = "keel_preempted"

    def __init__(self, signals: StopSignals, ckpt_path: str | Path, resume_hint: str = "ckpt_path=auto") -> None:
        self.signals = signals
        self.ckpt_path = Path(ckpt_path)
        self.resume_hint = resume_hint
        self.active = False
        self._trainer: L.Trainer | None = None
        self._position: dict[str, Any] | None = None
        self._loader_states: list[dict[str, Any]] = []
        signals.callback = self

    # --------------------------------------------------------------- signal plumbing
    def forward(self, signum: int) -> None:
        """Pass the signal on to Lightning's DDP child processes (rank 0 started them)."""
        trainer = self._trainer
        launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
        procs = getattr(launcher, "procs", None)
        for proc in procs or ():
            if proc.poll() is None:
                proc.send_signal(signum)

    def _requested(self, trainer: L.Trainer) -> bool:
        local = self.signals.signum is not None
        if trainer.world_size > 1:  # every rank must stop at the same batch (saving is collective)
            return bool(trainer.strategy.reduce_boolean_decision(local, all=False))
        return local

    # --------------------------------------------------------------- hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer
        self._restore_loader_position(trainer)
        # Lightning installed its own SIGTERM handler for the fit (it stops at once, without a
        # checkpoint, also in the middle of validation); keel's handler takes SIGTERM back.
        import threading

        if threading.current_thread() is threading.main_thread() and self.signals._previous:
            for sig in SIGNALS:
                signal.signal(sig, self.signals._handle)
        self.active = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._requested(trainer):
            return
        signum = self.signals.signum or signal.SIGTERM
        self.active = False
        self._position = {"epoch": trainer.current_epoch, "batches_done": batch_idx + 1,
                          "global_step": trainer.global_step, "signal": signal_name(signum)}
        try:
            trainer.save_checkpoint(self.ckpt_path)
        finally:
            self._position = None
        where = f"epoch {trainer.current_epoch}, batch {batch_idx + 1} (global step {trainer.global_step})"
        message = (f"stopped by {signal_name(signum)} at {where}; checkpoint saved: {self.ckpt_path}; "
                   f"continue it with {self.resume_hint}")
        if trainer.is_global_zero:
            log.warning(message)
            _requeue_slurm_job()
        raise Interrupted(signum, message)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.active = False
        if self.signals.signum is not None:  # arrived after the last training batch: epochs are saved
            raise Interrupted(self.signals.signum, f"stopped by {signal_name(self.signals.signum)} after training; "
                                                   f"continue it with {self.resume_hint}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.active = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._position is not None:
            checkpoint[self.KEY] = dict(self._position)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        position = checkpoint.get(self.KEY)
        if position:
            log.info("resuming inside epoch %s after batch %s (the checkpoint was written on %s)",
                     position["epoch"], position["batches_done"], position.get("signal", "a signal"))
        fit_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        self._loader_states = list(fit_state.get("combined_loader") or [])

    def _restore_loader_position(self, trainer: L.Trainer) -> None:
        """Give the train loader its saved position. Lightning does it itself only when the
        loader is first built after the checkpoint is loaded; a scheduler that asks for
        ``trainer.estimated_stepping_batches`` (keel's warmup and one-cycle do) builds it before."""
        states, self._loader_states = self._loader_states, []
        if not states or not getattr(trainer.fit_loop, "restarted_mid_epoch", False):
            return
        loaders = trainer.fit_loop._combined_loader.flattened if trainer.fit_loop._combined_loader else []
        stateful = [dl for dl in loaders if hasattr(dl, "load_state_dict") and hasattr(dl, "state_dict")]
        for loader, state in zip(stateful, states):
            loader.load_state_dict(state)


def _requeue_slurm_job() -> None:
    """``scontrol requeue`` this SLURM job (array task) so it starts again and resumes."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        log.warning("SLURM job %s: scontrol not found, not requeued (submit again with ckpt_path=auto)", job)
        return
    result = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True)
    if result.returncode == 0:
        log.warning("SLURM job %s requeued: it will continue from the checkpoint", job)
    else:
        log.warning("SLURM job %s: `scontrol requeue` failed (%s): %s", job, result.returncode, result.stderr.strip())


__all__ = ["Interrupted", "Preemption", "StopSignals", "signal_name"]
