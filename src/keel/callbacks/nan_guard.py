"""Stop training at the first non-finite loss or gradient, naming the step and the last good checkpoint."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
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


def _sum_of_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """A scalar that is non-finite when any gradient holds a NaN or Inf: the sum of the
    per-tensor norms from one foreach kernel (cheaper than ``get_total_norm``, which groups the
    tensors by device and dtype in Python and takes a second norm). Gradients spread over
    devices or dtypes take ``get_total_norm``."""
    try:
        return torch.stack(torch._foreach_norm(grads)).sum()
    except RuntimeError:
        return torch.nn.utils.get_total_norm(grads)


def _fused_found_inf(tensors: list[torch.Tensor], found: torch.Tensor | None = None,
                     one: torch.Tensor | None = None) -> torch.Tensor | None:
    """A 0-dim float tensor that is nonzero when any of ``tensors`` holds a NaN or Inf,
    from one fused kernel (the one ``torch.amp.GradScaler`` checks gradients with; called with
    a scale of 1, so every value is rewritten unchanged, -0.0 and subnormals included). On
    a small net that is a third of the norm path's time per step (three ops instead of seven).
    None where the kernel does not apply: tensors on several devices, tensor subclasses
    (DTensor shards would each be checked alone), sparse or non-float tensors.

    ``found`` (0-dim float on the tensors' device) is written in place: the kernel only ever
    sets it, so a flag kept across steps stays set once a bad value was seen. ``one``: a cached
    0-dim 1.0 on that device."""
    device = tensors[0].device
    for t in tensors:
        if type(t) is not torch.Tensor or t.device != device or t.layout != torch.strided or not t.is_floating_point():
            return None
    if found is None or found.device != device:
        found = torch.zeros((), device=device)  # 0-dim, as GradScaler's (fused optimizers subtract it from step counts)
    if one is None or one.device != device:
        one = torch.ones((), device=device)
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, one)
    except (RuntimeError, NotImplementedError):
        return None
    return found


@dataclass
class _InFlight:
    """A step's non-finite flag on its way to the host (see ``NanGuard``'s deferred check)."""

    host: torch.Tensor  # the flag's copy (pinned host memory under CUDA)
    event: Any  # the CUDA event recorded after the copy; None on the CPU
    step: int
    epoch: int
    batch: int | None
    pending: list[tuple[int | None, torch.Tensor]]  # the step's losses, to name a bad one


class _Pacer:
    """Whether reading the check can wait a step (``deferred``), from what waiting costs.

    Reading the flag at once is cheapest while the GPU keeps up with the host (a small model:
    the read waits a few microseconds, and a deferred read adds a copy, an event and a step-count
    kernel, ~0.1 ms a step on a slow host). When the GPU is the bottleneck, the read at once
    waits for all queued work and leaves the GPU idle until the host queues the next step
    (measured on an H100: 0.45-1 ms a step). So: read at once, and defer once ``PATIENCE``
    reads in a row waited over ``WAIT_S``; go back to reading at once after ``IDLE_STEPS``
    deferred reads in a row found the flag already computed (the GPU waits for the host again)."""

    WAIT_S = 250e-6
    PATIENCE = 8
    IDLE_STEPS = 64

    def __init__(self, deferred: bool = False) -> None:
        self.deferred = deferred
        self._streak = 0

    def waited(self, seconds: float) -> None:
        """A read at once took ``seconds``."""
        self._streak = self._streak + 1 if seconds > self.WAIT_S else 0
        if self._streak >= self.PATIENCE:
            self.deferred, self._streak = True, 0

    def found_ready(self, ready: bool) -> None:
        """A deferred read found the flag already computed (``ready``) or had to wait."""
        self._streak = self._streak + 1 if ready else 0
        if self._streak >= self.IDLE_STEPS:
            self.deferred, self._streak = False, 0


def skips_on_device(optimizer: Any) -> bool:
    """Whether ``optimizer`` reads a ``found_inf`` tensor in its step and skips the update on
    the device when it is nonzero (torch's fused Adam, AdamW, SGD...: the kernels GradScaler uses)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and bool(
        getattr(optimizer, "defaults", {}).get("fused"))


class NanGuard(L.Callback):
    """Raises :class:`NonFiniteError` as soon as the training loss or a gradient is NaN/Inf,
    before the optimizer applies the update.

    Both are checked in ``on_before_optimizer_step`` (after accumulation and DDP reduction,
    before clipping and the update): each loss is kept from ``on_before_backward`` (no sync
    there), and one fused non-finite check covers the losses and every gradient. A non-finite
    loss is reported as such (with its batch), even though its backward has run by then: the
    update is what must not happen. Under DDP the bad loss's gradients reach every rank through
    the backward's all-reduce, so with the gradient check on (the default) every rank stops at
    the same step. With a ``16-mixed`` GradScaler, Inf gradients are part of normal operation
    (the scaler skips that step and lowers its scale), so only the loss is checked then.

    Reading the flag is the step's one host sync. On a CUDA GPU, with an optimizer that can
    skip an update on the device (torch's fused kernels, ``optimizer.fused=auto``), the read can
    wait a step: the flag goes to the optimizer as GradScaler's ``found_inf`` (a nonzero flag
    skips the update and its step count inside the kernel), its copy travels to pinned host
    memory, and it is read at the next optimizer step (by then computed), at validation start
    and at the epoch's end. A bad step is then reported one step later, with its own step,
    epoch, batch and loss, and no bad update is ever applied: its own was skipped on the device
    and the next one is refused by the error. Under distributed training the flag is
    all-reduced (max) on the device first, so every rank skips and stops at the same step.
    Deferring pays only where the GPU is the bottleneck (the read at once leaves it idle until
    the host queues the next step), so by default the guard reads at once and defers while reads
    keep waiting for the GPU (:class:`_Pacer`), in a single process only (each rank would time
    its own reads and decide alone). On the CPU reading costs nothing: always at once.
    The flag lives on the device for the whole fit (the kernel only ever sets it; a set flag
    ends the run), so a step allocates nothing for the check.

    Added by ``keel.pipeline`` to every run (not a config option).

    Args:
        check_grads: also check every gradient before each optimizer step.
        defer: read the check one step later, as above: ``None`` (auto) on one CUDA device with
            an optimizer that skips on the device, while reads at once keep waiting for the GPU;
            ``True`` at every step where the optimizer can skip (the CPU and every rank
            included); ``False`` never.
    """

    # losses kept at most between two checks: a manual-optimization step that never calls the
    # optimizer still gets its losses checked (and freed) this often
    MAX_PENDING = 64

    def __init__(self, check_grads: bool = True, defer: bool | None = None) -> None:
        self.check_grads = check_grads
        self.defer = defer
        self._batch_idx: int | None = None
        self._pending: list[tuple[int | None, torch.Tensor]] = []  # (batch index, detached loss)
        self._in_flight: _InFlight | None = None
        self._armed: Any = None  # the optimizer holding this step's flag as ``found_inf``
        self._host: torch.Tensor | None = None  # pinned buffer the flag is copied to
        self._found: torch.Tensor | None = None  # the flag, kept across steps (0-dim, on the device)
        self._one: torch.Tensor | None = None  # the check's scale, cached
        self._pacer = _Pacer()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def _raise(self, trainer: L.Trainer, what: str, detail: str = "", batch_idx: int | None = None,
               step: int | None = None, epoch: int | None = None) -> None:
        batch = self._batch_idx if batch_idx is None else batch_idx
        raise NonFiniteError(nonfinite_message(what, trainer.global_step if step is None else step,
                                               trainer.current_epoch if epoch is None else epoch, batch,
                                               last_good_checkpoint(trainer), detail))

    def _raise_for_loss(self, trainer: L.Trainer, pending: list[tuple[int | None, torch.Tensor]],
                        step: int | None = None, epoch: int | None = None) -> None:
        """Raise for the first non-finite loss in ``pending``, if there is one."""
        for batch_idx, value in pending:
            if not bool(torch.isfinite(value).all()):
                shown = value.item() if value.numel() == 1 else "non-finite values"
                self._raise(trainer, "loss", f"The loss was {shown}", batch_idx, step, epoch)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._pending.append((self._batch_idx, loss.detach()))
        if len(self._pending) >= self.MAX_PENDING:
            pending, self._pending = self._pending, []
            if not bool(torch.stack([torch.isfinite(v).all() for _, v in pending]).all()):
                self._raise_for_loss(trainer, pending)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._found = self._in_flight = None
        self._pacer = _Pacer()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self._disarm()
        self._settle(trainer)  # the previous step's deferred flag: computed long ago, read now
        pending, self._pending = self._pending, []
        grads: list[torch.Tensor] = []
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if self.check_grads and scaler is None:
            # The gradients the optimizer is about to apply. Walking named_parameters() here
            # would visit every submodule, metrics included, at each step.
            params = ([p for group in optimizer.param_groups for p in group["params"]] if optimizer is not None
                      else pl_module.parameters())
            grads = [p.grad for p in params if p.grad is not None]
        if not pending and not grads:
            return
        tensors = list(grads)
        if pending:  # the losses as one new tensor: the kept (detached) losses are not rewritten
            losses = [v for _, v in pending]
            tensors.append(losses[0].clone() if len(losses) == 1 else torch.cat([v.reshape(-1) for v in losses]))
        if self._one is None or self._one.device != tensors[0].device:
            self._one = torch.ones((), device=tensors[0].device)
        found = _fused_found_inf(tensors, self._found, self._one)
        if found is None:  # elsewhere: a finite check per loss and a fused norm over the gradients
            flags = [torch.isfinite(v).all() for _, v in pending]
            if grads:
                flags.append(torch.isfinite(_sum_of_norms(grads)))
            if not bool(torch.stack(flags).all()):
                self._raise_bad_step(trainer, pl_module, pending)
            return  # (a finite norm that overflowed names no parameter: not a bad step)
        self._found = found  # kept: the kernel only sets it, and a set flag always ends the run
        # (on the CPU, unless deferral is forced, the flag is read at once: skip the checks)
        can_defer = scaler is None and (self.defer is True or self._auto(found, trainer)) and \
            self._can_defer(optimizer, found.device)
        if can_defer and (self.defer or self._pacer.deferred):
            self._arm(trainer, optimizer, found, pending)
            return
        start = time.perf_counter()
        bad = bool(found)  # the one host sync of the step
        if can_defer:
            self._pacer.waited(time.perf_counter() - start)
        if bad:
            self._raise_bad_step(trainer, pl_module, pending)

    def _raise_bad_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                        pending: list[tuple[int | None, torch.Tensor]]) -> None:
        self._raise_for_loss(trainer, pending)
        bad = nonfinite_grads(pl_module.named_parameters())  # which ones (a finite overflow of the norm: none)
        if bad:
            more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
            self._raise(trainer, "gradient", f"NaN/Inf in the gradient of {', '.join(bad[:3])}{more}")
        if self._found is not None and bool(self._found):
            self._raise(trainer, "gradient", "NaN/Inf in a gradient")

    def _auto(self, found: torch.Tensor, trainer: L.Trainer) -> bool:
        """Whether auto mode may defer: on one CUDA device. With several processes each rank's
        pacer would time its own reads, and ranks that decided differently would disagree on
        the flag's all-reduce."""
        return self.defer is None and found.is_cuda and trainer.world_size == 1

    def _can_defer(self, optimizer: Any, device: torch.device) -> bool:
        """Whether this step's flag may be read later: ``defer`` allows it, the optimizer skips
        an update on the device, and (auto) the device is a CUDA GPU."""
        if self.defer is False or optimizer is None or hasattr(optimizer, "found_inf"):
            return False
        if not skips_on_device(optimizer):
            return False
        return self.defer is True or device.type == "cuda"

    def _arm(self, trainer: L.Trainer, optimizer: Any, found: torch.Tensor,
             pending: list[tuple[int | None, torch.Tensor]]) -> None:
        """Hand ``found`` to ``optimizer`` (a nonzero flag skips its update on the device) and
        start its copy to the host, to be read at the next check."""
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            # every rank skips and stops at the same step (a loss or a gradient shard may be bad on one rank only)
            torch.distributed.all_reduce(found, op=torch.distributed.ReduceOp.MAX)
        optimizer.found_inf = found
        self._armed = optimizer
        event = None
        if found.device.type == "cuda":
            if self._host is None:
                self._host = torch.empty((), dtype=found.dtype, pin_memory=True)
            self._host.copy_(found, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            host = self._host
        else:
            host = found.to("cpu", copy=True)
        self._in_flight = _InFlight(host, event, trainer.global_step, trainer.current_epoch, self._batch_idx, pending)

    def _disarm(self) -> None:
        """Take the flag back from the optimizer that stepped with it (a later step must not read it)."""
        if self._armed is not None:
            if hasattr(self._armed, "found_inf"):
                del self._armed.found_inf
            self._armed = None

    def _settle(self, trainer: L.Trainer) -> None:
        """Read the deferred flag, if any (waits only for the step that computed it), and raise for a bad step."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return
        if flight.event is not None:
            if self.defer is None:
                self._pacer.found_ready(flight.event.query())
            flight.event.synchronize()
        if not flight.host.item():
            return
        self._disarm()
        self._raise_for_loss(trainer, flight.pending, flight.step, flight.epoch)
        self._raise(trainer, "gradient", "NaN/Inf in a gradient (the update was skipped on the device; the check "
                    "ran without waiting for it, so the parameter is not named)", flight.batch, flight.step,
                    flight.epoch)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._disarm()
        # Manual optimization may never call backward through Lightning: check what the step returned.
        if pl_module.automatic_optimization:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            self._raise(trainer, "loss")
        elif isinstance(loss, float) and not math.isfinite(loss):
            self._raise(trainer, "loss", f"The loss was {loss}")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._settle(trainer)  # validation must not run on (or report) a model past a bad step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._disarm()
        self._settle(trainer)
        self._pending = []  # backward without an optimizer step (manual optimization): nothing to guard

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._disarm()
        self._settle(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._disarm()
        self._in_flight = None


__all__ = ["NanGuard", "NonFiniteError", "last_good_checkpoint", "nonfinite_grads", "nonfinite_message",
           "skips_on_device"]
