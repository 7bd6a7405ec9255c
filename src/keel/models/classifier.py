"""The LightningModule that trains any net from ``keel.models.nets`` as a classifier."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MaxMetric, MinMetric

from keel.hook_dispatch import CheapHookNames, cache_step_signature
from keel.models.epoch_metrics import EpochClassification
from keel.models.metric_names import PER_SPLIT, SPLITS, TRAIN_DEFAULT, train_metric_set
from keel.models.nets.preprocess import build_preprocess
from keel.optim import align_state_layout, build_optimizer, build_scheduler, param_groups

log = logging.getLogger("keel")


def resolve_channels_last(setting: bool | str, net: nn.Module, device_type: str, world_size: int) -> tuple[bool, str]:
    """Whether to fit ``net`` with its 4D weights in channels-last layout, and why (``""``: nothing
    to say: a net without 4D weights, or ``false``).

    ``auto``: yes on the CPU in a single process (oneDNN picks its channels-last convolutions:
    the digits cnn trains ~1.2x faster, bench/bench_train.py); no on accelerators, where the gain
    depends on the precision and the GPU (``true`` asks for it), and no under DDP, whose gradient
    buckets are laid out for the default layout (torch warns of the mismatch).
    """
    if not (setting == "auto" or isinstance(setting, bool)):
        raise ValueError(f"model.channels_last={setting!r}: expected auto, true or false "
                         "(e.g. model.channels_last=auto)")
    if setting is False or not any(p.dim() == 4 for p in net.parameters()):
        return False, ""
    if setting is True:
        return True, "model.channels_last=true"
    if device_type != "cpu":
        return False, f"auto: on {device_type} only with model.channels_last=true"
    if world_size > 1:
        return False, f"auto: not under DDP ({world_size} processes)"
    return True, "auto: convolutions on the CPU"


def apply_channels_last(net: nn.Module, setting: bool | str, device_type: str, world_size: int) -> tuple[bool, str]:
    """:func:`resolve_channels_last`, and ``net``'s 4D weights moved to channels-last layout when
    it says yes (in place: the same Parameter objects, other strides)."""
    use, why = resolve_channels_last(setting, net, device_type, world_size)
    if use:
        net.to(memory_format=torch.channels_last)
    return use, why


@cache_step_signature
class Classifier(CheapHookNames, L.LightningModule):
    """Cross-entropy classification of any net, with standardization built into the model.

    Every argument is plain data (dicts, lists, numbers, strings) and is saved as
    hyperparameters, so a checkpoint rebuilds the module without unpickling objects and
    loads with ``torch.load(weights_only=True)``.

    Args:
        net: config of the net (``_target_`` + arguments), instantiated here.
        optimizer: ``_partial_`` optimizer config; called with the parameter groups.
        scheduler: the ``scheduler`` config group (see :func:`keel.optim.build_scheduler`).
        preprocessing: ``mean``/``std``/``sample_ndim`` fitted on the train split.
        loss: ``label_smoothing`` and ``class_weights`` (None or a list, one per class).
        no_decay_bias_norm: keep biases and norm weights out of weight decay.
        compile: ``torch.compile`` the net in place.
        channels_last: keep the net's 4D weights (convolutions) in channels-last memory layout
            while fitting: ``auto`` (on the CPU in a single process, where oneDNN's convolutions
            run ~1.2x faster on the digits cnn), ``true`` (any device, e.g. GPUs with
            mixed precision) or ``false``. Same math, other kernels; the net is back in the
            default layout after fit (test, export and checkpoints loaded later see no
            difference). See :func:`resolve_channels_last`.
        contract: the data contract (plain data), stored with every checkpoint.
        reference: the train split's drift reference statistics (plain data), stored with
            every checkpoint so that new data can be compared with it (``keel drift``).
        train_metrics: what the training split logs: a list of ``loss, acc, f1, precision,
            recall, auroc`` or ``"all"`` (default ``[loss, acc]``).

    Logged metrics (epoch level, synced across DDP ranks): ``{val,test}/{loss,acc,f1,precision,
    recall,auroc}``, ``train/`` + each of ``train_metrics`` and the best-so-far ``val/acc_best``,
    ``val/f1_best``, ``val/loss_best``.
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        preprocessing: Mapping[str, Any],
        loss: Mapping[str, Any],
        contract: Mapping[str, Any],
        no_decay_bias_norm: bool = False,
        compile: bool = False,
        reference: Mapping[str, Any] | None = None,
        channels_last: bool | str = "auto",
        train_metrics: str | Sequence[str] | None = TRAIN_DEFAULT,
    ) -> None:
        super().__init__()
        # logger=False: keel writes the HParams entry itself at the end, with final metrics.
        self.save_hyperparameters(logger=False)
        self.net: nn.Module = instantiate(dict(net))
        self.preprocess = build_preprocess(preprocessing)
        num_classes = len(contract["classes"])
        self.num_classes = num_classes
        weights = loss.get("class_weights")
        if weights is not None and len(weights) != num_classes:
            raise ValueError(
                f"model.loss.class_weights has {len(weights)} values but the data has {num_classes} classes"
            )
        self.register_buffer(
            "class_weights", None if weights is None else torch.tensor(list(weights), dtype=torch.float32)
        )
        self.label_smoothing = float(loss.get("label_smoothing", 0.0))
        # Loss, acc, macro f1/precision/recall, exact macro AUROC and the confusion matrix of each
        # split, from one update per epoch (keel.models.epoch_metrics; equal to torchmetrics' own).
        # The training split logs model.train_metrics (default loss and acc); without its AUROC
        # the training rows' probabilities are not kept. ModuleDict keys cannot be "train"
        # (nn.Module.train), hence the suffix.
        self.logged = {s: train_metric_set(train_metrics) if s == "train" else PER_SPLIT for s in SPLITS}
        self.metrics = nn.ModuleDict({
            f"{s}_metrics": EpochClassification(num_classes, self.logged[s]) for s in SPLITS
        })
        self._keep_logits = {s: "auroc" in self.logged[s] for s in SPLITS}
        self.best = nn.ModuleDict({"acc": MaxMetric(), "f1": MaxMetric(), "loss": MinMetric()})
        for metric in self.best.values():
            metric.persistent(True)  # best-so-far survives a resume from checkpoint
        raw_shape = [len(contract["columns"])] if contract.get("kind") == "table" else list(contract["shape"])
        self.example_input_array = torch.zeros(2, *raw_shape)
        self.confusion: dict[str, list[list[int]]] = {}
        # (detached logits, targets, mean loss) of each step of the running epoch, per split
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {s: [] for s in SPLITS}
        if compile:
            self.net.compile()
        self.channels_last = False  # resolved in setup("fit")

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        # before the optimizer exists and the checkpoint's weights are copied in (both keep it)
        use, why = apply_channels_last(self.net, self.hparams.get("channels_last", "auto"),
                                       self.trainer.strategy.root_device.type, self.trainer.world_size)
        if use:
            self.channels_last = True
            log.info("model.channels_last: convolution weights in channels-last layout while fitting (%s)", why)
        elif why:
            log.info("model.channels_last: default layout (%s)", why)

    def on_train_start(self) -> None:
        # a checkpoint's optimizer state may come from a run in the other layout (see align_state_layout)
        for optimizer in self.trainer.optimizers:
            align_state_layout(optimizer)

    def on_fit_end(self) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.contiguous_format)
            self.channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw contract-conforming inputs ``(N, *shape)`` -> logits ``(N, classes)``."""
        return self.net(self.preprocess(x))

    def _step(self, batch: Sequence[torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(
            logits.float(), y, weight=self.class_weights, label_smoothing=self.label_smoothing
        )
        # Kept on the device and fed to the metrics once per epoch (_update_metrics): five
        # torchmetrics updates and a softmax per step cost more than a small net's whole step.
        # No host sync; the exact AUROC keeps every probability of the epoch anyway. A split
        # without AUROC (the training split by default) keeps the predicted classes only: N
        # integers, not N x classes floats.
        kept = logits.detach() if self._keep_logits[split] else logits.detach().argmax(dim=1)
        self._outputs[split].append((kept, y, loss.detach()))
        return loss

    def _update_metrics(self, split: str) -> None:
        """Feed the epoch's kept outputs of ``split`` to its metrics in one update.

        Order-free sums and the exact AUROC give the same values as per-step updates; the
        loss is weighted by rows per batch.
        """
        outputs, self._outputs[split] = self._outputs[split], []
        if not outputs:
            return
        logits = torch.cat([o[0] for o in outputs])
        y = torch.cat([o[1] for o in outputs])
        losses = torch.stack([o[2] for o in outputs])
        rows = torch.tensor([o[1].shape[0] for o in outputs], dtype=torch.float32, device=losses.device)
        self.metrics[f"{split}_metrics"].update(logits, y, losses, rows)

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, split: str) -> dict[str, torch.Tensor]:
        self._update_metrics(split)
        metric = self.metrics[f"{split}_metrics"]
        values = dict(metric.compute())  # reduced across DDP ranks by torchmetrics
        metric.reset()
        confusion = values.pop("confusion")
        if split != "train":
            self.confusion[split] = confusion.tolist()
        # values are already reduced; sync_dist=True is a no-op average that tells Lightning so
        self.log_dict({f"{split}/{k}": values[k] for k in self.logged[split]}, sync_dist=True)
        return values

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch("val")
        if self.trainer.sanity_checking:
            return
        for key, metric in self.best.items():
            metric.update(values[key])
        self.log_dict({f"val/{k}_best": m.compute() for k, m in self.best.items()}, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> Any:
        groups = param_groups(self, bool(self.hparams.no_decay_bias_norm))
        optimizer = build_optimizer(
            self.hparams.optimizer,
            groups,
            grad_scaler=getattr(self.trainer.precision_plugin, "scaler", None) is not None,
            clip=bool(self.trainer.gradient_clip_val),
        )
        sched = build_scheduler(
            self.hparams.scheduler,
            optimizer,
            total_epochs=max(int(self.trainer.max_epochs or 1), 1),
            total_steps=int(self.trainer.estimated_stepping_batches),
        )
        if sched is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": sched}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain data only: the contract travels with the weights into export and serving.
        checkpoint["keel"] = {
            "contract": dict(self.hparams.contract),
            "preprocessing": dict(self.hparams.preprocessing),
            "reference": dict(self.hparams.reference or {}),
            # the run's resolved config (set by keel.pipeline): export rebuilds the data from it
            "config": getattr(self, "run_config", None),
            "metric_names": [f"{s}/{m}" for s in SPLITS for m in self.logged[s]],
        }


# Lightning inspects the step method's signature on every step (is the batch index a parameter?);
# inspect returns a function's __signature__ when it has one (PEP 362), ~4x faster than
# rebuilding it from the code object each time. The signatures are the functions' own.
for _step in (Classifier.training_step, Classifier.validation_step, Classifier.test_step):
    _step.__signature__ = inspect.signature(_step)  # type: ignore[attr-defined]
del _step
