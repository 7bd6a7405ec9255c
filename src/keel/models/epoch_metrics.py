"""One torchmetrics ``Metric`` for a split's epoch: loss, accuracy, macro F1/precision/recall,
exact macro one-vs-rest AUROC and the confusion matrix, from a single update per epoch.

Why not a ``MetricCollection`` of torchmetrics' classification metrics: those give the same
values (tests/unit/test_epoch_metrics.py compares them on random, tied and degenerate inputs),
but they keep four copies of the same counts and the exact AUROC sorts each class in a Python
loop; on the embedded digits data their epoch end took ~5 ms, more than 20 training steps of
the mlp. Here every count comes from one confusion matrix and the AUROC of all classes from one
sort (the Mann-Whitney form: midranks of the positives, ties counted one half, which is the
area under the exact ROC curve).

States reduce across DDP processes like torchmetrics' own (sums; probabilities and targets
gathered), so ``compute()`` returns the whole job's values on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

VALUES = ("loss", "acc", "f1", "precision", "recall", "auroc")


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den == 0`` (torchmetrics' ``zero_division=0``)."""
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, torch.ones_like(den)), torch.zeros_like(num))


def _macro(score: Tensor, present: Tensor) -> Tensor:
    """Mean of per-class ``score`` over the classes that occur in the targets or predictions
    (torchmetrics' macro average leaves out classes with ``tp + fp + fn == 0``)."""
    weights = present.to(score.dtype)
    return _safe_divide((score * weights).sum(), weights.sum())


def confusion_scores(confmat: Tensor, macro: bool = True) -> dict[str, Tensor]:
    """Micro accuracy and macro F1, precision and recall of a confusion matrix (rows: targets,
    columns: predictions), as torchmetrics computes them (``average="micro"`` accuracy,
    ``average="macro"`` others, ``zero_division=0``); with ``macro=False`` the accuracy only."""
    cm = confmat.to(torch.float64)
    tp = cm.diagonal()
    scores = {"acc": _safe_divide(tp.sum(), cm.sum())}
    if not macro:
        return scores
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    present = (tp + fp + fn) > 0
    scores["f1"] = _macro(_safe_divide(2 * tp, 2 * tp + fp + fn), present)
    scores["precision"] = _macro(_safe_divide(tp, tp + fp), present)
    scores["recall"] = _macro(_safe_divide(tp, tp + fn), present)
    return scores


def macro_auroc(probs: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Exact one-vs-rest AUROC per class, averaged over classes (``MulticlassAUROC(average="macro",
    thresholds=None)``): a class with no positive or no negative rows scores 0, as there.

    AUROC of class c = (sum of the midranks of its rows' scores - n1 (n1 + 1) / 2) / (n1 n0),
    with n1 rows of class c and n0 others; ranks are taken over all rows' column-c scores at
    once (one sort of the ``(N, C)`` matrix).
    """
    n = probs.shape[0]
    if n == 0:
        return torch.zeros((), dtype=torch.float64, device=probs.device)
    columns = probs.T.contiguous()  # (C, N): each class's scores in one row
    if columns.device.type == "cpu":  # NumPy sorts the rows in ~40% of torch's time on CPU
        order = torch.from_numpy(np.argsort(columns.numpy(), axis=1))
        scores = columns.gather(1, order)
    else:
        scores, order = columns.sort(dim=1)
    idx = torch.arange(n, device=probs.device).expand_as(scores)
    new_group = torch.ones_like(scores, dtype=torch.bool)
    new_group[:, 1:] = scores[:, 1:] != scores[:, :-1]
    last_of_group = torch.ones_like(scores, dtype=torch.bool)
    last_of_group[:, :-1] = new_group[:, 1:]
    first = torch.where(new_group, idx, 0).cummax(dim=1).values
    last = torch.where(last_of_group, idx, n - 1).flip(1).cummin(dim=1).values.flip(1)
    midrank = (first + last).to(torch.float64) / 2 + 1
    positive = target[order] == torch.arange(num_classes, device=probs.device).unsqueeze(1)  # (C, N), sorted
    n1 = positive.sum(1).to(torch.float64)
    n0 = n - n1
    rank_sum = (midrank * positive).sum(1)
    per_class = _safe_divide(rank_sum - n1 * (n1 + 1) / 2, n1 * n0)
    return per_class.mean()


def _float64_capable(t: Tensor) -> Tensor:
    """``t``, on the CPU if its device has no float64 (MPS): the rank and ratio sums need it."""
    return t.cpu() if t.device.type == "mps" else t


def _cat(state: Tensor | list[Tensor], empty: Tensor) -> Tensor:
    if isinstance(state, Tensor):
        return state
    return dim_zero_cat(state) if state else empty


class EpochClassification(Metric):
    """Loss and classification metrics of one split over an epoch.

    ``update(logits, target, losses, rows)``: the epoch's logits ``(N, C)`` and targets ``(N,)``,
    the mean loss of each batch and the batch's row count (the loss is weighted by rows).
    Without ``"auroc"``, ``logits`` may instead be the predicted classes ``(N,)``
    (``logits.argmax(1)``): all the other values need.
    ``compute()``: the ``values`` asked for (default all of ``"loss", "acc", "f1",
    "precision", "recall", "auroc"``) as float32 scalars and ``"confusion"`` (``(C, C)``
    counts, rows: targets). Without ``"auroc"`` the epoch's probabilities and targets are not
    kept: the state is the confusion matrix and two sums, whatever the number of rows.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_classes: int, values: Sequence[str] = VALUES) -> None:
        super().__init__()
        unknown = sorted(set(values) - set(VALUES))
        if unknown:
            raise ValueError(f"EpochClassification values: unknown {unknown}; expected some of {', '.join(VALUES)}")
        self.num_classes = int(num_classes)
        self.values = tuple(v for v in VALUES if v in values)
        self.auroc = "auroc" in self.values
        self._macro = any(v in self.values for v in ("f1", "precision", "recall"))
        c = self.num_classes
        self.add_state("confmat", torch.zeros(c, c, dtype=torch.long), dist_reduce_fx="sum")
        # float32 like torchmetrics' MeanMetric (MPS has no float64); counts are exact below 2**24 rows
        # per batch and the sums are of per-batch means times rows
        self.add_state("loss_sum", torch.zeros((), dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("rows", torch.zeros((), dtype=torch.float32), dist_reduce_fx="sum")
        if self.auroc:
            self.add_state("probs", [], dist_reduce_fx="cat")
            self.add_state("target", [], dist_reduce_fx="cat")

    def update(self, logits: Tensor, target: Tensor, losses: Tensor, rows: Tensor) -> None:  # type: ignore[override]
        c = self.num_classes
        target = target.long()
        if self.auroc:
            if logits.ndim != 2:
                raise ValueError(f"EpochClassification with auroc: expected logits (N, {c}), got shape "
                                 f"{tuple(logits.shape)}; predicted classes alone cannot rank an AUROC")
            probs = logits.float().softmax(dim=1)
            pred = probs.argmax(dim=1)  # on the probabilities, as torchmetrics does
            self.probs.append(probs)
            self.target.append(target)
        elif logits.ndim == 1:  # predicted classes
            pred = logits.long()
        else:
            # The same class as on the probabilities (softmax is monotonic; equal logits give
            # equal probabilities and argmax takes the first): CPU softmax over 10 classes costs
            # ~8x the argmax, and the split keeps no probabilities.
            pred = logits.argmax(dim=1)
        # in place (add_): `self.state += x` also re-sets the attribute through nn.Module.__setattr__
        self.confmat.add_(torch.bincount(target * c + pred, minlength=c * c).view(c, c))
        rows = rows.to(self.rows.dtype)
        self.loss_sum.add_((losses.to(self.loss_sum.dtype) * rows).sum())
        self.rows.add_(rows.sum())

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        confmat = _float64_capable(self.confmat)
        values = confusion_scores(confmat, macro=self._macro)
        if self.auroc:
            # lists of per-update tensors; one tensor after a DDP sync (torchmetrics gathers them)
            probs = _float64_capable(_cat(self.probs, torch.zeros(0, self.num_classes, device=confmat.device)))
            target = _float64_capable(_cat(self.target, torch.zeros(0, dtype=torch.long, device=confmat.device)))
            values["auroc"] = macro_auroc(probs, target, self.num_classes)
        values["loss"] = _safe_divide(self.loss_sum, self.rows)
        out = {k: values[k].to(torch.float32) for k in self.values}
        out["confusion"] = confmat.clone()
        return out


__all__ = ["VALUES", "EpochClassification", "confusion_scores", "macro_auroc"]
