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
    """Raises :class:`NonFiniteError` as soon as the training loss or a gradient is NaN/Inf.

    The loss is checked in ``on_before_backward`` (before its gradients exist; by
    ``on_train_batch_end`` the optimizer would already have applied them), the gradients
    in ``on_before_optimizer_step`` (after accumulation and DDP reduction, before clipping and
    the update). With a ``16-mixed`` GradScaler, Inf gradients are part of normal operation
    (the scaler skips that step and lowers its scale), so only the loss is checked then.

    Cost: one host sync per check. Added by ``keel.pipeline`` to every run (not a config option).

    Args:
        check_grads: also check every gradient before each optimizer step.
    """

    def __init__(self, check_grads: bool = True) -> None:
        self.check_grads = check_grads
        self._batch_idx: int | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def _raise(self, trainer: L.Trainer, what: str, detail: str = "") -> None:
        raise NonFiniteError(nonfinite_message(what, trainer.global_step, trainer.current_epoch, self._batch_idx,
                                               last_good_checkpoint(trainer), detail))

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = loss.detach()
        if not bool(torch.isfinite(value).all()):
            shown = value.item() if value.numel() == 1 else "non-finite values"
            self._raise(trainer, "loss", f"The loss was {shown}")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if not self.check_grads or getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        # Fast path, every step: one fused norm over the gradients the optimizer is about to apply
        # (a NaN or Inf anywhere makes it non-finite) and one host sync. Walking
        # named_parameters() here would visit every submodule, metrics included, at each step.
        params = ([p for group in optimizer.param_groups for p in group["params"]] if optimizer is not None
                  else pl_module.parameters())
        grads = [p.grad for p in params if p.grad is not None]
        if not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))):
            return
        bad = nonfinite_grads(pl_module.named_parameters())  # which ones (a finite overflow of the norm: none)
        if bad:
            more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
            self._raise(trainer, "gradient", f"NaN/Inf in the gradient of {', '.join(bad[:3])}{more}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Manual optimization may never call backward through Lightning: check what the step returned.
        if pl_module.automatic_optimization:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            self._raise(trainer, "loss")
        elif isinstance(loss, float) and not math.isfinite(loss):
            self._raise(trainer, "loss", f"The loss was {loss}")


__all__ = ["NanGuard", "NonFiniteError", "last_good_checkpoint", "nonfinite_grads", "nonfinite_message"]
