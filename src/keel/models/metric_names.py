"""The metric names the Classifier logs: one list shared by the module, config checks and tests."""

from __future__ import annotations

from collections.abc import Sequence

SPLITS = ("train", "val", "test")
PER_SPLIT = ("loss", "acc", "f1", "precision", "recall", "auroc")
# The training split's default (``model.train_metrics``), as lightning-hydra-template logs it:
# val and test always get every metric. ``model.train_metrics=all`` adds the others; the train
# split's exact AUROC keeps every training row's probabilities for the epoch (N x classes floats).
TRAIN_DEFAULT = ("loss", "acc")
# Best-so-far validation values (what sweeps optimize by default).
BEST = ("val/acc_best", "val/f1_best", "val/loss_best")

# Every name the Classifier can log (with model.train_metrics=all).
METRIC_NAMES: tuple[str, ...] = tuple(f"{s}/{m}" for s in SPLITS for m in PER_SPLIT) + BEST


def train_metric_set(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``model.train_metrics`` as names in ``PER_SPLIT`` order: ``all``, or a list of them.

    Raises ValueError naming the value, what is allowed and the fix."""
    if value is None:
        return TRAIN_DEFAULT
    if value == "all":
        return PER_SPLIT
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"model.train_metrics={value!r}: expected all or a list of {', '.join(PER_SPLIT)}. "
                         "Fix: e.g. model.train_metrics=[loss,acc] or model.train_metrics=all")
    unknown = [v for v in value if v not in PER_SPLIT]
    if unknown:
        raise ValueError(f"model.train_metrics={list(value)!r}: unknown {', '.join(map(repr, unknown))}; expected all "
                         f"or a list of {', '.join(PER_SPLIT)}. Fix: e.g. model.train_metrics=[loss,acc]")
    return tuple(m for m in PER_SPLIT if m in value)


def logged_names(train_metrics: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The names a run logs: the training split's chosen metrics, every val/test metric, the bests."""
    train = train_metric_set(train_metrics)
    return tuple(f"train/{m}" for m in train) + tuple(f"{s}/{m}" for s in SPLITS[1:] for m in PER_SPLIT) + BEST
