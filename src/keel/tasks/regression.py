"""Regression: MSE (or Huber, L1) on the target standardized with train statistics inside the
model; rmse, mae, r2 (torchmetrics); the exported graph returns values in the target's own
units; parity by absolute and relative difference; int8 within an rmse budget."""

from __future__ import annotations

from typing import Any, ClassVar

from keel.tasks.base import Task


class Regression(Task):
    name: ClassVar[str] = "regression"
    metrics: ClassVar[tuple[str, ...]] = ("loss", "rmse", "mae", "r2")
    train_default: ClassVar[tuple[str, ...]] = ("loss", "rmse")
    best: ClassVar[tuple[str, ...]] = ("rmse", "mae", "r2", "loss")
    higher_is_better: ClassVar[dict[str, bool]] = {"loss": False, "rmse": False, "mae": False, "r2": True}
    monitor: ClassVar[str] = "val/rmse"
    optimized: ClassVar[str] = "val/rmse_best"
    # mse first: the default of model.loss.name=auto
    losses: ClassVar[tuple[str, ...]] = ("mse", "huber", "l1")
    outputs: ClassVar[tuple[str, ...]] = ("prediction",)
    record_key: ClassVar[str] = "residuals"
    # No batch norm in an MLP by default: on a small table its per-batch statistics add noise to a
    # continuous output. data=diabetes, seed 42: test r2 0.551 with batch norm, 0.615 without
    # (seeds 1, 2: 0.599, 0.624; LinearRegression on the same split 0.632).
    default_norm: ClassVar[str] = "none"

    def loss_problems(self, loss: dict[str, Any]) -> list[str]:
        problems = super().loss_problems(loss)
        if loss.get("class_weights") not in (None,):
            problems.append(f"model.loss.class_weights={loss.get('class_weights')!r}: class weights apply to "
                            "classification, not regression. Fix: model.loss.class_weights=null (and "
                            "data.class_weights=null)")
        if loss.get("label_smoothing") not in (None, 0, 0.0):
            problems.append(f"model.loss.label_smoothing={loss.get('label_smoothing')!r}: label smoothing applies "
                            "to classification, not regression. Fix: model.loss.label_smoothing=0.0")
        delta = loss.get("huber_delta", 1.0)
        if not (isinstance(delta, (int, float)) and not isinstance(delta, bool) and delta > 0):
            problems.append(f"model.loss.huber_delta={delta!r}: expected a number > 0 (in standard deviations of "
                            "the target). Fix: e.g. model.loss.huber_delta=1.0")
        return problems

    # ------------------------------------------------------------------ model (torch)
    def output_size(self, contract: Any) -> int:
        return 1

    def prepare_loss(self, loss: dict[str, Any], datamodule: Any) -> dict[str, Any]:
        out = {k: v for k, v in dict(loss).items() if k not in ("class_weights", "label_smoothing")}
        out["name"] = self.loss_name(loss)
        out["huber_delta"] = float(loss.get("huber_delta", 1.0))
        return out

    def target_info(self, datamodule: Any) -> dict[str, Any]:
        """The train split's target statistics (mean, std, ...), as plain data for the checkpoint."""
        return dict(datamodule.target_stats("train"))

    def build_criterion(self, loss: dict[str, Any], contract: Any) -> Any:
        from keel.models.losses import RegressionLoss

        return RegressionLoss(self.loss_name(loss), float(loss.get("huber_delta", 1.0)))

    def build_head(self, contract: Any, target: Any) -> Any:
        from keel.models.heads import RegressionHead

        if not target:
            raise ValueError("regression needs the train split's target statistics (target: {mean, std})")
        return RegressionHead(float(target["mean"]), float(target["std"]))

    def loss(self, module: Any, out: Any, y: Any) -> Any:
        # on the standardized scale: the same loss whatever the target's units
        return module.criterion(out[..., 0].float(), module.head.standardize(y))

    def kept(self, module: Any, out: Any, full: bool) -> Any:
        return module.head(out.detach())[0]

    def keeps_all(self, values: tuple[str, ...]) -> bool:
        return True

    def epoch_metric(self, contract: Any, values: tuple[str, ...], split: str) -> Any:
        from keel.models.epoch_regression import EpochRegression

        return EpochRegression(values, keep=split != "train")

    def split_record(self, computed: dict[str, Any]) -> dict[str, Any]:
        """What a split keeps of its epoch beyond the logged values: the residual summary and the
        (bounded) predictions and targets, for the run record and TensorBoard's views."""
        from keel.models.epoch_regression import residual_summary

        pred, true = computed.pop("pred", None), computed.pop("true", None)
        if pred is None:
            return {}
        pred, true = pred.cpu().numpy(), true.cpu().numpy()
        return {"residuals": residual_summary(pred, true), "pred": pred, "true": true}

    def test_record(self, record: dict[str, Any] | None, contract: Any) -> dict[str, Any]:
        return {"residuals": (record or {}).get("residuals")}

    # ------------------------------------------------------------------ export and serving (numpy)
    def manifest_fields(self, contract: Any, target: Any) -> dict[str, Any]:
        info = dict(target or {})
        return {"target": {"name": getattr(contract, "target", None), "range": getattr(contract, "target_range", None),
                           **{k: info[k] for k in ("mean", "std", "min", "max") if k in info}}}

    def parity(self, ref: tuple, got: tuple, opts: Any, target: Any = None) -> dict[str, Any]:
        """ONNX vs PyTorch on the same rows: every prediction within ``atol * std + rtol *
        |prediction|``, where ``std`` is the train target's (``atol`` is in standard deviations,
        so the same tolerance suits any units)."""
        import numpy as np

        (ref_pred,), (pred,) = ref, got
        scale = float((target or {}).get("std", 1.0))
        diff = np.abs(pred - ref_pred)
        rel = diff / np.maximum(np.abs(ref_pred), 1e-6)
        within = diff <= opts.atol * scale + opts.rtol * np.abs(ref_pred)
        return {
            "rows": int(len(pred)),
            "max_abs_diff": float(diff.max()),
            "max_rel_diff": float(rel.max()),
            "scale": scale,
            "atol": opts.atol,
            "rtol": opts.rtol,
            "ok": bool(within.all()),
        }

    def parity_failure(self, parity: dict[str, Any]) -> str:
        return (f"max |diff| {parity['max_abs_diff']:.3g} (allowed {parity['atol']:g}*{parity['scale']:.4g} (target "
                f"std) + {parity['rtol']:g}*|prediction|)")

    def evaluate(self, sess: Any, x: Any, y: Any) -> dict[str, Any]:
        """The test metrics of an ONNX Runtime session, in the target's units: rmse, mae, r2."""
        import numpy as np

        from keel.export.runtime import run

        if not len(y):
            return {"test_rmse": float("nan"), "test_mae": float("nan"), "test_r2": float("nan"), "test_rows": 0}
        return {f"test_{k}": v for k, v in self.score(run(sess, x), np.asarray(y)).items()} | {"test_rows": int(len(y))}

    def score(self, outputs: tuple, y: Any, only: tuple[str, ...] | None = None) -> dict[str, float]:
        """rmse, mae, r2 of the bundle's ``outputs`` against targets ``y``, in the target's units
        (numpy: the torch-free side of serving; the same definitions as torchmetrics'). ``only``
        is accepted for the classification task's sake: these three are cheap, all are returned."""
        import numpy as np

        (pred,) = outputs
        y = np.asarray(y, dtype=np.float64)
        r = np.asarray(pred, dtype=np.float64).reshape(-1) - y
        ss_tot = float(((y - y.mean()) ** 2).sum())
        r2 = 1.0 - float((r**2).sum()) / ss_tot if ss_tot > 0 and len(y) > 1 else float("nan")
        return {"rmse": float(np.sqrt((r**2).mean())), "mae": float(np.abs(r).mean()), "r2": r2}

    def int8_decision(self, fp32: dict[str, Any], int8: dict[str, Any], options: Any) -> dict[str, Any]:
        """Keep the int8 model when its test rmse is at most ``max_rmse_increase`` (a fraction)
        above the fp32 model's."""
        a, b = fp32["test_rmse"], int8["test_rmse"]
        change = (b - a) / a if a > 0 else (0.0 if b == a else float("inf"))
        return self.int8_verdict("rmse", a, b, change, change, "max_rmse_increase", options.max_rmse_increase,
                                 f"int8 rmse {b:.6g} vs fp32 {a:.6g}: {change:+.2%}",
                                 test_rmse_fp32=a, test_rmse_int8=b, rmse_increase=change,
                                 max_rmse_increase=options.max_rmse_increase)

    def prediction_table(self, outputs: tuple, manifest: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        """``keel predict``'s column: ``prediction``, in the target's units."""
        (pred,) = outputs
        return ["prediction"], [[float(v)] for v in pred]

    def prediction_records(self, outputs: tuple, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        (pred,) = outputs
        return [{"prediction": float(v)} for v in pred]

    def serve_summary(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """What ``keel serve`` records of its answers: a histogram of each record's ``prediction``
        over 10 equal buckets spanning the training target's [min, max] (the contract's
        ``target_range`` when the manifest has no observed range; else [0, 1])."""
        target = manifest.get("target") or {}
        lo, hi = target.get("min"), target.get("max")
        if lo is None or hi is None or not hi > lo:
            lo, hi = target.get("range") or (0.0, 1.0)
        step = (float(hi) - float(lo)) / 10
        return {"kind": "histogram", "key": "prediction", "buckets": [float(lo) + i * step for i in range(11)]}


__all__ = ["Regression"]
