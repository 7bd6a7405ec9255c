"""keel's one-pass epoch metrics equal torchmetrics' classification metrics (the reference)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from keel.models.epoch_metrics import EpochClassification, macro_auroc


def reference(probs, target, losses, rows, c):
    metrics = MetricCollection({
        "acc": MulticlassAccuracy(c, average="micro"),
        "f1": MulticlassF1Score(c, average="macro"),
        "precision": MulticlassPrecision(c, average="macro"),
        "recall": MulticlassRecall(c, average="macro"),
        "auroc": MulticlassAUROC(c, average="macro", thresholds=None),
    })
    confusion, loss = MulticlassConfusionMatrix(c), MeanMetric()
    with warnings.catch_warnings():  # "No positive samples in targets" for the degenerate cases
        warnings.simplefilter("ignore", UserWarning)
        metrics.update(probs, target)
        confusion.update(probs.argmax(1), target)
        loss.update(losses, weight=rows)
        out = {k: v for k, v in metrics.compute().items()}
    out["loss"] = loss.compute()
    out["confusion"] = confusion.compute()
    return out


def batches(n, c, seed, ties=False, classes=None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 3
    if ties:  # coarse logits: many equal probabilities inside each column
        logits = logits.round()
    target = torch.randint(0, classes or c, (n,), generator=g)
    sizes = [min(7, n - i) for i in range(0, n, 7)]
    losses = torch.rand(len(sizes), generator=g)
    return logits, target, losses, torch.tensor(sizes, dtype=torch.float32)


CASES = {
    "random": dict(n=300, c=5, seed=0),
    "ties": dict(n=400, c=4, seed=1, ties=True),
    "binary": dict(n=50, c=2, seed=2),
    "class missing from the targets": dict(n=120, c=6, seed=3, classes=4),
    "one row": dict(n=1, c=3, seed=4),
    "many classes": dict(n=1000, c=10, seed=5, ties=True),
}


@pytest.mark.parametrize("case", CASES)
def test_values_equal_torchmetrics(case):
    logits, target, losses, rows = batches(**CASES[case])
    c = logits.shape[1]
    metric = EpochClassification(c)
    metric.update(logits, target, losses, rows)
    got, want = metric.compute(), reference(logits.softmax(1), target, losses, rows, c)
    assert set(got) == set(want)
    for name in want:
        if name == "confusion":
            assert got[name].tolist() == want[name].tolist()
        else:
            assert got[name].dtype == torch.float32, name
            torch.testing.assert_close(got[name], want[name].float(), rtol=0, atol=2e-6, msg=f"{case}: {name}")


def test_updates_accumulate_and_reset_clears():
    logits, target, losses, rows = batches(200, 3, seed=6)
    split = EpochClassification(3)
    split.update(logits[:100], target[:100], losses[:15], rows[:15])
    split.update(logits[100:], target[100:], losses[15:], rows[15:])
    whole = EpochClassification(3)
    whole.update(logits, target, losses, rows)
    for k, v in whole.compute().items():
        torch.testing.assert_close(split.compute()[k], v)
    split.reset()
    assert split.confmat.sum() == 0 and split.probs == [] and float(split.rows) == 0


def test_auroc_of_perfect_inverted_and_constant_scores():
    target = torch.tensor([0, 0, 1, 1])
    perfect = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8]])
    assert float(macro_auroc(perfect, target, 2)) == 1.0
    assert float(macro_auroc(perfect.flip(1), target, 2)) == 0.0
    assert float(macro_auroc(torch.full((4, 2), 0.5), target, 2)) == 0.5  # all tied: one half


def test_state_dict_holds_no_metric_state():
    """Epoch states are not persistent: checkpoints keep the same keys as before."""
    metric = EpochClassification(3)
    metric.update(*batches(10, 3, seed=7))
    assert metric.state_dict() == {}


def test_compute_after_a_ddp_sync_gathered_the_states():
    """Under DDP torchmetrics replaces each list state by one gathered tensor before compute."""
    logits, target, losses, rows = batches(90, 4, seed=8)
    metric = EpochClassification(4)
    metric.update(logits, target, losses, rows)
    want = metric.compute()
    synced = EpochClassification(4)
    synced.update(logits, target, losses, rows)
    synced.probs, synced.target = torch.cat(synced.probs), torch.cat(synced.target)
    for k, v in want.items():
        torch.testing.assert_close(synced.compute()[k], v)


@pytest.mark.parametrize("case", ["random", "ties", "class missing from the targets"])
@pytest.mark.parametrize("values", [("loss", "acc"), ("acc", "f1", "recall"), ("loss", "precision")])
def test_a_subset_of_values_equals_the_full_ones_and_keeps_no_rows(case, values):
    """Without the AUROC (the training split's default is loss and acc): the same values as
    the full metric, only those asked for, and no per-row state however many rows an epoch has."""
    logits, target, losses, rows = batches(**CASES[case])
    c = logits.shape[1]
    full, lean, from_pred = EpochClassification(c), EpochClassification(c, values), EpochClassification(c, values)
    for metric in (full, lean):
        metric.update(logits[:60], target[:60], losses[:9], rows[:9])
        metric.update(logits[60:], target[60:], losses[9:], rows[9:])
    pred = logits.argmax(1)  # what the Classifier keeps per step for such a split
    from_pred.update(pred[:60], target[:60], losses[:9], rows[:9])
    from_pred.update(pred[60:], target[60:], losses[9:], rows[9:])
    want, got = full.compute(), lean.compute()
    assert set(got) == {*values, "confusion"}
    for name, value in got.items():
        assert torch.equal(value, want[name]), name
        assert torch.equal(from_pred.compute()[name], want[name]), name
    assert not hasattr(lean, "probs") and not hasattr(lean, "target")
    assert sorted(lean._defaults) == ["confmat", "loss_sum", "rows"]


def test_predicted_classes_cannot_make_an_auroc():
    with pytest.raises(ValueError, match=r"expected logits \(N, 3\), got shape \(4,\)"):
        EpochClassification(3).update(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long),
                                      torch.ones(1), torch.tensor([4.0]))


def test_unknown_value_names_are_refused():
    with pytest.raises(ValueError, match=r"unknown \['accuracy'\]; expected some of loss, acc, f1"):
        EpochClassification(3, ("loss", "accuracy"))
