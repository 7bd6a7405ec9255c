"""Permutation feature importance (keel.explain.importance) on a table with planted columns.

The target is decided by ``col3`` plus a weaker ``col1``; ``col0``, ``col2``, ``col4`` (nullable,
with missing values) and ``col5`` (a category) are noise. Real TaskModules are trained for a few
hundred full-batch steps (well under a second each), once per module.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from keel.explain.importance import importance_chart, importance_lines, permutation_importance, within_noise
from keel.models import TaskModule
from keel.tasks import get_task

NAMES = [f"col{j}" for j in range(6)]
TRAIN, TEST = 600, 270


def _table(rows: int, rng: np.random.Generator) -> np.ndarray:
    """Raw rows as the contract encodes them: 5 numbers (col4 with NaN) and a category code."""
    x = rng.normal(size=(rows, 6)).astype(np.float32)
    x[rng.random(rows) < 0.2, 4] = np.nan
    x[:, 5] = rng.integers(0, 3, rows)
    return x


def _signal(x: np.ndarray) -> np.ndarray:
    return 2.0 * x[:, 3] + 0.8 * x[:, 1]


def _contract(task: str) -> dict[str, Any]:
    columns: dict[str, Any] = {n: {"dtype": "float64", "nullable": n == "col4", "min": None, "max": None}
                               for n in NAMES[:5]}
    columns["col5"] = {"dtype": "category", "nullable": False, "categories": ["a", "b", "c"]}
    if task == "regression":
        return {"kind": "table", "name": "planted", "task": "regression", "target": "y", "target_range": None,
                "columns": columns}
    return {"kind": "table", "name": "planted", "target": "y", "classes": [0, 1], "columns": columns}


def _train(task: str) -> tuple[TaskModule, torch.Tensor, torch.Tensor]:
    """A TaskModule trained on the planted table, and its held-out (test) rows and targets."""
    rng = np.random.default_rng(7)
    x_train, x_test = _table(TRAIN, rng), _table(TEST, rng)
    noise = rng.normal(scale=0.1, size=TRAIN + TEST).astype(np.float32)
    s = _signal(np.concatenate([x_train, x_test])) + noise
    y = (s > 0).astype(np.int64) if task == "classification" else (10.0 + 3.0 * s).astype(np.float32)
    num = x_train[:, :5].astype(np.float64)
    mean, std = np.nanmean(num, axis=0), np.nanstd(num, axis=0, ddof=1)
    preprocessing = {"type": "tabular", "numeric": [0, 1, 2, 3, 4], "mean": mean.tolist(), "std": std.tolist(),
                     "fill": mean.tolist(), "nullable": [False, False, False, False, True],
                     "categorical": [5], "cardinalities": [3]}
    outputs = 2 if task == "classification" else 1
    width = 5 + 1 + 4  # numbers, col4's missing indicator, col5's one-hot slots (+ missing)
    target = {"mean": float(y[:TRAIN].mean()), "std": float(y[:TRAIN].std())} if task == "regression" else None
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = TaskModule(
            net={"_target_": "keel.models.nets.MLP", "input_shape": [width], "num_classes": outputs,
                 "hidden": [32], "dropout": 0.0, "norm": "none"},
            optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01},
            scheduler={"scheduler": None}, preprocessing=preprocessing, loss={}, contract=_contract(task),
            task=task, target=target)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y[:TRAIN])
    optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        module.task.loss(module, module.net(module.preprocess(xt)), yt).backward()
        optimizer.step()
    module.eval()
    return module, torch.from_numpy(x_test), torch.from_numpy(y[TRAIN:])


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    # Tensors this small run fastest on one thread; two OpenMP threads on a busy machine made
    # training 30x slower here (0.5 s -> 16 s). Restored after the module.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def classifier(one_thread: None) -> tuple[TaskModule, torch.Tensor, torch.Tensor]:
    return _train("classification")


@pytest.fixture(scope="module")
def regressor(one_thread: None) -> tuple[TaskModule, torch.Tensor, torch.Tensor]:
    return _train("regression")


@pytest.fixture(scope="module")
def report(classifier: tuple[TaskModule, torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    model, x, y = classifier
    return permutation_importance(model, x, y, get_task("classification"), feature_names=NAMES)


def _by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in report["features"]}


def test_planted_columns_rank_first_for_accuracy(report: dict[str, Any]) -> None:
    assert report["method"] == "permutation" and report["metric"] == "acc" and report["higher_is_better"] is True
    assert report["split"] == "test" and report["rows"] == TEST and report["repeats"] == 5 and report["seed"] == 0
    assert report["baseline"] > 0.9
    ranked = [f["name"] for f in report["features"]]
    assert ranked[:2] == ["col3", "col1"]
    assert [f["rank"] for f in report["features"]] == [1, 2, 3, 4, 5, 6]
    means = [f["mean"] for f in report["features"]]
    assert means == sorted(means, reverse=True)
    feats = _by_name(report)
    assert feats["col3"]["mean"] > 0.25 and feats["col1"]["mean"] > 0.05
    assert feats["col3"]["mean"] > feats["col1"]["mean"] + 4 * feats["col1"]["std"]
    for name in ("col0", "col2", "col4", "col5"):  # noise, including the nullable and the category column
        assert abs(feats[name]["mean"]) < 0.02, feats[name]
        assert within_noise(feats[name], report["repeats"]) or feats[name]["mean"] < 0.01
    # plain JSON (the bundle manifest, /info): Python numbers, no NaN
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert all(type(f["mean"]) is float and type(f["std"]) is float and type(f["rank"]) is int
               for f in report["features"])


def test_lower_is_better_metric_is_flipped_so_the_planted_column_is_positive(
        regressor: tuple[TaskModule, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = regressor
    rep = permutation_importance(model, x, y, "regression", feature_names=NAMES)
    assert rep["metric"] == "rmse" and rep["higher_is_better"] is False
    assert rep["baseline"] < 1.0  # target std ~6.5
    ranked = [f["name"] for f in rep["features"]]
    assert ranked[:2] == ["col3", "col1"]
    feats = _by_name(rep)
    assert feats["col3"]["mean"] > 5.0 and feats["col1"]["mean"] > 1.0  # rmse rises, reported positive
    for name in ("col0", "col2", "col4", "col5"):
        assert abs(feats[name]["mean"]) < 0.1 * feats["col1"]["mean"], feats[name]
    # r2 is higher-is-better: not flipped, the same order
    r2 = permutation_importance(model, x, y, "regression", feature_names=NAMES, metric="test/r2", repeats=2)
    assert r2["metric"] == "r2" and r2["higher_is_better"] is True
    assert [f["name"] for f in r2["features"]][:2] == ["col3", "col1"] and r2["features"][0]["mean"] > 0.5


def test_same_seed_same_numbers_other_seed_other_spread(
        classifier: tuple[TaskModule, torch.Tensor, torch.Tensor], report: dict[str, Any]) -> None:
    model, x, y = classifier
    rng_before = torch.get_rng_state()
    again = permutation_importance(model, x, y, "classification", feature_names=NAMES, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # a private generator: global RNG untouched
    assert again == report
    other = permutation_importance(model, x, y, "classification", feature_names=NAMES, seed=1)
    assert other["seed"] == 1 and other["baseline"] == report["baseline"]
    spread = {f["name"]: f["std"] for f in report["features"]}
    assert sum(f["std"] != spread[f["name"]] for f in other["features"]) >= 4
    assert other["features"][0]["name"] == "col3"


def test_one_repeat_has_zero_spread_and_runs_under_no_grad_in_train_mode(
        classifier: tuple[TaskModule, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = classifier
    model.train()
    try:
        with torch.no_grad():
            rep = permutation_importance(model, x, y, "classification", feature_names=NAMES, repeats=1, seed=3)
        assert model.training  # evaluated in eval mode, the caller's mode restored
    finally:
        model.eval()
    assert rep["repeats"] == 1 and all(f["std"] == 0.0 for f in rep["features"])
    assert rep["features"][0]["name"] == "col3"
    names = permutation_importance(model, x[:40], y[:40], "classification", repeats=1)
    assert sorted(f["name"] for f in names["features"]) == [f"feature {j}" for j in range(6)]


def test_batch_rows_gives_the_same_report(classifier: tuple[TaskModule, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = classifier
    whole = permutation_importance(model, x, y, "classification", feature_names=NAMES, repeats=2)
    chunked = permutation_importance(model, x, y, "classification", feature_names=NAMES, repeats=2, batch_rows=64)
    assert chunked == whole


class _Sum(nn.Module):
    """A regression 'model' whose prediction is a fixed function of raw inputs."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.fn(x),)


def test_shuffling_one_column_leaves_missing_values_of_others_in_place() -> None:
    # The prediction reads only where col2 is missing. Captum's default shuffle (x[perm] * mask +
    # x * ~mask) would copy col2's NaNs into other rows while shuffling col0 (NaN * 0 = NaN).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, generator=gen)
    x[::5, 2] = float("nan")
    model = _Sum(lambda t: torch.isnan(t[:, 2]).float() * 10.0)
    y = model.outputs(x)[0]
    rep = permutation_importance(model, x, y, "regression", feature_names=["a", "b", "c"], repeats=3)
    feats = _by_name(rep)
    assert rep["baseline"] == 0.0
    assert feats["a"]["mean"] == 0.0 and feats["b"]["mean"] == 0.0 and feats["a"]["std"] == 0.0
    assert rep["features"][0]["name"] == "c" and feats["c"]["mean"] > 3.0


def test_sequences_default_to_one_feature_per_channel_and_masks_group_elements() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, 3, generator=gen)  # (rows, steps, channels)
    model = _Sum(lambda t: t[:, :, 1].sum(dim=1) + 0.3 * t[:, :, 0].sum(dim=1))
    y = model.outputs(x)[0]
    rep = permutation_importance(model, x, y, "regression", feature_names=["c0", "c1", "c2"])
    assert [f["name"] for f in rep["features"]] == ["c1", "c0", "c2"]
    assert _by_name(rep)["c2"]["mean"] == 0.0
    # an explicit mask: the first and last 4 steps of every channel as two features
    mask = torch.zeros(8, 3, dtype=torch.long)
    mask[4:] = 1
    halves = permutation_importance(model, x, y, "regression", feature_names=["early", "late"], feature_mask=mask)
    assert sorted(f["name"] for f in halves["features"]) == ["early", "late"]
    assert all(f["mean"] > 1.0 for f in halves["features"])
    # images need a mask; with one they work
    img = torch.randn(50, 1, 2, 2, generator=gen)
    img_model = _Sum(lambda t: t[:, 0, 0, :].sum(dim=1))
    with pytest.raises(ValueError, match=r"sample shape \[1, 2, 2\] \(rank 3\).*keel.explain.images.*feature_mask"):
        permutation_importance(img_model, img, img_model.outputs(img)[0], "regression")
    rows = torch.tensor([[[0, 0], [1, 1]]])
    by_row = permutation_importance(img_model, img, img_model.outputs(img)[0], "regression",
                                    feature_names=["top", "bottom"], feature_mask=rows)
    assert by_row["features"][0]["name"] == "top" and _by_name(by_row)["bottom"]["mean"] == 0.0


def test_bad_input_is_refused_with_the_value_and_the_fix(
        classifier: tuple[TaskModule, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = classifier
    cases = [
        ({"repeats": 0}, r"repeats=0: expected an integer >= 1.*Fix: e\.g\. repeats=5"),
        ({"feature_names": NAMES[:5]}, r"feature_names has 5 names but the input has 6 features.*Fix: pass "
                                       r"contract\.feature_names"),
        ({"metric": "rmse"}, r"metric='rmse': unknown for classification; expected one of acc, f1, precision, "
                             r"recall, auroc\. Fix: e\.g\. metric='acc'"),
        ({"metric": "loss"}, r"metric='loss': unknown for classification"),
        ({"batch_rows": 0}, r"batch_rows=0: expected an integer >= 1 or None"),
        ({"feature_mask": torch.zeros(5, dtype=torch.long)}, r"feature_mask of shape \[5\]: expected the sample "
                                                             r"shape \[6\]"),
        ({"feature_mask": torch.tensor([0, 0, 2, 2, 3, 3])}, r"feature_mask ids \[0, 2, 3\]: expected every id "
                                                             r"of 0\.\.K-1 with no gaps"),
        ({"feature_mask": torch.zeros(6)}, r"feature_mask of dtype torch\.float32: expected integer feature ids"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            permutation_importance(model, x, y, "classification", **kwargs)
    with pytest.raises(ValueError, match=r"y has 269 values but x has 270 rows"):
        permutation_importance(model, x, y[1:], "classification")
    with pytest.raises(ValueError, match=r"x has 1 row\(s\).*at least 2"):
        permutation_importance(model, x[:1], y[:1], "classification")
    one_class = y[y == 1][:50]  # auroc is NaN when a class is absent
    with pytest.raises(ValueError, match=r"metric='auroc' is nan on these 50 rows.*Fix: .*metric='acc'"):
        permutation_importance(model, x[y == 1][:50], one_class, "classification", metric="auroc")


def test_chart_is_an_rgb_image_with_bars(report: dict[str, Any]) -> None:
    image = importance_chart(report)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 100 and image.shape[1] > 300
    assert (image < 250).any(axis=2).mean() > 0.02  # bars, labels, axes: not a blank canvas
    bar = np.array([0x4C, 0x72, 0xB0])
    assert (np.abs(image.astype(int) - bar).sum(axis=2) < 10).sum() > 500  # the bars' colour
    assert importance_chart(report, top=2).shape[0] < image.shape[0]  # fewer bars, a shorter figure
    with pytest.raises(ValueError, match=r"top=0: expected an integer >= 1"):
        importance_chart(report, top=0)


def test_lines_show_the_ranking_and_the_features_within_noise(report: dict[str, Any]) -> None:
    lines = importance_lines(report)
    assert re.fullmatch(r"permutation importance: drop in acc when a feature is shuffled; baseline acc 0\.9\d{3} "
                        r"on test \(270 rows, 5 repeats, seed 0\)", lines[0]), lines[0]
    assert len(lines) == 1 + 6 + 1
    assert re.fullmatch(r"  1\. col3  +0\.\d{4} ± 0\.\d{4}", lines[1]), lines[1]
    assert re.match(r"  2\. col1  +0\.\d{4} ± ", lines[2]), lines[2]
    assert len({line.index("±") for line in lines[1:-1]}) == 1  # aligned
    noise = sum(within_noise(f, report["repeats"]) for f in report["features"])
    assert noise >= 3
    assert lines[-1] == (f"{noise} of 6 features change acc by less than 2 standard errors over "
                         f"{report['repeats']} repeats (indistinguishable from no effect)")
    top2 = importance_lines(report, top=2)
    assert top2[0].endswith("; top 2 of 6 features") and len(top2) == 4
    rising = dict(report, metric="rmse", higher_is_better=False)
    assert importance_lines(rising)[0].startswith("permutation importance: rise in rmse when a feature")


def test_within_noise_judges_the_mean_by_its_standard_error() -> None:
    """20 shuffles that lower acc by 0.10 +- 0.06 each: a real effect, though a single shuffle may
    show none; 5 shuffles of 0.01 +- 0.05: noise; one shuffle has no spread, so only a change for the
    better counts as noise."""
    assert not within_noise({"mean": 0.10, "std": 0.06}, 20)
    assert within_noise({"mean": 0.10, "std": 0.30}, 20)
    assert within_noise({"mean": 0.01, "std": 0.05}, 5)
    assert within_noise({"mean": -0.02, "std": 0.0}, 1) and not within_noise({"mean": 0.02, "std": 0.0}, 1)
    lines = importance_lines({"method": "permutation", "metric": "acc", "higher_is_better": True, "split": "test",
                              "rows": 9, "repeats": 1, "seed": 0, "baseline": 0.9,
                              "features": [{"name": "a", "mean": 0.1, "std": 0.0, "rank": 1}]})
    assert lines[-1] == "0 of 1 features do not lower acc (1 repeat: no spread to tell noise by; use 5 or more)"
