"""The LightningModule that trains any net from ``keel.models.nets`` (or a user's) for a task."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MaxMetric, MinMetric

from keel.models.channels_last import apply_channels_last
from keel.models.nets.preprocess import build_preprocess
from keel.optim import align_state_layout, build_optimizer, build_scheduler, param_groups
from keel.tasks import get_task
from keel.tasks.base import SPLITS

log = logging.getLogger("keel")


class TaskModule(L.LightningModule):
    """Any net trained for the data contract's task, with its input preprocessing built into the
    model and, for regression, the target's standardization and its inverse.

    Every argument is plain data (dicts, lists, numbers, strings) and is saved as
    hyperparameters, so a checkpoint rebuilds the module without unpickling objects and
    loads with ``torch.load(weights_only=True)``. What differs between tasks (loss, metrics, the
    head that turns the net's output into the task's outputs, what a split records) comes from
    the task object (:mod:`keel.tasks`).

    Args:
        net: config of the net (``_target_`` + arguments), instantiated here.
        optimizer: ``_partial_`` optimizer config; called with the parameter groups.
        scheduler: the ``scheduler`` config group (see :func:`keel.optim.build_scheduler`).
        preprocessing: the input preprocessing fitted on the train split (``type`` + statistics).
        loss: the task's loss options (classification: ``label_smoothing``, ``class_weights`` as
            a list or None; regression: ``name`` mse|huber|l1, ``huber_delta``).
        contract: the data contract (plain data), stored with every checkpoint.
        task: ``classification`` or ``regression``.
        target: regression: the train split's target statistics (``mean``, ``std``...).
        no_decay_bias_norm: keep biases and norm weights out of weight decay.
        compile: ``torch.compile`` the net in place.
        channels_last: the net's 4D weights in channels-last layout while fitting (``auto``,
            ``true``, ``false``; see :func:`keel.models.channels_last.resolve_channels_last`).
        reference: the train split's drift reference statistics (plain data), stored with
            every checkpoint so that new data can be compared with it (``keel drift``).
        train_metrics: what the training split logs (names of the task's metrics, or ``all``).

    Logged (epoch level, synced across DDP ranks): ``{val,test}/<metric>`` for every metric of
    the task, ``train/`` + each of ``train_metrics``, and ``val/<metric>_best`` for the task's
    best-so-far metrics (:class:`keel.tasks.base.Task`).
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        preprocessing: Mapping[str, Any],
        loss: Mapping[str, Any],
        contract: Mapping[str, Any],
        task: str = "classification",
        target: Mapping[str, Any] | None = None,
        no_decay_bias_norm: bool = False,
        compile: bool = False,
        reference: Mapping[str, Any] | None = None,
        channels_last: bool | str = "auto",
        train_metrics: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        # logger=False: keel writes the HParams entry itself at the end, with final metrics.
        self.save_hyperparameters(logger=False)
        from keel.data.contract import contract_from_dict

        self.task = get_task(task)
        data_contract = contract_from_dict(dict(contract))
        self.net: nn.Module = instantiate(dict(net))
        self.preprocess = build_preprocess(preprocessing)
        self.head = self.task.build_head(data_contract, target)
        self.criterion = self.task.build_criterion(dict(loss), data_contract)
        # Each split's metrics from one update per epoch (the step keeps its outputs on the device,
        # no host sync). The training split logs model.train_metrics. ModuleDict keys cannot be
        # "train" (nn.Module.train), hence the suffix.
        self.logged = {s: self.task.train_metric_set(train_metrics) if s == "train" else self.task.metrics
                       for s in SPLITS}
        self.metrics = nn.ModuleDict({
            f"{s}_metrics": self.task.epoch_metric(data_contract, self.logged[s], s) for s in SPLITS
        })
        self._keep_all = {s: self.task.keeps_all(self.logged[s]) for s in SPLITS}
        self.best = nn.ModuleDict({m: MaxMetric() if self.task.higher_is_better[m] else MinMetric()
                                   for m in self.task.best})
        for metric in self.best.values():
            metric.persistent(True)  # best-so-far survives a resume from checkpoint
        raw_shape = [len(contract["columns"])] if contract.get("kind") == "table" else list(contract["shape"])
        self.example_input_array = torch.zeros(2, *raw_shape)
        # what each evaluated split recorded at its last epoch end beyond its logged values
        # (classification: the confusion matrix; regression: residuals and predictions)
        self.split_records: dict[str, dict[str, Any]] = {}
        # (kept outputs, targets, mean loss) of each step of the running epoch, per split
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {s: [] for s in SPLITS}
        if compile:
            self.net.compile()
        self.channels_last = False  # resolved in setup("fit")

    @property
    def confusion(self) -> dict[str, list[list[int]]]:
        """Classification: the confusion matrix of each evaluated split (rows: targets)."""
        return {s: r["confusion_matrix"] for s, r in self.split_records.items() if "confusion_matrix" in r}

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
        """Raw contract-conforming inputs ``(N, *shape)`` -> the task's first output: logits
        ``(N, classes)`` (classification) or predictions ``(N,)`` in the target's units."""
        return self.head(self.net(self.preprocess(x)))[0]

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every output of the task, as the exported graph returns them."""
        return self.head(self.net(self.preprocess(x)))

    def _step(self, batch: Sequence[torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        out = self.net(self.preprocess(x))
        loss = self.task.loss(self, out, y)
        # Kept on the device and fed to the metrics once per epoch (_update_metrics): metric
        # updates per step cost more than a small net's whole step. No host sync.
        self._outputs[split].append((self.task.kept(self, out, self._keep_all[split]), y, loss.detach()))
        return loss

    def running_train_loss(self, window: int) -> float | None:
        """Mean train loss of this epoch's last ``window`` batches (None before the first); one
        host sync, for the progress bar when it redraws."""
        recent = self._outputs["train"][-window:]
        if not recent:
            return None
        return float(torch.stack([o[2] for o in recent]).float().mean())

    def _update_metrics(self, split: str) -> bool:
        """Feed the epoch's kept outputs of ``split`` to its metrics in one update (order-free
        sums give the values of per-step updates; the loss is weighted by rows per batch).
        False when the epoch kept nothing."""
        outputs, self._outputs[split] = self._outputs[split], []
        if not outputs:
            return False
        kept = torch.cat([o[0] for o in outputs])
        y = torch.cat([o[1] for o in outputs])
        losses = torch.stack([o[2] for o in outputs])
        rows = torch.tensor([o[1].shape[0] for o in outputs], dtype=torch.float32, device=losses.device)
        self.metrics[f"{split}_metrics"].update(kept, y, losses, rows)
        return True

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, split: str) -> dict[str, torch.Tensor]:
        if not self._update_metrics(split):
            return {}
        metric = self.metrics[f"{split}_metrics"]
        values = dict(metric.compute())  # reduced across DDP ranks by torchmetrics
        metric.reset()
        record = self.task.split_record(values)
        if split != "train":
            self.split_records[split] = record
        # values are already reduced; sync_dist=True is a no-op average that tells Lightning so
        self.log_dict({f"{split}/{k}": values[k] for k in self.logged[split]}, sync_dist=True)
        return values

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch("val")
        if self.trainer.sanity_checking or not values:
            return
        for key, metric in self.best.items():
            value = values[key]
            if torch.isfinite(value):
                metric.update(value)
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
        # named: the LR monitor logs lr/<group> whatever the optimizer class (not lr-Adam/...), so
        # runs with different optimizers share one learning-rate curve name
        return {"optimizer": optimizer, "lr_scheduler": {**sched, "name": "lr"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain data only: the contract travels with the weights into export and serving. The run's
        # resolved config joins this section through keel.callbacks.RunConfigInCheckpoint.
        checkpoint.setdefault("keel", {}).update({
            "task": self.task.name,
            "contract": dict(self.hparams.contract),
            "preprocessing": dict(self.hparams.preprocessing),
            "target": dict(self.hparams.target) if self.hparams.get("target") else None,
            "reference": dict(self.hparams.reference or {}),
            "metric_names": [f"{s}/{m}" for s in SPLITS for m in self.logged[s]],
        })

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints of keel before the task seam kept the class weights at the module's top level
        state = checkpoint.get("state_dict", {})
        if "class_weights" in state:
            state["criterion.weight"] = state.pop("class_weights")


# The name keel's configs used before regression; the same class.
Classifier = TaskModule

__all__ = ["Classifier", "TaskModule"]
