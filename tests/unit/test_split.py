"""stratified_split: seeded, disjoint, class-balanced train/val/test row indices."""

from __future__ import annotations

import numpy as np
import pytest

from keel.data.split import stratified_split

COUNTS = {0: 50, 1: 30, 2: 17, 3: 3}
VAL, TEST = 0.2, 0.1


def labels() -> np.ndarray:
    y = np.concatenate([np.full(n, c) for c, n in COUNTS.items()])
    return np.random.default_rng(123).permutation(y)  # classes interleaved, not in blocks


def test_splits_are_disjoint_sorted_and_cover_every_row_once():
    y = labels()
    parts = stratified_split(y, VAL, TEST, seed=0)
    assert set(parts) == {"train", "val", "test"}
    for idx in parts.values():
        assert np.issubdtype(idx.dtype, np.integer)
        assert np.all(np.diff(idx) > 0)  # sorted, no duplicates within a split
    allrows = np.concatenate(list(parts.values()))
    assert len(allrows) == len(y)
    np.testing.assert_array_equal(np.sort(allrows), np.arange(len(y)))
    assert not set(parts["train"]) & set(parts["val"])
    assert not set(parts["train"]) & set(parts["test"])
    assert not set(parts["val"]) & set(parts["test"])


def test_sizes_follow_fractions_and_class_proportions_are_preserved():
    y = labels()
    n = len(y)
    parts = stratified_split(y, VAL, TEST, seed=0)
    # totals: each class is within one row of its share, so totals are within len(COUNTS)
    assert abs(len(parts["val"]) - n * VAL) <= len(COUNTS)
    assert abs(len(parts["test"]) - n * TEST) <= len(COUNTS)
    for cls, count in COUNTS.items():
        in_val = int((y[parts["val"]] == cls).sum())
        in_test = int((y[parts["test"]] == cls).sum())
        in_train = int((y[parts["train"]] == cls).sum())
        assert in_val + in_test + in_train == count
        assert abs(in_val - count * VAL) <= 1, (cls, in_val)
        assert abs(in_test - count * TEST) <= 1, (cls, in_test)
        # train takes the rest: off by at most the two rounding errors above
        assert abs(in_train - count * (1 - VAL - TEST)) <= 2, (cls, in_train)
        assert in_train >= 1
    # exact counts for the big classes: round(50 * .2) = 10, round(50 * .1) = 5
    assert int((y[parts["val"]] == 0).sum()) == 10
    assert int((y[parts["test"]] == 0).sum()) == 5


def test_class_with_three_rows_gets_one_row_in_each_split():
    y = np.array([0] * 40 + [1] * 3)
    parts = stratified_split(y, 0.1, 0.1, seed=5)
    for name in ("train", "val", "test"):
        assert int((y[parts[name]] == 1).sum()) == 1, name


def test_singleton_class_stays_in_train():
    y = np.array([0] * 20 + [7])
    parts = stratified_split(y, 0.3, 0.3, seed=1)
    assert 20 in parts["train"]
    assert 20 not in parts["val"] and 20 not in parts["test"]


def test_same_seed_gives_identical_split():
    a = stratified_split(labels(), VAL, TEST, seed=7)
    b = stratified_split(labels(), VAL, TEST, seed=7)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_different_seed_gives_different_split():
    a = stratified_split(labels(), VAL, TEST, seed=7)
    b = stratified_split(labels(), VAL, TEST, seed=8)
    assert len(a["val"]) == len(b["val"])  # same sizes...
    assert not np.array_equal(a["val"], b["val"])  # ...different rows
    assert not np.array_equal(a["train"], b["train"])


@pytest.mark.parametrize(
    "val,test",
    [(0.0, 0.1), (0.1, 0.0), (1.0, 0.1), (0.1, 1.0), (-0.1, 0.2), (0.2, -0.1), (0.6, 0.4), (0.5, 0.7), (float("nan"), 0.1)],
)
def test_bad_fractions_raise_naming_the_values(val, test):
    pattern = rf"val_fraction={val}, test_fraction={test}: each must be in \(0, 1\) and their sum < 1"
    with pytest.raises(ValueError, match=pattern):
        stratified_split(labels(), val, test, seed=0)
