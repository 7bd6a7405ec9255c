"""keel.data.drift's noise test: random splits of one table and small same-distribution samples
do not alert, real shifts do, too few rows says so; p-values are uniform under the null; the
statistic, the merging of bins, the BH adjustment and the noise bound agree with scipy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

from keel.cli import main
from keel.config import ConfigError, validate_config
from keel.data.drift import (
    DriftError,
    DriftThresholds,
    compare,
    drift_report,
    format_report,
    label_shift,
    reference_stats,
    target_drift,
)
from keel.data.in_memory import InMemoryDataModule

T = DriftThresholds()
TABLES = {"wine": load_wine, "digits": load_digits, "breast_cancer": load_breast_cancer}


def _columns(x: np.ndarray) -> dict[str, np.ndarray]:
    return {f"f{j}": x[:, j] for j in range(x.shape[1])}


def _kinds(x: np.ndarray) -> dict[str, str]:
    return {f"f{j}": "numeric" for j in range(x.shape[1])}


def _counts(ref: dict, x: np.ndarray) -> np.ndarray:
    """Current counts in the reference's right-closed bins, straight from the edges."""
    return np.bincount(np.searchsorted(ref["edges"], x, side="left"), minlength=len(ref["counts"]))


# --------------------------------------------------------------------------- no alarm from noise


@pytest.mark.parametrize("table", list(TABLES))
def test_random_splits_of_one_table_do_not_alert(table):
    x = TABLES[table]().data
    n = len(x)
    n_train, n_val = int(0.7 * n), int(0.15 * n)
    over_threshold = alarmed = significant = comparisons = 0
    for seed in range(20):
        order = np.random.default_rng(seed).permutation(n)
        train, val, test = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
        stats = reference_stats(_columns(x[train]), _kinds(x))
        for part in (val, test):
            result = compare(stats, _columns(x[part]), T)
            comparisons += 1
            alarmed += result["status"] != "ok"
            significant += result["summary"]["n_significant"]
            over_threshold += sum(f["psi"] >= T.psi_alert for f in result["features"].values())
    # BH at alpha = 0.01: with nothing drifting, a comparison flags any feature with probability
    # <= 0.01, so of 40 comparisons 3 or more would flag with probability < 0.8%.
    assert alarmed <= 2 and significant <= 2, (alarmed, significant)
    if table == "wine":  # 124 vs 26 rows: the fixed threshold alone alerts on most features
        assert over_threshold > 300


@pytest.mark.parametrize("rows", [18, 50])
def test_small_same_distribution_samples_do_not_alert(rows):
    x = load_wine().data
    alarmed = 0
    for seed in range(30):
        order = np.random.default_rng(seed).permutation(len(x))
        stats = reference_stats(_columns(x[order[rows:]]), _kinds(x))
        result = compare(stats, _columns(x[order[:rows]]), T)
        alarmed += result["status"] != "ok"
        assert result["summary"]["n_untestable"] == 0  # tested, on merged bins below 50 rows
        if rows < 50:
            assert result["summary"]["n_merged"] == x.shape[1] and result["summary"]["max_psi"] > T.psi_alert
    assert alarmed <= 1


def test_keel_drift_on_18_same_distribution_rows_says_so_and_exits_0(tmp_path, capsys):
    wine = load_wine(as_frame=True).frame
    ref, cur = tmp_path / "wine.csv", tmp_path / "batch.csv"
    wine.iloc[18:].to_csv(ref, index=False)
    wine.sample(frac=1.0, random_state=0).iloc[:18].to_csv(cur, index=False)
    json_path = tmp_path / "r.json"
    assert main(["drift", str(ref), str(cur), "--target", "target", "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    assert "18 rows: too few for the drift test at 10 bins (needs >= 50); tested on merged bins" in out
    assert out.splitlines()[1].startswith("[current] OK: 0 alert, 0 warn of 13 features")
    # ...but a gross shift of 18 rows still alerts on the merged bins
    moved = wine.sample(frac=1.0, random_state=0).iloc[:18].copy()
    moved["proline"] += 3 * wine["proline"].std()
    moved.to_csv(cur, index=False)
    assert main(["drift", str(ref), str(cur), "--target", "target"]) == 1
    out = capsys.readouterr().out
    assert "[current] ALERT: 1 alert" in out and "proline" in out.split("top")[1].splitlines()[1]


def test_too_few_rows_for_any_test_are_reported_and_never_alert(tmp_path, capsys):
    rng = np.random.default_rng(0)
    stats = reference_stats({"x": rng.normal(size=500), "c": rng.choice(list("ab"), 500)},
                            {"x": "numeric", "c": "categorical"})
    few = {"x": rng.normal(size=8) + 5.0, "c": np.array(["b"] * 8)}  # far off, but 8 values
    result = compare(stats, few, T)
    for f in result["features"].values():
        assert f["testable"] is False and f["p_value"] is None and f["noise_bound"] is None
        assert f["status"] == "ok" and f["significant"] is False
    assert f["psi"] > 1.0  # the raw statistics are kept
    s = result["summary"]
    assert (s["n_untestable"], s["untestable_features"], s["rows"], s["n_alert"]) == (2, ["x", "c"], 8, 0)
    text = format_report({"thresholds": T.to_dict(), "splits": {"current": result}, "status": result["status"]})
    assert "8 rows: too few for the drift test (needs >= 10: 5 expected values in each of at least 2 bins); " \
           "no alert raised" in text
    assert "2 not testable (x, c): no alert raised for them" in text
    assert "(not testable: too few values)" in text
    ref_csv, cur_csv = tmp_path / "ref.csv", tmp_path / "few.csv"
    pd.DataFrame({"x": rng.normal(size=500)}).to_csv(ref_csv, index=False)
    pd.DataFrame({"x": rng.normal(size=6) + 5.0}).to_csv(cur_csv, index=False)
    assert main(["drift", str(ref_csv), str(cur_csv)]) == 0
    assert "6 rows: too few for the drift test" in capsys.readouterr().out


# --------------------------------------------------------------------------- real shifts alert


def test_half_sd_mean_shift_of_a_few_hundred_rows_is_significant_every_time():
    alerts = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        stats = reference_stats({"x": rng.normal(size=400)}, {"x": "numeric"})
        f = compare(stats, {"x": rng.normal(0.5, 1.0, 300)}, T)["features"]["x"]
        assert f["significant"] and f["bins_tested"] == 10
        # the test never vetoes this shift: the status is what the thresholds alone give
        assert f["status"] == ("alert" if f["psi"] >= T.psi_alert else "warn" if f["psi"] >= T.psi_warn else "ok")
        alerts += f["status"] == "alert"
    assert alerts >= 10  # PSI of a 0.5 sd shift over 10 bins is ~0.22 + noise: near the 0.25 line


def test_shifted_features_are_found_among_many_and_the_others_are_not():
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(size=(400, 20)), rng.normal(size=(300, 20))
    cur[:, :3] += 0.8
    result = compare(reference_stats(_columns(ref), _kinds(ref)), _columns(cur), T)
    assert result["summary"]["alert_features"] == ["f0", "f1", "f2"]
    assert result["summary"]["n_significant"] == 3 and result["status"] == "alert"


def test_tiny_significant_shift_of_a_huge_sample_is_no_alert():
    rng = np.random.default_rng(4)
    stats = reference_stats({"x": rng.normal(size=20_000)}, {"x": "numeric"})
    f = compare(stats, {"x": rng.normal(0.1, 1.0, 20_000)}, T)["features"]["x"]
    assert f["significant"] and f["p_value"] < 1e-6  # real, but...
    assert f["psi"] < T.psi_warn and f["status"] == "ok"  # ...too small to matter


def test_label_shift_and_target_drift_use_the_same_test():
    ref = np.repeat([0, 1, 2], [500, 300, 200])
    same = label_shift(ref, np.repeat([0, 1, 2], [9, 6, 3]), [0, 1, 2], T)
    assert same["testable"] and same["status"] == "ok" and same["p_adjusted"] == same["p_value"]
    moved = label_shift(ref, np.repeat([0, 1, 2], [20, 30, 50]), [0, 1, 2], T)
    assert moved["significant"] and moved["status"] == "warn" and moved["p_value"] < 1e-10
    rng = np.random.default_rng(5)
    stats = reference_stats({"y": rng.lognormal(3, 1, 400)}, {"y": "numeric"})["features"]["y"]
    calm = target_drift(stats, rng.lognormal(3, 1, 90), T)
    assert calm["testable"] and calm["status"] == "ok" and calm["p_value"] > 0.01
    assert target_drift(stats, rng.lognormal(3.8, 1, 90), T)["status"] == "alert"


# --------------------------------------------------------------------------- the null distribution


@pytest.mark.parametrize(("n", "m"), [(500, 100), (1000, 18)])
def test_p_values_are_uniform_under_the_null(n, m):
    rng = np.random.default_rng(6)
    p = {"numeric": [], "categorical": [], "labels": []}
    levels = list("abcdef")
    probs = [0.35, 0.25, 0.15, 0.12, 0.08, 0.05]
    for _ in range(1000):
        stats = reference_stats({"x": rng.normal(size=n), "c": rng.choice(levels, n, p=probs)},
                                {"x": "numeric", "c": "categorical"})
        r = compare(stats, {"x": rng.normal(size=m), "c": rng.choice(levels, m, p=probs)}, T)["features"]
        p["numeric"].append(r["x"]["p_value"])
        p["categorical"].append(r["c"]["p_value"])
        p["labels"].append(label_shift(rng.integers(0, 4, n), rng.integers(0, 4, m), [0, 1, 2, 3], T)["p_value"])
    for kind, values in p.items():
        values = np.array(values)
        # binomial sd of a rate over 1000 draws: 0.007 at 0.05, 0.003 at 0.01
        assert 0.03 <= np.mean(values < 0.05) <= 0.07, (kind, np.mean(values < 0.05))
        assert np.mean(values < 0.01) <= 0.02, (kind, np.mean(values < 0.01))
        assert 0.4 <= np.median(values) <= 0.6, (kind, np.median(values))


def test_noise_bound_is_what_noise_alone_exceeds_with_probability_alpha():
    t = DriftThresholds(alpha=0.05)
    rng = np.random.default_rng(7)
    over = {"psi": 0, "js": 0}
    for _ in range(600):
        stats = reference_stats({"x": rng.normal(size=2000), "c": rng.integers(0, 5, 2000)},
                                {"x": "numeric", "c": "categorical"})
        r = compare(stats, {"x": rng.normal(size=2000), "c": rng.integers(0, 5, 2000)}, t)["features"]
        over["psi"] += r["x"]["psi"] >= r["x"]["noise_bound"]
        over["js"] += r["c"]["js"] >= r["c"]["noise_bound"]
    for stat, k in over.items():
        assert 0.025 <= k / 600 <= 0.08, (stat, k / 600)  # asymptotic: near 0.05 at these sizes


# --------------------------------------------------------------------------- against scipy


def test_unmerged_test_is_scipys_chi_square_homogeneity_and_the_bound_its_quantile():
    rng = np.random.default_rng(8)
    ref_x, cur_x = rng.normal(size=3000), rng.normal(0.05, 1.0, 700)
    stats = reference_stats({"x": ref_x}, {"x": "numeric"})
    ref = stats["features"]["x"]
    f = compare(stats, {"x": cur_x}, T)["features"]["x"]
    table = np.stack([_counts(ref, cur_x), ref["counts"]])
    expected = sps.chi2_contingency(table, correction=False)
    assert f["bins_tested"] == 10 and f["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert f["noise_bound"] == pytest.approx(sps.chi2.isf(0.01, 9) * (1 / 3000 + 1 / 700), rel=1e-9)
    ref_c, cur_c = rng.integers(0, 5, 3000), rng.integers(0, 5, 700)
    js = compare(reference_stats({"c": ref_c}, {"c": "categorical"}), {"c": cur_c}, T)["features"]["c"]
    table = np.stack([np.bincount(cur_c), np.bincount(ref_c)])
    assert js["bins_tested"] == 5
    assert js["p_value"] == pytest.approx(sps.chi2_contingency(table, correction=False).pvalue, rel=1e-9)
    assert js["noise_bound"] == pytest.approx(sps.chi2.isf(0.01, 4) * (1 / 3000 + 1 / 700) / (8 * math.log(2)))


def test_rare_categories_and_sparse_bins_are_merged_before_testing():
    ref = np.repeat(list("abcde"), [500, 300, 150, 30, 20])
    cur = np.repeat(list("abcdez"), [30, 20, 5, 2, 1, 2])  # 60 values, one unseen
    f = compare(reference_stats({"c": ref}, {"c": "categorical"}), {"c": cur}, T)["features"]["c"]
    # need = 5 * 1060 / 60 = 88.3 pooled values per bin: a, b stay; c, d, e, z (160 + 3) pool
    table = np.array([[30, 20, 5 + 2 + 1 + 2], [500, 300, 150 + 30 + 20]])
    assert f["bins_tested"] == 3 and f["noise_bound"] is None
    assert f["p_value"] == pytest.approx(sps.chi2_contingency(table, correction=False).pvalue, rel=1e-9)
    # numeric: adjacent bins merge left to right, a short last group joining the one before
    x = np.arange(1000.0)
    stats = reference_stats({"x": x}, {"x": "numeric"})
    g = compare(stats, {"x": np.arange(0.0, 1000.0, 40.0)}, T)["features"]["x"]  # 25 values, 2-3 per bin
    need = 5 * 1025 / 25  # 205 pooled: two bins (102-103 each) per group, 5 groups
    counts = _counts(stats["features"]["x"], np.arange(0.0, 1000.0, 40.0))
    starts = [0, 2, 4, 6, 8]
    merged = np.stack([np.add.reduceat(counts, starts), np.add.reduceat(stats["features"]["x"]["counts"], starts)])
    assert merged.sum(axis=0).min() >= need and g["bins_tested"] == 5
    assert g["p_value"] == pytest.approx(sps.chi2_contingency(merged, correction=False).pvalue, rel=1e-9)


def test_adjusted_p_values_are_scipys_benjamini_hochberg():
    rng = np.random.default_rng(9)
    ref, cur = rng.normal(size=(600, 12)), rng.normal(size=(200, 12))
    cur[:, :4] += np.linspace(0.1, 0.6, 4)
    features = compare(reference_stats(_columns(ref), _kinds(ref)), _columns(cur), T)["features"]
    raw = [f["p_value"] for f in features.values()]
    adjusted = [f["p_adjusted"] for f in features.values()]
    assert adjusted == pytest.approx(sps.false_discovery_control(raw, method="bh").tolist(), rel=1e-12)
    assert [f["significant"] for f in features.values()] == [p < T.alpha for p in adjusted]


# --------------------------------------------------------------------------- plumbing


def test_one_bin_and_one_sided_features():
    stats = reference_stats({"k": np.full(50, 3.0), "x": np.arange(50.0)}, {"k": "numeric", "x": "numeric"})
    r = compare(stats, {"k": np.full(30, 7.0), "x": np.full(30, np.nan)}, T)["features"]
    # one bin: nothing can differ over it (the move shows in out_of_range and the mean)
    assert (r["k"]["p_value"], r["k"]["noise_bound"], r["k"]["testable"], r["k"]["status"]) == (1.0, 0.0, True, "ok")
    # no values on one side: no test, the column broke: alert as before (not "untestable")
    assert (r["x"]["p_value"], r["x"]["testable"], r["x"]["status"]) == (None, False, "alert")
    s = compare(stats, {"k": np.full(30, 7.0), "x": np.full(30, np.nan)}, T)["summary"]
    assert (s["n_untestable"], s["alert_features"]) == (0, ["x"])


class _Shifted(InMemoryDataModule):
    """600 tensor rows, regression target; the fixed test rows get ``shift`` added to feature 0."""

    def __init__(self, shift: float, **kw):
        super().__init__({"name": "toy", "shape": [3], "dtype": "float32", "task": "regression",
                          "target_range": [0, 1e6]}, **kw)
        self.shift = shift

    def load(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(600, 3)).astype(np.float32)
        x[500:, 0] += self.shift
        return x, rng.lognormal(3, 1, 600)

    def test_rows(self):
        return np.arange(500, 600)


def test_setup_logs_the_noise_level_beside_the_alerts(caplog):
    with caplog.at_level("WARNING"):
        _Shifted(shift=2.0).setup()
    line = next(r.getMessage() for r in caplog.records if "drift train->test" in r.getMessage())
    assert line.startswith("drift train->test: 1 features alert, 0 warn (noise PSI at these sizes ~0.1")
    assert "alert needs PSI >= 0.25 and p < 0.01, BH-adjusted; 0 features not testable" in line
    assert "; target ok (PSI " in line
    caplog.clear()
    with caplog.at_level("WARNING"):
        calm = _Shifted(shift=0.0)
        calm.setup()
    assert "drift train->" not in caplog.text and calm.drift["status"] == "ok"


def test_alpha_is_a_validated_threshold(compose_cfg):
    assert DriftThresholds.from_dict({"psi_alert": 0.3}).alpha == 0.01  # stored thresholds lack it
    for bad in (0, 1, 1.5, float("nan"), "small", True):
        with pytest.raises(DriftError, match=r"alpha=.*: expected a significance level in \(0, 1\)"):
            DriftThresholds(alpha=bad)
    assert DriftThresholds(alpha=0.05).to_dict()["alpha"] == 0.05
    with pytest.raises(ConfigError, match=r"data.drift.alpha=1.5: expected a significance level in \(0, 1\)"):
        validate_config(compose_cfg("data.drift.alpha=1.5"))


def test_report_keys_are_plain_and_old_reports_still_format():
    rng = np.random.default_rng(10)
    cols = {"x": rng.normal(size=300), "c": rng.choice(list("abc"), 300)}
    kinds = {"x": "numeric", "c": "categorical"}
    report = drift_report(cols, kinds, {"val": {k: v[:90] for k, v in cols.items()}}, rng.integers(0, 2, 300),
                          {"val": rng.integers(0, 2, 90)}, [0, 1], T)
    split = report["splits"]["val"]
    new = ("p_value", "p_adjusted", "significant", "noise_bound", "testable", "bins_tested")
    for f in [*split["features"].values(), split["labels"]]:
        assert set(new) <= set(f)
        assert type(f["significant"]) is bool and type(f["testable"]) is bool and type(f["p_value"]) is float
    assert {"n_significant", "n_untestable", "untestable_features", "n_merged", "rows", "rows_needed"} <= set(split["summary"])
    assert report["thresholds"]["alpha"] == 0.01
    # a report written before the noise test (no new keys, thresholds without alpha) still formats
    old = {"thresholds": {k: v for k, v in report["thresholds"].items() if k != "alpha"},
           "splits": {"val": {**split,
                              "features": {n: {k: v for k, v in f.items() if k not in new}
                                           for n, f in split["features"].items()},
                              "summary": {k: v for k, v in split["summary"].items()
                                          if k in ("n_features", "max_psi", "mean_psi", "max_js", "n_warn",
                                                   "n_alert", "warn_features", "alert_features")},
                              "labels": {k: v for k, v in split["labels"].items() if k not in new}}},
           "status": report["status"]}
    text = format_report(old)
    assert "[val] OK" in text and "noise test" not in text and "p_adj n/a" in text
