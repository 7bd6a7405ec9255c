"""Base DataModule for datasets that fit in memory: split, contract check, drift, fast loaders."""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from keel.data.batches import IndexBatchSampler, ResumableLoader
from keel.data.drift import tensor_drift_columns
from keel.data.contract import (
    ContractReport,
    ContractViolationError,
    Violation,
    contract_from_dict,
    load_contract_spec,
)
from keel.data.split import quantile_strata, stratified_holdout, stratified_split
from keel.errors import KeelError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ON_VIOLATION = ("raise", "drop")
TASK_CHOICES = ("auto", "classification", "regression")
# Quantile bins of a regression target that the split stratifies on (val/test cover its range).
TARGET_STRATA = 10


class InMemoryDataModule(L.LightningDataModule):
    """Reads all rows once, splits them (seeded, stratified: by class, or by quantile bins of a
    regression target), checks every split against the contract, computes drift and leakage
    between the train split and the others, fits the model's input preprocessing on the train
    split and serves whole batches by tensor indexing.

    Subclasses implement :meth:`load`; this class handles features given as an array
    ``(N, *contract.shape)`` (``TableDataModule`` overrides the hooks for data frames).

    Args:
        contract: the data contract as config data (``kind`` tensor or table), or the path of
            a contract YAML file (e.g. written by ``keel contract infer``).
        batch_size: rows per batch on each process.
        val_fraction, test_fraction: fractions of all rows held out.
        split_seed: seed of the split (independent of the run seed).
        seed: seed of the per-epoch shuffle (the run seed).
        num_workers, pin_memory: DataLoader settings.
        on_device: keep the splits on the accelerator (CUDA/MPS) the run trains on, so a batch
            is one gather in device memory and nothing is copied per step. For data that fits
            in device memory; needs ``num_workers=0``. No effect on CPU.
        on_violation: ``raise``: stop before training, listing every violation; ``drop``:
            remove the failing rows, log how many and why (the report is kept in
            :attr:`dropped` and written to the run directory).
        class_weights: ``null`` or ``balanced``: read by the model's loss by interpolation.
        drift: drift thresholds (see :class:`keel.data.drift.DriftThresholds`) and ``enabled``.
        task: ``auto`` (the contract's task; a table without a contract infers it from its
            target column), ``classification`` or ``regression``: must agree with the contract.

    Raises:
        KeelError: an unknown ``task`` or ``on_violation``; a ``task`` the contract contradicts.
        ContractViolationError: in :meth:`setup`, when a split breaks the contract and the
            violations cannot (or may not) be repaired by dropping rows.
    """

    def __init__(
        self,
        contract: Mapping[str, Any] | None,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        on_device: bool = False,
        on_violation: str = "raise",
        class_weights: Any = None,
        drift: Mapping[str, Any] | None = None,
        task: str = "auto",
    ) -> None:
        super().__init__()
        if on_violation not in ON_VIOLATION:
            raise KeelError(f"data.on_violation={on_violation!r}: expected one of {list(ON_VIOLATION)}")
        if not (isinstance(task, str) and task in TASK_CHOICES):
            raise KeelError(f"task={task!r}: expected one of {', '.join(TASK_CHOICES)}. Fix: e.g. task=auto (the "
                            "data contract's task) or task=regression")
        self.requested_task = task
        self.contract = None if contract is None else contract_from_dict(load_contract_spec(contract))
        if self.contract is not None:
            self._check_task(self.contract)
        self.batch_size = batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split_seed, self.seed = split_seed, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        if on_device and num_workers:
            raise KeelError(f"data.on_device=true with data.num_workers={num_workers}: device-resident data is "
                            "gathered in the main process. Fix: data.num_workers=0 (or data.on_device=false)")
        self.on_device = on_device
        self._device_data: dict[str, TensorDataset] = {}
        self.on_violation = on_violation
        self.class_weights = class_weights
        drift = dict(drift or {})
        self.drift_enabled = bool(drift.pop("enabled", True))
        from keel.data.drift import DriftThresholds

        self.drift_thresholds = DriftThresholds.from_dict(drift)
        self.reports: dict[str, ContractReport] = {}
        self.dropped: dict[str, Any] = {}
        self.drift: dict[str, Any] = {}
        self.reference: dict[str, Any] = {}
        self._data: dict[str, TensorDataset] = {}
        self._preprocessing: dict[str, Any] = {}

    def _check_task(self, contract: Any) -> None:
        """Refuse a named task that the contract contradicts (``auto`` takes the contract's)."""
        task = self.requested_task
        if task != "auto" and task != contract.task:
            declared = "a list of classes" if contract.task == "classification" else "task: regression"
            raise KeelError(
                f"data contract {contract.name!r} declares a {contract.task} target ({declared}) but task={task}. "
                f"Fix: task={contract.task} (or task=auto), or give a {task} contract (data.contract=<file.yaml>)"
            )

    @property
    def task(self) -> str:
        """``classification`` or ``regression``: the contract's task once it is known (given, or
        inferred in :meth:`setup`); before that the requested one (``auto`` when not named)."""
        return self.contract.task if self.contract is not None else self.requested_task

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def load(self) -> tuple[Any, Any]:
        """Return all rows: features ``(N, *contract.shape)`` and labels ``(N,)``."""

    def test_rows(self) -> np.ndarray | None:
        """Rows that form a predefined test split (e.g. MNIST's t10k), or None to split."""
        return None

    @property
    def source(self) -> str:
        """Where the rows come from, for error messages."""
        return type(self).__name__

    def _infer_contract(self, features: Any, labels: Any) -> Any:
        raise KeelError(f"{type(self).__name__} needs a data contract (data.contract)")

    def _check(self, features: Any, labels: Any, idx: np.ndarray, split: str) -> ContractReport:
        return self.contract.check(features[idx], labels[idx], split, row_ids=idx)

    def _encode(self, features: Any, labels: Any, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(features[idx], dtype=np.float32)
        return x, self.contract.encode_labels(labels[idx])

    def _fit_preprocessing(self, x_train: np.ndarray) -> dict[str, Any]:
        # Per channel for images ([C, H, W]), per feature for flat samples ([F]).
        axes = (0,) + tuple(range(2, x_train.ndim))
        xf = x_train.astype(np.float64)
        std = np.maximum(xf.std(axis=axes, ddof=1) if len(xf) > 1 else np.ones(x_train.shape[1]), 1e-6)
        return {
            "type": "standardize",
            "mean": xf.mean(axis=axes).tolist(),
            "std": std.tolist(),
            "sample_ndim": x_train.ndim - 1,
        }

    def _drift_columns(self, features: Any, idx: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        cols = tensor_drift_columns(features[idx])
        return cols, {k: "numeric" for k in cols}

    def _raw_labels(self, labels: Any, idx: np.ndarray) -> np.ndarray:
        return np.asarray(labels)[idx]

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Load, split, check, drift-check and encode every split once (later calls are no-ops)."""
        if self._data:
            return
        features, labels = self.load()
        n = len(labels)
        if len(features) != n:
            raise ContractViolationError(
                [ContractReport(self._contract_name(), "all", len(features), (
                    Violation("shape", "label", abs(len(features) - n), len(features),
                              detail=f"{len(features)} feature rows but {n} labels"),))],
                self.source,
            )
        if self.contract is None:
            self.contract = self._infer_contract(features, labels)
            self._check_task(self.contract)
            log.warning(
                "data: no contract given; inferred one from %s (every value seen is allowed). Pin it with "
                "`keel contract infer` and data.contract (a copy is in the run's data/contract.yaml)", self.source,
            )
        parts = self._split(labels)
        reports: dict[str, ContractReport] = {}
        for name in SPLITS:
            reports[name] = self._check(features, labels, parts[name], name)
        self.reports = reports
        bad = [r for r in reports.values() if not r.ok]
        if bad:
            if self.on_violation == "raise" or not all(r.droppable for r in bad):
                raise ContractViolationError(list(reports.values()), self.source)
            parts = self._drop(parts, reports)
        x = {}
        for name in SPLITS:
            xs, ys = self._encode(features, labels, parts[name])
            x[name] = xs
            # pandas may hand out read-only views
            ys = np.require(ys, dtype=np.float32 if self.regression else np.int64, requirements=["C", "W"])
            self._data[name] = TensorDataset(torch.from_numpy(xs), torch.from_numpy(ys))
        self._preprocessing = self._fit_preprocessing(x["train"])
        if self.drift_enabled:
            self._compute_drift(features, labels, parts, x)
        log.info(
            "data %s: %d rows -> train %d, val %d, test %d; contract %r checked on every split%s",
            self.source, n, *(len(self._data[s]) for s in SPLITS), self.contract.name,
            f"; dropped {self.dropped['total']} rows" if self.dropped else "",
        )

    def _contract_name(self) -> str:
        return self.contract.name if self.contract is not None else "inferred"

    def _strata(self, labels: Any) -> np.ndarray:
        if self.regression:
            # Quantile bins of the target: val/test cover its range; values that are not finite
            # numbers form one more stratum, so they still split (and are reported later).
            return quantile_strata(np.asarray(labels), TARGET_STRATA)
        # Stratify on the label's text so that invalid labels (reported later) still split.
        return np.unique(np.asarray(labels).astype(str), return_inverse=True)[1]

    def _split(self, labels: Any) -> dict[str, np.ndarray]:
        strata = self._strata(labels)
        fixed = self.test_rows()
        if fixed is None:
            return stratified_split(strata, self.val_fraction, self.test_fraction, self.split_seed)
        fixed = np.sort(np.asarray(fixed, dtype=np.int64))
        rest = np.setdiff1d(np.arange(len(strata)), fixed)
        keep, hold = stratified_holdout(strata[rest], self.val_fraction, self.split_seed)
        return {"train": rest[keep], "val": rest[hold], "test": fixed}

    def _drop(self, parts: dict[str, np.ndarray], reports: dict[str, ContractReport]) -> dict[str, np.ndarray]:
        out, per_split, total = {}, {}, 0
        for name, idx in parts.items():
            report = reports[name]
            rows = report.failing_rows()
            out[name] = np.setdiff1d(idx, rows)
            if rows.size:
                per_split[name] = {
                    "dropped": int(rows.size),
                    "kept": int(out[name].size),
                    "by_rule": {f"{v.rule} on {v.feature}": v.failing for v in report.violations},
                    "rows": rows.tolist(),
                }
                total += int(rows.size)
                log.warning(
                    "data.on_violation=drop: dropped %d of %d rows of split %r (%s)", rows.size, idx.size, name,
                    "; ".join(f"{v.rule} on {v.feature}: {v.failing}" for v in report.violations),
                )
            if out[name].size == 0:
                raise KeelError(
                    f"data.on_violation=drop removed every row of split {name!r}: the data does not match the "
                    "contract at all. Fix: check data.contract against the file (keel contract check)"
                )
        self.dropped = {"total": total, "splits": per_split}
        return out

    def _compute_drift(self, features: Any, labels: Any, parts: dict[str, np.ndarray], x: dict[str, np.ndarray]) -> None:
        from keel.data.drift import drift_report

        ref_cols, kinds = self._drift_columns(features, parts["train"])
        split_cols = {s: self._drift_columns(features, parts[s])[0] for s in ("val", "test")}
        classes = list(self.contract.classes)
        if self.regression:  # the target as a numeric distribution, binned as numeric features are
            targets: dict[str, Any] = {
                "reference_labels": None, "split_labels": {}, "classes": classes,
                "reference_target": self._data["train"].tensors[1].numpy().astype(np.float64),
                "split_targets": {s: self._data[s].tensors[1].numpy().astype(np.float64) for s in ("val", "test")},
            }
        else:
            targets = {
                "reference_labels": self._raw_labels(labels, parts["train"]),
                "split_labels": {s: self._raw_labels(labels, parts[s]) for s in ("val", "test")},
                "classes": classes,
            }
        report = drift_report(
            ref_cols, kinds, split_cols,
            **targets,
            thresholds=self.drift_thresholds,
            reference_rows=x["train"].reshape(len(x["train"]), -1),
            split_rows={s: x[s].reshape(len(x[s]), -1) for s in ("val", "test")},
        )
        # PSI of two samples from the same distribution is about (bins - 1) * (1/n_ref + 1/n_cur)
        # (its chi-square approximation): small splits drift by noise alone. Recorded beside the values.
        bins = self.drift_thresholds.bins
        for split, r in report["splits"].items():
            r["summary"]["psi_noise_floor"] = (bins - 1) * (1 / max(len(parts["train"]), 1) + 1 / max(len(parts[split]), 1))
        self.drift = report
        self.reference = report["reference"]
        for split, r in report["splits"].items():
            leak = (r.get("leakage") or {}).get("count", 0)
            summary = r["summary"]
            target = r.get("target")  # regression only
            target_alert = target is not None and target["status"] == "alert"
            if summary["n_alert"] or leak or target_alert:
                psi = target["psi"] if target is not None else None
                log.warning(
                    "drift train->%s: %d features alert, %d warn (noise PSI at these sizes ~%.3f; alert needs PSI >= "
                    "%g and p < %g, BH-adjusted; %d features not testable at these sizes); %d rows also in train "
                    "(leakage)" + ("; target %s (PSI %s, p %s)" if target is not None else ""),
                    split, summary["n_alert"], summary["n_warn"], summary["psi_noise_floor"],
                    self.drift_thresholds.psi_alert, self.drift_thresholds.alpha, summary["n_untestable"], leak,
                    *((target["status"], "n/a" if psi is None else f"{psi:.3f}",
                       "n/a" if target["p_value"] is None else f"{target['p_value']:.2g}") if target is not None else ()),
                )

    # ------------------------------------------------------------------ what the model needs
    @property
    def preprocessing(self) -> dict[str, Any]:
        """The model's input preprocessing fitted on the train split, as plain data."""
        if not self._preprocessing:
            raise RuntimeError("call setup() before reading preprocessing")
        return self._preprocessing

    @property
    def net_input_shape(self) -> list[int]:
        """Shape of one sample after the model's preprocessing (the net's input)."""
        return list(self.contract.shape)

    def class_counts(self, split: str = "train") -> list[int]:
        """Rows per class of ``split``, in contract class order.

        Raises:
            KeelError: the target is a regression target (see :meth:`target_stats`).
        """
        if self.regression:
            raise KeelError(f"class_counts: rows per class are a classification statistic, but data contract "
                            f"{self.contract.name!r} has a regression target. Fix: use target_stats() for regression")
        y = self._data[split].tensors[1]
        return torch.bincount(y, minlength=self.contract.num_classes).tolist()

    def target_stats(self, split: str = "train") -> dict[str, float | int]:
        """A regression target's statistics on ``split`` (calls :meth:`setup` if needed), as
        plain numbers: ``mean``, ``std`` (ddof=1, floored at 1e-12 so it can divide; 1.0 with
        fewer than 2 rows), ``min``, ``max`` (of the float32 values the model sees) and ``rows``.

        Raises:
            KeelError: the target is class labels (see :meth:`class_counts`).
        """
        if not self._data:
            self.setup()
        if not self.regression:
            raise KeelError(f"target_stats: mean/std of the target are a regression statistic, but data contract "
                            f"{self.contract.name!r} has class labels. Fix: use class_counts() for classification")
        y = self._data[split].tensors[1].numpy().astype(np.float64)
        std = float(np.std(y, ddof=1)) if y.size > 1 else 1.0
        return {
            "mean": float(y.mean()),
            "std": max(std, 1e-12),
            "min": float(y.min()),
            "max": float(y.max()),
            "rows": int(y.size),
        }

    def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Encoded features (float32, as the model receives them) and targets of a split: int64
        class indices (classification) or float32 values (regression)."""
        if not self._data:
            self.setup()
        x, y = self._data[split].tensors
        return x.numpy(), y.numpy()

    def split_sizes(self) -> dict[str, int]:
        return {s: len(d) for s, d in self._data.items()}

    def data_report(self) -> dict[str, Any]:
        """Contract reports of every split and what was dropped, as plain data (for JSON)."""
        from keel.data.protocol import contract_data_report

        return contract_data_report(self)

    # ------------------------------------------------------------------ loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, split: str, train: bool) -> DataLoader:
        if not self._data:
            self.setup()
        rank, world = self._rank_world()
        sampler = IndexBatchSampler(
            len(self._data[split]), self.batch_size, shuffle=train, seed=self.seed,
            rank=rank, world_size=world, pad=train,
        )
        if world > 1:  # every process says what it reads (torchrun/srun show each rank's console)
            n = len(self._data[split])
            rows = math.ceil(n / world) if train else len(range(rank, n, world))
            log.info("rank %d of %d: %s shard of %d rows of %d in %d batches (rows %d::%d of each epoch's order%s)",
                     rank, world, split, rows, n, len(sampler), rank, world, ", padded to equal length" if train else "")
        # training resumes inside an epoch where it stopped (the loader's state is in each checkpoint)
        loader_cls = ResumableLoader if train else DataLoader
        # each loader draws its worker base seed from a generator of its own, not torch's global
        # one: a persistent val loader is made during the sanity check in a fresh run but at the
        # first validation in a resumed one, and that one draw would shift every later dropout
        # mask (measured with image folders and 2 workers: keel.data.image_folder)
        generator = torch.Generator().manual_seed(int(self.seed) + SPLITS.index(split))
        return loader_cls(
            self._split_data(split), sampler=sampler, batch_size=None, num_workers=self.num_workers,
            pin_memory=self.pin_memory and not self._device_data, persistent_workers=self.num_workers > 0,
            generator=generator,
        )

    def _split_data(self, split: str) -> TensorDataset:
        """The split's tensors; with ``on_device``, a copy on the run's accelerator (made once)."""
        device = self.trainer.strategy.root_device if self.on_device and self.trainer is not None else None
        if device is None or device.type == "cpu":
            return self._data[split]
        if split not in self._device_data:
            self._device_data[split] = TensorDataset(*(t.to(device) for t in self._data[split].tensors))
        return self._device_data[split]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
