"""keel.data.drift: binning, PSI/KL/JS against hand computations, statuses, label shift,
leakage (shared rows), thresholds validation, plain-data output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from keel.data import drift
from keel.data.drift import (
    DriftError,
    DriftThresholds,
    compare,
    drift_report,
    format_report,
    label_shift,
    reference_stats,
    shared_rows,
)
from keel.errors import KeelError

T = DriftThresholds()


def numeric(x) -> dict:
    """Reference stats of one numeric feature ``x``."""
    return reference_stats({"x": np.asarray(x, dtype=float)}, {"x": "numeric"})


def hand_divergences(cur_counts, ref_counts, eps):
    """PSI, KL(cur||ref), JS base 2 straight from the definitions, in plain Python."""
    k = len(cur_counts)
    p = [(c + eps) / (sum(cur_counts) + eps * k) for c in cur_counts]
    q = [(c + eps) / (sum(ref_counts) + eps * k) for c in ref_counts]
    m = [(a + b) / 2 for a, b in zip(p, q)]
    psi = sum((a - b) * math.log(a / b) for a, b in zip(p, q))
    kl = sum(a * math.log(a / b) for a, b in zip(p, q))
    js = 0.5 * sum(a * math.log2(a / c) for a, c in zip(p, m)) + 0.5 * sum(b * math.log2(b / c) for b, c in zip(q, m))
    return psi, kl, js


def walk_plain(obj, path="report"):
    """Assert ``obj`` holds only dict/list/str/int/float/bool/None, with finite floats."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert type(k) is str, f"{path}: key {k!r} is {type(k).__name__}"
            walk_plain(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            walk_plain(v, f"{path}[{i}]")
    else:
        assert obj is None or type(obj) in (str, int, float, bool), f"{path}: {type(obj).__name__} {obj!r}"
        if type(obj) is float:
            assert math.isfinite(obj), f"{path}: {obj}"


# --------------------------------------------------------------------------- numeric drift


def test_identical_data_has_zero_drift_and_ok_status():
    x = np.random.default_rng(0).standard_normal(5000)
    result = compare(numeric(x), {"x": x.copy()}, T)
    f = result["features"]["x"]
    assert f["psi"] == pytest.approx(0.0, abs=1e-12)
    assert f["kl"] == pytest.approx(0.0, abs=1e-12)
    assert f["js"] == pytest.approx(0.0, abs=1e-12)
    assert f["status"] == "ok" and result["status"] == "ok"
    assert result["summary"]["max_psi"] == pytest.approx(0.0, abs=1e-12)
    assert result["summary"]["n_warn"] == result["summary"]["n_alert"] == 0


def test_one_std_mean_shift_alerts():
    rng = np.random.default_rng(1)
    stats = numeric(rng.standard_normal(20_000))
    result = compare(stats, {"x": rng.standard_normal(20_000) + 1.0}, T)
    f = result["features"]["x"]
    assert f["psi"] > 0.25 and f["status"] == "alert"
    assert result["status"] == "alert"
    assert result["summary"]["alert_features"] == ["x"]
    assert f["mean"]["current"] == pytest.approx(f["mean"]["reference"] + 1.0, abs=0.05)


def test_small_shift_lands_in_warn_range():
    rng = np.random.default_rng(2)
    stats = numeric(rng.standard_normal(20_000))
    result = compare(stats, {"x": rng.standard_normal(20_000) + 0.4}, T)
    f = result["features"]["x"]
    assert T.psi_warn <= f["psi"] < T.psi_alert
    assert f["status"] == "warn"
    assert result["summary"]["warn_features"] == ["x"] and result["summary"]["n_warn"] == 1


def test_hand_computed_psi_kl_js_on_tiny_example():
    stats = reference_stats({"x": np.array([1.0, 2.0, 3.0, 4.0])}, {"x": "numeric"}, bins=2)
    ref = stats["features"]["x"]
    assert ref["edges"] == [2.5]  # median of 1..4; bins (-inf, 2.5], (2.5, inf)
    assert ref["counts"] == [2, 2]
    assert (ref["mean"], ref["min"], ref["max"]) == (2.5, 1.0, 4.0)
    assert ref["std"] == pytest.approx(math.sqrt(1.25))

    t = DriftThresholds(bins=2, epsilon=0.5)
    # 2.5 sits on the cut: bins are right-closed, so it counts in the first bin -> [3, 1]
    f = compare(stats, {"x": np.array([1.0, 2.5, 0.0, 4.0])}, t)["features"]["x"]
    # p = (3.5/5, 1.5/5) = (0.7, 0.3), q = (0.5, 0.5)
    assert f["psi"] == pytest.approx(0.2 * math.log(0.7 / 0.3))
    assert f["kl"] == pytest.approx(0.7 * math.log(1.4) + 0.3 * math.log(0.6))
    js = 0.5 * (0.7 * math.log2(0.7 / 0.6) + 0.3 * math.log2(0.3 / 0.4)) + 0.5 * (
        0.5 * math.log2(0.5 / 0.6) + 0.5 * math.log2(0.5 / 0.4)
    )
    assert f["js"] == pytest.approx(js)
    assert (f["psi"], f["kl"], f["js"]) == pytest.approx(hand_divergences([3, 1], [2, 2], 0.5))
    assert f["out_of_range"] == pytest.approx(0.25)  # 0.0 < reference min 1.0


def test_default_epsilon_smooths_counts_not_fractions():
    stats = reference_stats({"x": np.array([1.0, 2.0, 3.0, 4.0])}, {"x": "numeric"}, bins=2)
    f = compare(stats, {"x": np.array([1.0, 1.0, 1.0, 1.0])}, T)["features"]["x"]
    assert f["psi"] == pytest.approx(hand_divergences([4, 0], [2, 2], 1e-4)[0])
    # 4 rows against 4 expect 2 per bin: too few for the noise test, so the large PSI is no alert
    assert (f["testable"], f["p_value"], f["status"]) == (False, None, "ok")


def test_out_of_range_values_land_in_the_outer_bins():
    stats = numeric(np.arange(100.0))
    f = compare(stats, {"x": np.array([-1e9, 1e9, -np.inf, np.inf])}, T)["features"]["x"]
    ref_counts = stats["features"]["x"]["counts"]
    assert len(ref_counts) == 10
    assert f["psi"] == pytest.approx(hand_divergences([2, 0, 0, 0, 0, 0, 0, 0, 0, 2], ref_counts, 1e-4)[0])
    assert f["out_of_range"] == 1.0
    assert f["mean"]["current"] == 0.0  # +-inf are binned but left out of the mean


def test_constant_column_has_one_bin():
    stats = numeric(np.full(50, 3.0))
    ref = stats["features"]["x"]
    assert ref["edges"] == [] and ref["counts"] == [50]
    assert (ref["std"], ref["min"], ref["max"]) == (0.0, 3.0, 3.0)
    same = compare(stats, {"x": np.full(20, 3.0)}, T)["features"]["x"]
    assert (same["psi"], same["status"], same["out_of_range"]) == (0.0, "ok", 0.0)
    # One bin cannot move; the change shows in out_of_range and the mean.
    moved = compare(stats, {"x": np.full(20, 7.0)}, T)["features"]["x"]
    assert moved["psi"] == 0.0 and moved["out_of_range"] == 1.0 and moved["mean"]["current"] == 7.0


@pytest.mark.parametrize(
    ("values", "edges", "counts"),
    [
        (np.r_[np.zeros(30), np.ones(70)], [0.0], [30, 70]),  # interpolated cut merged away
        (np.r_[np.zeros(5), np.ones(95)], [np.nextafter(1.0, 0.0)], [5, 95]),  # mass at the max
        (np.repeat([0.0, 1.0, 2.0], [40, 20, 40]), [0.0, 1.0], [40, 20, 40]),
    ],
)
def test_discrete_columns_get_one_bin_per_value_and_no_empty_bins(values, edges, counts):
    ref = numeric(values)["features"]["x"]
    assert ref["edges"] == edges
    assert ref["counts"] == counts
    flipped = compare(numeric(values), {"x": 2.0 - values if values.max() == 2 else 1.0 - values}, T)
    assert flipped["features"]["x"]["psi"] == pytest.approx(
        hand_divergences(counts[::-1], counts, 1e-4)[0]
    )


def test_nan_is_missing_and_left_out_of_the_distribution():
    ref_x = np.r_[np.arange(100.0), np.full(25, np.nan)]
    stats = numeric(ref_x)
    ref = stats["features"]["x"]
    assert (ref["count"], ref["missing"]) == (100, 25)
    assert ref["mean"] == pytest.approx(49.5)
    cur = np.r_[np.arange(100.0), np.full(100, np.nan)]
    f = compare(stats, {"x": cur}, T)["features"]["x"]
    assert f["psi"] == 0.0 and f["status"] == "ok"  # same non-missing values
    assert f["missing_rate"] == {"reference": 0.2, "current": 0.5}
    assert f["count"] == 100
    # None in an object column is missing too
    obj = np.array([1.0, None, 2.0, None], dtype=object)
    g = compare(stats, {"x": obj}, T)["features"]["x"]
    assert g["missing_rate"]["current"] == 0.5 and g["count"] == 2


def test_huge_values_give_none_moments_instead_of_overflow_warnings():
    ref = numeric(np.array([1e308, 1e308, -1e308, 1.0]))["features"]["x"]
    assert ref["std"] is None and ref["max"] == 1e308
    f = compare({"bins": 10, "features": {"x": ref}}, {"x": np.array([1e308, 1e308])}, T)["features"]["x"]
    assert f["mean"]["current"] is None and f["psi"] is not None


def test_all_missing_current_column_alerts_without_metrics():
    stats = numeric(np.arange(10.0))
    f = compare(stats, {"x": np.full(5, np.nan)}, T)["features"]["x"]
    assert (f["psi"], f["kl"], f["js"], f["status"]) == (None, None, None, "alert")
    assert f["missing_rate"]["current"] == 1.0


def test_many_bins_use_the_same_right_closed_binning():
    x = np.random.default_rng(3).standard_normal(10_000)
    stats = reference_stats({"x": x}, {"x": "numeric"}, bins=50)
    ref = stats["features"]["x"]
    assert len(ref["counts"]) == 50 and all(c == 200 for c in ref["counts"])
    cur = x[:5000]
    f = compare(stats, {"x": cur}, T)["features"]["x"]
    expected = np.bincount(np.searchsorted(ref["edges"], cur, side="left"), minlength=50)
    assert f["psi"] == pytest.approx(hand_divergences(expected.tolist(), ref["counts"], 1e-4)[0])


# --------------------------------------------------------------------------- categorical drift


def test_categorical_with_unseen_category_matches_hand_computation():
    stats = reference_stats({"c": np.array(["a", "a", "a", "b"])}, {"c": "categorical"})
    ref = stats["features"]["c"]
    assert ref == {"kind": "categorical", "count": 4, "missing": 0, "counts": {"a": 3, "b": 1}}
    t = DriftThresholds(epsilon=0.5)
    cur = np.array(["a", "c", "c", None], dtype=object)
    f = compare(stats, {"c": cur}, t)["features"]["c"]
    # categories [a, b, c]: current [1, 0, 2], reference [3, 1, 0]
    psi, kl, js = hand_divergences([1, 0, 2], [3, 1, 0], 0.5)
    assert (f["psi"], f["kl"], f["js"]) == pytest.approx((psi, kl, js))
    assert f["categories"] == 3
    assert f["unseen"] == {"rate": pytest.approx(2 / 3), "values": ["c"]}
    assert f["missing_rate"] == {"reference": 0.0, "current": 0.25}
    assert f["js"] >= T.js_alert and 0.0 <= f["js"] <= 1.0  # status by JS for categoricals, but...
    assert (f["testable"], f["status"]) == (False, "ok")  # ...3 values against 4 cannot be tested


def test_categorical_values_are_compared_as_strings():
    stats = reference_stats({"c": np.array([1, 2, 2, 3])}, {"c": "categorical"})
    assert stats["features"]["c"]["counts"] == {"2": 2, "1": 1, "3": 1}
    f = compare(stats, {"c": np.array(["1", "2", "2", "3"], dtype=object)}, T)["features"]["c"]
    assert f["psi"] == 0.0 and f["unseen"]["rate"] == 0.0 and f["status"] == "ok"


# --------------------------------------------------------------------------- labels


def test_label_shift_on_a_known_distribution():
    ref = np.repeat([0, 1, 2], [50, 30, 20])
    cur = np.repeat([0, 1, 2], [20, 30, 50])
    out = label_shift(ref, cur, [0, 1, 2], T)
    assert out["classes"] == [0, 1, 2]
    assert out["reference"] == [0.5, 0.3, 0.2]
    assert out["current"] == [0.2, 0.3, 0.5]
    assert out["unknown"] == {"reference": 0.0, "current": 0.0}
    psi, kl, js = hand_divergences([20, 30, 50], [50, 30, 20], 1e-4)
    assert (out["psi"], out["kl"], out["js"]) == pytest.approx((psi, kl, js))
    assert T.js_warn <= out["js"] < T.js_alert and out["status"] == "warn"
    assert label_shift(ref, np.full(100, 2), [0, 1, 2], T)["status"] == "alert"
    same = label_shift(ref, ref[::-1], [0, 1, 2], T)
    assert same["js"] == pytest.approx(0.0, abs=1e-12) and same["status"] == "ok"


def test_label_shift_counts_labels_outside_classes_as_unknown():
    ref = np.array(["cat", "dog", "dog", "cat"])
    cur = np.array(["cat", "dog", "bird", None], dtype=object)
    out = label_shift(ref, cur, ["cat", "dog"], T)
    assert out["counts"] == {"reference": [2, 2, 0], "current": [1, 1, 2]}
    assert out["current"] == [0.25, 0.25] and out["unknown"]["current"] == 0.5
    assert out["js"] == pytest.approx(hand_divergences([1, 1, 2], [2, 2, 0], 1e-4)[2])


def test_label_shift_rejects_bad_classes():
    with pytest.raises(DriftError, match="must be unique"):
        label_shift(np.array([0]), np.array([0]), [0, 0], T)
    with pytest.raises(DriftError, match="classes is empty"):
        label_shift(np.array([0]), np.array([0]), [], T)


# --------------------------------------------------------------------------- shared rows


def test_shared_rows_finds_exactly_the_planted_duplicates_in_2d_arrays():
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((2000, 6))
    other = rng.standard_normal((500, 6))
    planted = [3, 77, 250, 499]
    other[planted] = ref[[10, 11, 10, 1999]]
    near = ref[5].copy()
    near[2] = np.nextafter(near[2], np.inf)  # one ulp away: not a duplicate
    other[100] = near
    out = shared_rows(ref, other)
    assert out == {"count": 4, "fraction": 4 / 500, "rows": 500, "examples": planted}


def test_shared_rows_treats_negative_zero_and_nan_as_equal_values():
    ref = np.array([[0.0, 1.0], [np.nan, 2.0], [5.0, 5.0]], dtype=np.float32)
    other = np.array([[-0.0, 1.0], [np.nan, 2.0], [np.nan, 3.0], [5.0, 5.0]])  # float64: cast to common dtype
    out = shared_rows(ref, other)
    assert out["count"] == 3 and out["examples"] == [0, 1, 3]


def test_shared_rows_on_integer_images():
    rng = np.random.default_rng(5)
    ref = rng.integers(0, 256, size=(300, 1, 3, 3), dtype=np.uint8)  # 9 bytes per row: padded
    other = rng.integers(0, 256, size=(40, 1, 3, 3), dtype=np.uint8)
    other[[0, 39]] = ref[[7, 8]]
    assert shared_rows(ref, other)["examples"] == [0, 39]
    with pytest.raises(DriftError, match="row shapes differ"):
        shared_rows(ref, other[:, :, :2])


def test_shared_rows_on_column_mappings_with_strings():
    n = 1000
    rng = np.random.default_rng(6)
    ref = {
        "age": rng.integers(18, 90, n),
        "city": np.array(["paris", "oslo", "rome", "lima"])[rng.integers(0, 4, n)],
        "score": rng.standard_normal(n),
        "note": np.array([None if i % 7 == 0 else f"n{i}" for i in range(n)], dtype=object),
    }
    m = 200
    other = {
        "age": rng.integers(18, 90, m).astype(np.float64),  # common dtype with int reference
        "city": np.array(["paris", "oslo", "rome", "lima", "kyoto-prefecture"])[rng.integers(0, 5, m)],
        "score": rng.standard_normal(m),
        "note": np.array([f"x{i}" for i in range(m)], dtype=object),
    }
    planted = {5: 0, 60: 14, 61: 3, 199: 999}  # other row -> reference row
    for o, r in planted.items():
        for col in ref:
            other[col][o] = ref[col][r]
    out = shared_rows(ref, {k: other[k] for k in reversed(list(other))})  # column order does not matter
    assert out["count"] == 4 and out["examples"] == sorted(planted)
    other["note"][60] = "n14-changed"
    assert shared_rows(ref, other)["examples"] == [5, 61, 199]
    with pytest.raises(DriftError, match=r"only in reference \['note'\]"):
        shared_rows(ref, {k: v for k, v in other.items() if k != "note"})
    with pytest.raises(DriftError, match="different lengths"):
        shared_rows(ref, {**other, "age": other["age"][:10]})


def test_shared_rows_survives_hash_collisions(monkeypatch):
    # Every row hashes to 0: only the exact byte comparison can tell rows apart.
    monkeypatch.setattr(drift, "_multipliers", lambda n: np.zeros(n, dtype=np.uint64))
    ref = np.arange(40.0).reshape(20, 2)
    other = np.array([[100.0, 101.0], [38.0, 39.0], [0.0, 1.0], [3.0, 2.0]])
    assert shared_rows(ref, other) == {"count": 2, "fraction": 0.5, "rows": 4, "examples": [1, 2]}


def test_shared_rows_with_empty_other():
    out = shared_rows(np.ones((3, 2)), np.ones((0, 2)))
    assert out == {"count": 0, "fraction": 0.0, "rows": 0, "examples": []}


# --------------------------------------------------------------------------- thresholds


def test_thresholds_round_trip_and_defaults():
    t = DriftThresholds.from_dict({"psi_alert": 0.3, "bins": np.int64(20)})
    assert t.to_dict() == {"psi_warn": 0.1, "psi_alert": 0.3, "js_warn": 0.05, "js_alert": 0.1, "bins": 20,
                           "epsilon": 1e-4, "alpha": 0.01}
    assert type(t.bins) is int
    assert DriftThresholds.from_dict(t.to_dict()) == t


def test_thresholds_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown keys 'psi_warning', 'nbins' \(allowed: psi_warn"):
        DriftThresholds.from_dict({"psi_warning": 0.1, "nbins": 3})


def test_thresholds_report_every_range_error_at_once():
    bad = {"psi_warn": 0.5, "psi_alert": 0.25, "js_alert": 2.0, "bins": 1, "epsilon": 0.0}
    with pytest.raises(DriftError) as info:
        DriftThresholds.from_dict(bad)
    msg = str(info.value)
    assert "psi_warn=0.5 > psi_alert=0.25: expected psi_warn <= psi_alert" in msg
    assert "js_alert=2.0: Jensen-Shannon (base 2) is at most 1" in msg
    assert "bins=1: expected an integer >= 2" in msg
    assert "epsilon=0.0: expected a finite number > 0" in msg
    assert isinstance(info.value, KeelError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"psi_warn": -0.1}, r"psi_warn=-0.1: expected a finite number > 0"),
        ({"js_warn": float("nan")}, r"js_warn=nan: expected a finite number > 0"),
        ({"bins": 2.5}, r"bins=2.5: expected an integer >= 2"),
        ({"bins": True}, r"bins=True: expected an integer >= 2"),
        ({"epsilon": "small"}, r"epsilon='small': expected a finite number > 0"),
    ],
)
def test_thresholds_constructor_validates(kwargs, match):
    with pytest.raises(DriftError, match=match):
        DriftThresholds(**kwargs)


def test_thresholds_from_dict_needs_a_mapping():
    with pytest.raises(DriftError, match="must be a mapping, got list"):
        DriftThresholds.from_dict([0.1])


# --------------------------------------------------------------------------- errors


def test_compare_names_missing_features():
    stats = reference_stats({"a": np.arange(5.0), "b": np.arange(5.0), "c": np.arange(5)}, {"a": "numeric", "b": "numeric", "c": "categorical"})
    with pytest.raises(DriftError, match=r"not in the data: \['b', 'c'\]"):
        compare(stats, {"a": np.arange(5.0), "extra": np.arange(3)}, T)


def test_reference_stats_reports_kind_and_column_errors():
    with pytest.raises(DriftError) as info:
        reference_stats({"a": np.arange(3.0), "z": np.arange(3.0)}, {"a": "ordinal", "b": "numeric"})
    msg = str(info.value)
    assert "feature 'a': kind 'ordinal' is not one of ['numeric', 'categorical']" in msg
    assert "features without a column: ['b']" in msg
    assert "columns without a kind: ['z']" in msg
    with pytest.raises(DriftError, match="'s' is declared numeric but has dtype <U1"):
        reference_stats({"s": np.array(["a", "b"])}, {"s": "numeric"})
    with pytest.raises(DriftError, match=r"expected a 1-D column, got an array of shape \(2, 2\)"):
        reference_stats({"m": np.ones((2, 2))}, {"m": "numeric"})
    with pytest.raises(DriftError, match="bins=1"):
        reference_stats({"a": np.arange(3.0)}, {"a": "numeric"}, bins=1)


# --------------------------------------------------------------------------- report


def make_report():
    rng = np.random.default_rng(7)
    n = 2000
    ref_cols = {
        "x": rng.standard_normal(n).astype(np.float32),
        "k": rng.integers(0, 5, n),
        "color": np.array(["red", "green", "blue"])[rng.integers(0, 3, n)],
        "const": np.ones(n),
    }
    kinds = {"x": "numeric", "k": "numeric", "color": "categorical", "const": "numeric"}
    val = {k: v[:500].copy() for k, v in ref_cols.items()}
    test = {k: v[500:1000].copy() for k, v in ref_cols.items()}
    test["x"] = test["x"] + 1.0
    test["color"] = np.where(np.arange(500) % 4 == 0, "purple", test["color"])
    labels = rng.integers(0, 3, n)
    ref_rows = np.stack([ref_cols["x"], ref_cols["k"].astype(np.float32)], axis=1)
    test_rows = np.stack([test["x"], test["k"].astype(np.float32)], axis=1)
    val_rows = ref_rows[:500].copy()
    val_rows[:, 0] += 100.0  # no overlap
    val_rows[[4, 9]] = ref_rows[[4, 9]]
    return drift_report(
        ref_cols,
        kinds,
        {"val": val, "test": test},
        labels,
        {"val": labels[:500], "test": np.full(500, 2)},
        [0, 1, 2],
        T,
        reference_rows=ref_rows,
        split_rows={"val": val_rows, "test": test_rows},
    )


def test_drift_report_structure_and_statuses():
    report = make_report()
    assert report["thresholds"] == T.to_dict()
    assert set(report["reference"]["features"]) == {"x", "k", "color", "const"}
    val, test = report["splits"]["val"], report["splits"]["test"]
    assert set(val) == {"features", "summary", "labels", "leakage", "status"}
    assert val["summary"]["n_alert"] == 0
    assert val["leakage"] == {"count": 2, "fraction": 2 / 500, "rows": 500, "examples": [4, 9]}
    assert val["status"] == "warn"  # features fine, shared rows -> warn
    assert test["leakage"]["count"] == 0
    assert set(test["summary"]["alert_features"]) == {"x", "color"}
    assert test["labels"]["current"] == [0.0, 0.0, 1.0] and test["labels"]["status"] == "alert"
    assert report["status"] == "alert"


def test_report_is_plain_json_data():
    report = make_report()
    walk_plain(report)
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report


def test_format_report_lists_statuses_top_features_and_leakage():
    report = make_report()
    text = format_report(report, max_features=2)
    assert text.splitlines()[0] == (
        "drift report: ALERT (psi warn/alert 0.1/0.25, js warn/alert 0.05/0.1; only beyond sampling noise: p < 0.01)"
    )
    assert "[val] WARN: 0 alert, 0 warn of 4 features" in text
    assert "leakage: 2 of 500 rows (0.40%) also in the reference, e.g. rows 4, 9" in text
    assert "top 2 of 4 features:" in text
    test_block = text.split("[test]")[1]
    x, color = report["splits"]["test"]["features"]["x"], report["splits"]["test"]["features"]["color"]
    assert f"psi {x['psi']:.4f}" in test_block and f"js {color['js']:.4f}" in test_block
    assert "unseen 25.0%" in test_block
    assert "const" not in test_block  # only the top 2
    assert all(line == line.rstrip() for line in text.splitlines())


def test_drift_report_argument_errors():
    cols, kinds = {"a": np.arange(4.0)}, {"a": "numeric"}
    with pytest.raises(DriftError, match=r"splits without labels: \['val'\]"):
        drift_report(cols, kinds, {"val": cols}, np.zeros(4), {}, [0], T)
    with pytest.raises(DriftError, match="split_rows given without reference_rows"):
        drift_report(cols, kinds, {"val": cols}, None, {}, [0], T, split_rows={"val": np.ones((4, 1))})
    out = drift_report(cols, kinds, {"val": cols}, None, {}, [0], T)
    assert out["splits"]["val"]["labels"] is None and out["splits"]["val"]["leakage"] is None
    assert out["status"] == "ok"


def test_report_loads_from_a_checkpoint_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    report = make_report()
    torch.save({"keel": {"drift": report}}, tmp_path / "r.ckpt")
    assert torch.load(tmp_path / "r.ckpt", weights_only=True)["keel"]["drift"] == report
