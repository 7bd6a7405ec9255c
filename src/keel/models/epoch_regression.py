"""A split's regression metrics over an epoch, from one update per epoch: loss, rmse, mae, r2
(torchmetrics), and for val/test the predictions themselves (for the residual summary and the
predicted-vs-true views), up to a bound.

States reduce across DDP processes as torchmetrics' own do, so ``compute()`` gives the whole
job's values on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, R2Score
from torchmetrics.aggregation import CatMetric

VALUES = ("loss", "rmse", "mae", "r2")
# predictions kept per split and process for the residual summary and TensorBoard's views
KEEP_ROWS = 100_000


def residual_summary(pred: np.ndarray, true: np.ndarray) -> dict[str, float | int]:
    """Residuals ``pred - true``: count, mean (bias), std, mae, rmse, quantiles, largest |residual|."""
    r = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    if r.size == 0:
        return {"rows": 0}
    q = np.quantile(r, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "rows": int(r.size),
        "mean": float(r.mean()),
        "std": float(r.std(ddof=1)) if r.size > 1 else 0.0,
        "mae": float(np.abs(r).mean()),
        "rmse": float(np.sqrt((r**2).mean())),
        "p05": float(q[0]), "p25": float(q[1]), "p50": float(q[2]), "p75": float(q[3]), "p95": float(q[4]),
        "max_abs": float(np.abs(r).max()),
    }


class EpochRegression(nn.Module):
    """Loss and regression metrics of one split over an epoch.

    ``update(pred, target, losses, rows)``: the epoch's predictions and targets ``(N,)`` in the
    target's units, the mean loss of each batch and its row count (the loss is weighted by rows).
    ``compute()``: the ``values`` asked for (of ``loss, rmse, mae, r2``) as float32 scalars, and
    with ``keep`` the kept ``"pred"``/``"true"`` arrays (the first ``KEEP_ROWS`` rows of each
    process). r2 of fewer than two rows is NaN (torchmetrics refuses it).
    """

    def __init__(self, values: Sequence[str] = VALUES, keep: bool = False) -> None:
        super().__init__()
        unknown = sorted(set(values) - set(VALUES))
        if unknown:
            raise ValueError(f"EpochRegression values: unknown {unknown}; expected some of {', '.join(VALUES)}")
        self.values = tuple(v for v in VALUES if v in values)
        self.loss = MeanMetric()
        self.rmse = MeanSquaredError(squared=False)
        self.mae = MeanAbsoluteError()
        self.r2 = R2Score()
        self.keep = keep
        if keep:
            self.pred, self.true = CatMetric(), CatMetric()
        self._rows = 0
        self._kept = 0

    def update(self, pred: Tensor, target: Tensor, losses: Tensor, rows: Tensor) -> None:
        pred, target = pred.float().reshape(-1), target.float().reshape(-1)
        self.loss.update(losses.float(), rows.float())
        for name in ("rmse", "mae", "r2"):
            if name in self.values:
                getattr(self, name).update(pred, target)
        self._rows += int(pred.numel())
        if self.keep and self._kept < KEEP_ROWS:
            n = min(int(pred.numel()), KEEP_ROWS - self._kept)
            self.pred.update(pred[:n])
            self.true.update(target[:n])
            self._kept += n

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {"loss": self.loss.compute().float()}
        for name in ("rmse", "mae"):
            if name in self.values:
                out[name] = getattr(self, name).compute().float()
        if "r2" in self.values:
            # torchmetrics' R2Score sums across processes; fewer than 2 rows in all is undefined
            n = int(self.r2.total) if isinstance(self.r2.total, Tensor) else int(self.r2.total)
            out["r2"] = self.r2.compute().float() if n >= 2 else torch.tensor(float("nan"))
        if self.keep:
            out["pred"] = self.pred.compute() if self._kept else torch.zeros(0)
            out["true"] = self.true.compute() if self._kept else torch.zeros(0)
        return {k: v for k, v in out.items() if k in self.values or k in ("pred", "true")}

    def reset(self) -> None:
        for m in self.children():
            m.reset()
        self._rows = self._kept = 0


__all__ = ["EpochRegression", "KEEP_ROWS", "VALUES", "residual_summary"]
