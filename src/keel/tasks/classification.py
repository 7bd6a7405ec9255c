"""Classification: cross-entropy over the contract's classes; accuracy, macro F1/precision/recall,
exact AUROC; parity by logits and class agreement; int8 within an accuracy budget."""

from __future__ import annotations

from typing import Any, ClassVar

from keel.tasks.base import Task


class Classification(Task):
    name: ClassVar[str] = "classification"
    metrics: ClassVar[tuple[str, ...]] = ("loss", "acc", "f1", "precision", "recall", "auroc")
    # as lightning-hydra-template logs the training split: val and test always get every metric
    train_default: ClassVar[tuple[str, ...]] = ("loss", "acc")
    best: ClassVar[tuple[str, ...]] = ("acc", "f1", "loss")
    higher_is_better: ClassVar[dict[str, bool]] = {
        "loss": False, "acc": True, "f1": True, "precision": True, "recall": True, "auroc": True}
    monitor: ClassVar[str] = "val/acc"
    optimized: ClassVar[str] = "val/acc_best"
    losses: ClassVar[tuple[str, ...]] = ("cross_entropy",)
    outputs: ClassVar[tuple[str, ...]] = ("logits", "probabilities")
    # the record of the test split (metrics.json, the manifest)
    record_key: ClassVar[str] = "confusion_matrix"
    # batch norm in an MLP by default: data=digits test acc 0.989 with it, 0.978 without
    default_norm: ClassVar[str] = "batch"

    # ------------------------------------------------------------------ model (torch)
    def output_size(self, contract: Any) -> int:
        return len(contract.classes)

    def prepare_loss(self, loss: dict[str, Any], datamodule: Any) -> dict[str, Any]:
        """``model.loss`` as plain data: ``class_weights: balanced`` becomes one weight per class
        from the train split's counts (inverse frequency)."""
        out = dict(loss)
        out["name"] = self.loss_name(loss)
        weights = loss.get("class_weights")
        if weights == "balanced":
            counts = datamodule.class_counts("train")
            total, k = sum(counts), len(counts)
            out["class_weights"] = [total / (k * max(c, 1)) for c in counts]
        elif weights is not None:
            out["class_weights"] = [float(w) for w in weights]
        return out

    def target_info(self, datamodule: Any) -> None:
        return None

    def build_criterion(self, loss: dict[str, Any], contract: Any) -> Any:
        from keel.models.losses import CrossEntropy

        return CrossEntropy(len(contract.classes), loss.get("class_weights"), float(loss.get("label_smoothing") or 0.0))

    def build_head(self, contract: Any, target: Any) -> Any:
        from keel.models.heads import ClassificationHead

        return ClassificationHead()

    def loss(self, module: Any, out: Any, y: Any) -> Any:
        return module.criterion(out, y)

    def kept(self, module: Any, out: Any, full: bool) -> Any:
        """What a step keeps for its split's epoch metrics: the logits when the split ranks an
        AUROC (``full``), else the predicted classes only (N integers, not N x classes floats)."""
        return out.detach() if full else out.detach().argmax(dim=1)

    def keeps_all(self, values: tuple[str, ...]) -> bool:
        return "auroc" in values

    def epoch_metric(self, contract: Any, values: tuple[str, ...], split: str) -> Any:
        from keel.models.epoch_metrics import EpochClassification

        return EpochClassification(len(contract.classes), values)

    def split_record(self, computed: dict[str, Any]) -> dict[str, Any]:
        """What a split keeps of its epoch beyond the logged values: its confusion matrix."""
        return {"confusion_matrix": computed.pop("confusion").tolist()}

    def test_record(self, record: dict[str, Any] | None, contract: Any) -> dict[str, Any]:
        """The run record's view of the test split (metrics.json)."""
        return {"confusion_matrix": (record or {}).get("confusion_matrix"), "classes": list(contract.classes)}

    # ------------------------------------------------------------------ export and serving (numpy)
    def manifest_fields(self, contract: Any, target: Any) -> dict[str, Any]:
        return {"classes": list(contract.classes), "class_names": contract.class_names}

    def parity(self, ref: tuple, got: tuple, opts: Any, target: Any = None) -> dict[str, Any]:
        """ONNX vs PyTorch on the same rows: every logit within ``atol + rtol * |logit|`` and
        the predicted class the same on at least ``min_agreement`` of the rows."""
        import numpy as np

        (ref_logits, ref_probs), (logits, probs) = ref, got
        diff = np.abs(logits - ref_logits)
        rel = diff / np.maximum(np.abs(ref_logits), 1e-6)
        within = diff <= opts.atol + opts.rtol * np.abs(ref_logits)
        agree = float((logits.argmax(1) == ref_logits.argmax(1)).mean())
        return {
            "rows": int(len(logits)),
            "max_abs_diff": float(diff.max()),
            "max_rel_diff": float(rel.max()),
            "max_abs_diff_probabilities": float(np.abs(probs - ref_probs).max()),
            "class_agreement": agree,
            "atol": opts.atol,
            "rtol": opts.rtol,
            "min_agreement": opts.min_agreement,
            "ok": bool(within.all()) and agree >= opts.min_agreement,
        }

    def parity_failure(self, parity: dict[str, Any]) -> str:
        return (f"max |diff| {parity['max_abs_diff']:.3g} (allowed {parity['atol']:g} + {parity['rtol']:g}*|logit|), "
                f"class agreement {parity['class_agreement']:.4f} (required {parity['min_agreement']})")

    def evaluate(self, sess: Any, x: Any, y: Any) -> dict[str, Any]:
        """The test metrics of an ONNX Runtime session: accuracy (``test_acc``) and ``test_rows``."""
        from keel.export.runtime import run

        if not len(y):
            return {"test_acc": float("nan"), "test_rows": 0}
        _, probs = run(sess, x)
        return {"test_acc": float((probs.argmax(axis=1) == y).mean()), "test_rows": int(len(y))}

    def score(self, outputs: tuple, y: Any, only: tuple[str, ...] | None = None) -> dict[str, float]:
        """acc, and macro f1, precision, recall and one-vs-rest AUROC (NaN when a class is absent
        from ``y``) of the bundle's ``outputs`` against class indices ``y``. scikit-learn: the
        torch-free side of serving (torchmetrics needs torch); the same macro definitions.
        ``only=("acc",)``: accuracy alone, without scikit-learn's ~10 ms of the others (permutation
        importance scores once per feature and repeat)."""
        import numpy as np

        _, probs = outputs
        y = np.asarray(y)
        labels = list(range(probs.shape[1]))
        pred = probs.argmax(axis=1)
        if only is not None and set(only) <= {"acc"}:
            return {"acc": float((pred == y).mean())}
        from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

        precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=labels, average="macro",
                                                                   zero_division=0)
        auroc = float("nan")
        if len(np.unique(y)) == len(labels) and len(labels) > 1:
            auroc = float(roc_auc_score(y, probs[:, 1] if len(labels) == 2 else probs, multi_class="ovr",
                                        labels=labels))
        return {"acc": float((pred == y).mean()), "f1": float(f1), "precision": float(precision),
                "recall": float(recall), "auroc": auroc}

    def int8_decision(self, fp32: dict[str, Any], int8: dict[str, Any], options: Any) -> dict[str, Any]:
        """Keep the int8 model when it loses at most ``max_accuracy_drop`` test accuracy."""
        a, b = fp32["test_acc"], int8["test_acc"]
        drop = a - b
        return self.int8_verdict("acc", a, b, -drop, drop, "max_accuracy_drop", options.max_accuracy_drop,
                                 f"int8 accuracy {b:.4f} vs fp32 {a:.4f}: a drop of {drop:.4f}",
                                 test_acc_fp32=a, test_acc_int8=b, accuracy_drop=drop,
                                 max_accuracy_drop=options.max_accuracy_drop)

    def prediction_table(self, outputs: tuple, manifest: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        """``keel predict``'s columns: the label, its class value and one probability per class."""
        _, probs = outputs
        names, classes = manifest["class_names"], manifest["classes"]
        index = probs.argmax(axis=1)
        header = ["label", "class"] + [f"p_{n}" for n in names]
        rows = [[names[k], classes[k], *map(float, probs[i])] for i, k in enumerate(index.tolist())]
        return header, rows

    def prediction_records(self, outputs: tuple, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        _, probs = outputs
        names, classes = manifest["class_names"], manifest["classes"]
        return [{"label": names[k], "class": classes[k], "probabilities": dict(zip(names, map(float, probs[i])))}
                for i, k in enumerate(probs.argmax(axis=1).tolist())]

    def serve_summary(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """What ``keel serve`` counts of its answers: each prediction record's ``label``, one
        counter per class name (all of them, so a class never predicted shows 0)."""
        return {"kind": "counts", "key": "label", "values": list(manifest["class_names"])}


__all__ = ["Classification"]
