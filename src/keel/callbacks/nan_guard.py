"""Stop training at the first non-finite loss or gradient, naming the step and the last good checkpoint."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from keel.errors import KeelError


class NonFiniteError(KeelError):
    """The loss or a gradient became NaN/Inf: training stopped before the bad update was applied."""


def nonfinite_grads(named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or Inf (one host sync for all)."""
    grads = [(name, p.grad) for name, p in named_params if p.grad is not None]
    if not grads:
        return []
    flags = torch.stack([torch.isfinite(g).all() for _, g in grads])
    if bool(flags.all()):
        return []
    return [name for (name, _), ok in zip(grads, flags.tolist()) if not ok]


def nonfinite_message(what: str, step: int, epoch: int, batch: int | None, checkpoint: str | None,
                      detail: str = "") -> str:
    """``non-finite {what} at global step N (epoch E, batch B); last good checkpoint: PATH``, the detail and a fix."""
    where = f"epoch {epoch}, batch {batch}" if batch is not None else f"epoch {epoch}"
    ckpt = checkpoint or "none (no checkpoint written yet)"
    return (
        f"non-finite {what} at global step {step} ({where}); last good checkpoint: {ckpt}. "
        + (f"{detail}. " if detail else "")
        + "Training stopped before this update was applied. Fix: lower optimizer.lr, set "
        "trainer.gradient_clip_val=1.0, check the data; `debug=anomaly` names the operation that made it"
    )


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint file this run's checkpoint callbacks wrote, else the one it resumed from."""
    paths = []
    for cb in trainer.checkpoint_callbacks:
        for path in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")):
            if path and Path(path).is_file():
                paths.append(Path(path))
    if paths:
        return str(max(paths, key=lambda p: p.stat().st_mtime_ns))
    if trainer.ckpt_path and Path(trainer.ckpt_path).is_file():
        return str(trainer.ckpt_path)
    return None


class NanGuard(L.Callback):
    """Raises :class:`NonFiniteError` as soon as the training loss or a gradient is NaN/Inf,
    before the optimizer applies the update.

    Both are checked in ``on_before_optimizer_step`` (after accumulation and DDP reduction,
    before clipping and the update): each loss is kept from ``on_before_backward`` (no sync
    there), and the gradients' total norm (``torch.nn.utils.get_total_norm``) covers every
    parameter the optimizer is about to update. A non-finite loss is reported as such (with its
    batch), even though its backward has run by then: the update is what must not happen. A
    total norm that overflowed while every gradient value is finite is not a bad step (no
    parameter to name): only a NaN/Inf value stops the run. Under DDP the bad loss's gradients
    reach every rank through the backward's all-reduce, so with the gradient check on (the
    default) every rank stops at the same step. With a ``16-mixed`` GradScaler, Inf gradients
    are part of normal operation (the scaler skips that step and lowers its scale), so only the
    loss is checked then.

    The check is read at once: one host sync per optimizer step on an accelerator (none to
    speak of on the CPU). Reading it a step later, handing the flag to fused optimizers as
    ``found_inf``, was dropped: it needed torch internals, and no benchmark on a realistic
    workload showed the sync costing >= 1% of step time.

    Added by ``keel.fit`` to every run (not a config option).

    Args:
        check_grads: also check every gradient before each optimizer step.
    """

    # losses kept at most between two checks: a manual-optimization step that never calls the
    # optimizer still gets its losses checked (and freed) this often
    MAX_PENDING = 64

    def __init__(self, check_grads: bool = True) -> None:
        self.check_grads = check_grads
        self._batch_idx: int | None = None
        self._pending: list[tuple[int | None, torch.Tensor]] = []  # (batch index, detached loss)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def _raise(self, trainer: L.Trainer, what: str, detail: str = "", batch_idx: int | None = None) -> None:
        batch = self._batch_idx if batch_idx is None else batch_idx
        raise NonFiniteError(nonfinite_message(what, trainer.global_step, trainer.current_epoch, batch,
                                               last_good_checkpoint(trainer), detail))

    def _raise_for_loss(self, trainer: L.Trainer, pending: list[tuple[int | None, torch.Tensor]]) -> None:
        """Raise for the first non-finite loss in ``pending``, if there is one."""
        for batch_idx, value in pending:
            if not bool(torch.isfinite(value).all()):
                shown = value.item() if value.numel() == 1 else "non-finite values"
                self._raise(trainer, "loss", f"The loss was {shown}", batch_idx)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._pending.append((self._batch_idx, loss.detach()))
        if len(self._pending) >= self.MAX_PENDING:
            pending, self._pending = self._pending, []
            if not bool(torch.stack([torch.isfinite(v).all() for _, v in pending]).all()):
                self._raise_for_loss(trainer, pending)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        pending, self._pending = self._pending, []
        flags = [torch.isfinite(v).all() for _, v in pending]
        grads: list[torch.Tensor] = []
        if self.check_grads and getattr(trainer.precision_plugin, "scaler", None) is None:
            # The gradients the optimizer is about to apply. Walking named_parameters() here
            # would visit every submodule, metrics included, at each step.
            params = ([p for group in optimizer.param_groups for p in group["params"]] if optimizer is not None
                      else pl_module.parameters())
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                flags.append(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        if not flags:
            return
        if bool(torch.stack([f.to(flags[0].device) for f in flags]).all()):  # the one host sync of the step
            return
        self._raise_for_loss(trainer, pending)
        bad = nonfinite_grads(pl_module.named_parameters())  # which ones
        if bad:
            more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
            self._raise(trainer, "gradient", f"NaN/Inf in the gradient of {', '.join(bad[:3])}{more}")
        if not all(bool(torch.isfinite(g).all()) for g in grads):  # a parameter outside pl_module
            self._raise(trainer, "gradient", "NaN/Inf in a gradient")
        # else: every value is finite and only the norm overflowed: not a bad step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Manual optimization may never call backward through Lightning: check what the step returned.
        if pl_module.automatic_optimization:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            self._raise(trainer, "loss")
        elif isinstance(loss, float) and not math.isfinite(loss):
            self._raise(trainer, "loss", f"The loss was {loss}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = []  # backward without an optimizer step (manual optimization): nothing to guard


__all__ = ["NanGuard", "NonFiniteError", "last_good_checkpoint", "nonfinite_grads", "nonfinite_message"]
