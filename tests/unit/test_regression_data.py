"""Regression data: contracts with a numeric target (tensor and table), their target rules, the
vectorized clean path, inference of the task, quantile-stratified splits, target statistics,
target drift, the embedded diabetes table and the data configs' ``task``."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import yaml
from hydra.utils import instantiate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.data import ContractViolationError, DiabetesDataModule, quantile_strata, stratified_split
from keel.data.contract import ContractError, TensorContract, contract_from_dict
from keel.data.drift import (
    DriftError,
    DriftThresholds,
    compare,
    drift_report,
    format_report,
    reference_stats,
    target_drift,
)
from keel.data.in_memory import InMemoryDataModule
from keel.data.table_contract import TableContract, infer_contract
from keel.errors import KeelError
from keel.tasks import TaskError


T = DriftThresholds()
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TENSOR_SPEC = {"name": "grid", "shape": [2], "dtype": "float32", "task": "regression", "target_range": [0.0, 10.0]}
TABLE_SPEC = {
    "kind": "table", "name": "houses", "task": "regression", "target": "price", "target_range": [0, 1000],
    "columns": {"area": {"dtype": "float64", "nullable": False, "min": 0, "max": 500},
                "rooms": {"dtype": "int64", "nullable": True, "min": 0, "max": 20}},
}


def pandera_finds_nothing(contract: TableContract, df: pd.DataFrame) -> bool:
    """The reference answer: pandera's schema finds no failure case (as in test_table_clean_path)."""
    import pandera.pandas as pa

    try:
        contract._schema(True).validate(df.reset_index(drop=True), lazy=True)
    except pa.errors.SchemaErrors:
        return False
    return True


def by_rule(report):
    return {(v.rule, v.feature): v for v in report.violations}


def houses(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    area = rng.uniform(20, 400, n).round(1)
    rooms = rng.integers(1, 10, n)
    price = (area * 2 + rooms * 10 + rng.normal(0, 20, n)).clip(1, 999).round(2)
    return pd.DataFrame({"area": area, "rooms": rooms, "price": price})


# ------------------------------------------------------------------------------ contracts


def test_tensor_regression_contract_round_trips_and_encodes_floats():
    c = TensorContract.from_dict(TENSOR_SPEC)
    assert (c.task, c.target_range, c.classes, c.num_classes, c.class_names) == (
        "regression", (0.0, 10.0), (), 0, [])
    d = c.to_dict()
    assert d == {"kind": "tensor", "name": "grid", "shape": [2], "dtype": "float32", "task": "regression",
                 "target_range": [0.0, 10.0], "range": None, "finite": True}
    assert "classes" not in d
    json.dumps(d)
    assert TensorContract.from_dict(d) == c and contract_from_dict(d) == c
    assert contract_from_dict({**TENSOR_SPEC, "target_range": None}).target_range is None
    y = c.encode_labels(np.array([1, 2, 3]))
    assert y.dtype == np.float32 and y.tolist() == [1.0, 2.0, 3.0]


def test_table_regression_contract_round_trips_and_encodes_floats():
    c = TableContract.from_dict(TABLE_SPEC)
    assert (c.task, c.target_range, c.classes, c.num_classes, c.class_names) == (
        "regression", (0.0, 1000.0), (), 0, [])
    d = c.to_dict()
    assert list(d) == ["kind", "name", "task", "target", "target_range", "columns"]
    assert d["target_range"] == [0.0, 1000.0]
    assert TableContract.from_dict(d) == c and contract_from_dict(d) == c
    assert c.fingerprint() == TableContract.from_dict(json.loads(json.dumps(d))).fingerprint()
    y = c.encode_labels(pd.Series([1, 2.5, 3]))
    assert y.dtype == np.float32 and y.tolist() == [1.0, 2.5, 3.0]


# sha256 of each contract's to_dict, computed with keel before regression existed: a
# classification contract must keep its fingerprint (checkpoints and bundles record it).
DIGITS = {"kind": "tensor", "name": "digits", "shape": [1, 8, 8], "dtype": "float32", "range": [0.0, 16.0],
          "finite": True, "classes": list(range(10))}
PEOPLE = {"kind": "table", "name": "people", "target": "label", "classes": ["no", "yes"], "class_names": ["No", "Yes"],
          "columns": {"age": {"dtype": "float64", "nullable": False, "min": 0, "max": 120},
                      "color": {"dtype": "category", "nullable": True, "categories": ["red", "green"]}}}
FINGERPRINTS = {
    "digits": "3db82582df55003245a19f7c609b5f85e91cce43b85e6bcc8d19a0374a5f8ce5",
    "people": "2c8edd2384b4d1f9854dd3c491240b84e501a39a37a4bff7983ea5d1ad97c112",
    "breast_cancer": "e7a2ca70aa97be7dad461fd2cd3896b540aa7d050a372c7095d74a5399d52695",
}


def test_classification_contracts_keep_their_dict_and_fingerprint():
    from pathlib import Path

    bc = yaml.safe_load((Path(__file__).parents[2] / "conf/data/contract/breast_cancer.yaml").read_text())
    for name, spec in (("digits", DIGITS), ("people", PEOPLE), ("breast_cancer", bc)):
        c = contract_from_dict(spec)
        assert c.task == "classification" and c.target_range is None
        assert "task" not in c.to_dict() and "target_range" not in c.to_dict()
        assert c.fingerprint() == FINGERPRINTS[name], name
        # an explicit task: classification is the same contract
        assert contract_from_dict({**spec, "task": "classification"}).fingerprint() == FINGERPRINTS[name]
    assert json.dumps(contract_from_dict(DIGITS).to_dict()) == (
        '{"kind": "tensor", "name": "digits", "shape": [1, 8, 8], "dtype": "float32", "classes": '
        '[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "range": [0.0, 16.0], "finite": true}')


@pytest.mark.parametrize("base", [TENSOR_SPEC, TABLE_SPEC], ids=["tensor", "table"])
@pytest.mark.parametrize(
    "change,pattern",
    [
        ({"classes": [0, 1]}, r"classes: a regression contract has no classes \(its target is a number\)\. "
                              r"Fix: remove classes, or set task: classification"),
        ({"target_range": [5, 1]}, r"target_range=\[5, 1\]: expected \[low, high\] \(finite numbers, low <= high\), "
                                   r"or null \(any finite number\)"),
        ({"target_range": [0, float("inf")]}, r"target_range=\[0, inf\]: expected"),
        ({"target_range": [True, 2]}, r"target_range=\[True, 2\]: expected"),
        ({"target_range": "0..1"}, r"target_range='0\.\.1': expected"),
        ({"task": "ranking"}, r"task='ranking': expected classification \(a list of `classes`\) or regression"),
    ],
    ids=["classes", "reversed", "inf", "bool", "text", "unknown-task"],
)
def test_malformed_regression_specs_are_refused_naming_the_key(base, change, pattern):
    with pytest.raises(ContractError, match=r"^invalid (data|table) contract: .*" + pattern):
        contract_from_dict({**base, **change})


def test_task_keys_of_the_other_task_are_refused_with_the_fix():
    with pytest.raises(ContractError, match=r"class_names: a regression contract has no class_names"):
        contract_from_dict({**TABLE_SPEC, "class_names": ["a", "b"]})
    for spec in (DIGITS, PEOPLE):
        with pytest.raises(ContractError, match=r"target_range: applies to `task: regression` \(a numeric target\); "
                                                r"a classification contract lists its `classes`\. Fix: remove "
                                                r"target_range, or set task: regression \(and remove classes\)"):
            contract_from_dict({**spec, "target_range": [0, 1]})
        no_classes = {k: v for k, v in spec.items() if k not in ("classes", "class_names")}
        with pytest.raises(ContractError, match=r"missing key 'classes' \(or `task: regression` for a numeric target\)"):
            contract_from_dict(no_classes)
    with pytest.raises(ContractError, match=r"unknown key 'classez' \(allowed: \['columns', 'kind', 'name', "
                                            r"'target', 'target_range', 'task'\]\)"):
        contract_from_dict({**TABLE_SPEC, "classez": [1]})
    with pytest.raises(ContractError, match=r"the target 'price' is declared by `target`/`target_range`"):
        contract_from_dict({**TABLE_SPEC, "columns": {**TABLE_SPEC["columns"], "price": {"dtype": "float64"}}})


# ------------------------------------------------------------------------------ target rules: tensors


def test_every_tensor_target_rule_with_source_rows():
    c = TensorContract.from_dict(TENSOR_SPEC)
    x = np.zeros((7, 2), np.float32)
    y = np.array([1.0, np.nan, np.inf, 10.0, -0.5, 1e39, 10.5])
    report = c.check(x, y, "train", row_ids=np.arange(100, 107))
    v = by_rule(report)
    assert set(v) == {("finite", "label"), ("range", "label")}
    assert v["finite", "label"].rows.tolist() == [101, 102, 105]
    assert v["finite", "label"].examples == ((101, "NaN"), (102, "Inf"), (105, 1e39))
    assert "beyond the float32 range" in v["finite", "label"].detail
    assert v["range", "label"].rows.tolist() == [102, 104, 105, 106]  # Inf is outside too, as for features
    assert v["range", "label"].describe().startswith("range on label: 4 of 7 rows fail (allowed [0, 10])")
    assert report.droppable and report.failing_rows().tolist() == [101, 102, 104, 105, 106]
    keep = np.array([0, 3])
    assert c.check(x[keep], y[keep], "train").ok
    # numbers as objects: each value on its own; booleans and text are not numbers
    mixed = np.array([1, None, "2", True, 2.5, np.float32(3)], dtype=object)
    v = by_rule(c.check(np.zeros((6, 2), np.float32), mixed, "val"))
    assert v["dtype", "label"].rows.tolist() == [2, 3] and v["finite", "label"].rows.tolist() == [1]
    # a text or complex array: the whole split (as for labels)
    for bad in (np.array(["1"] * 3), np.ones(3, dtype=complex), np.ones(3, dtype=bool)):
        r = c.check(np.zeros((3, 2), np.float32), bad, "test")
        assert [(w.rule, w.rows) for w in r.violations] == [("dtype", None)] and not r.droppable
    r = c.check(x, np.zeros((7, 1)), "test")
    assert r.violations[0].describe() == "shape on label: 7 of 7 rows fail (targets have shape [7, 1], expected [7])"
    assert TensorContract.from_dict({**TENSOR_SPEC, "target_range": None}).check(
        x, np.array([-1e30, 0, 1, 2, 3, 4, 1e30]), "train").ok


@st.composite
def targets(draw):
    n = draw(st.integers(1, 6))
    kind = draw(st.sampled_from(["float", "int", "object"]))
    if kind == "int":
        return np.array(draw(st.lists(st.integers(-20, 30), min_size=n, max_size=n)), dtype=np.int64)
    values = st.one_of(st.floats(-20, 30), st.sampled_from([np.nan, np.inf, -np.inf, 1e39, -1e300, 10.0, 0.0]))
    if kind == "float":
        return np.array(draw(st.lists(values, min_size=n, max_size=n)), dtype=np.float64)
    objects = st.one_of(values, st.none(), st.booleans(), st.text(max_size=2), st.integers(-5, 15))
    return np.array(draw(st.lists(objects, min_size=n, max_size=n)) + [None], dtype=object)[:-1]


def target_ok(y: np.ndarray, lo: float, hi: float) -> bool:
    """The documented rule: every value a number (not a boolean), finite in float32, in [lo, hi]."""
    for v in y.tolist():
        if v is None or isinstance(v, (bool, str)):
            return False
        if not (np.isfinite(v) and abs(v) <= float(np.finfo(np.float32).max) and lo <= v <= hi):
            return False
    return True


@SETTINGS
@given(y=targets())
def test_tensor_target_check_is_exact_and_dropping_repairs(y):
    c = TensorContract.from_dict(TENSOR_SPEC)
    x = np.zeros((len(y), 2), np.float32)
    report = c.check(x, y, "train")
    assert report.ok == target_ok(y, 0.0, 10.0)
    json.dumps(report.to_dict(), allow_nan=False)
    if not report.ok:
        assert report.droppable
        keep = np.setdiff1d(np.arange(len(y)), report.failing_rows())
        if keep.size:
            assert c.check(x[keep], y[keep], "train").ok


# ------------------------------------------------------------------------------ target rules: tables


@pytest.mark.parametrize(
    "value,rule,detail",
    [
        ("cheap", "dtype", "column 'price': expected a number (regression target)"),
        (True, "dtype", "column 'price': expected a number (regression target)"),
        (None, "nullable", "column 'price': missing value (NaN/empty) in a non-nullable column"),
        (np.nan, "nullable", "column 'price': missing value (NaN/empty) in a non-nullable column"),
        (np.inf, "finite", "column 'price': Inf, or beyond the float32 range (|value| > 3.4e38)"),
        (1e39, "finite", "column 'price': Inf, or beyond the float32 range (|value| > 3.4e38)"),
        (1000.5, "range", "column 'price': allowed [0, 1000]"),
        (-1, "range", "column 'price': allowed [0, 1000]"),
    ],
)
def test_every_table_target_rule_with_source_rows(value, rule, detail):
    c = TableContract.from_dict(TABLE_SPEC)
    df = houses(20)
    df.index = np.arange(500, 520)  # source row ids
    df["price"] = df["price"].astype(object)
    df.loc[507, "price"] = value
    assert not c._surely_clean(df, True)
    report = c.check(df, "train")
    hits = [v for v in report.violations if v.rule == rule and v.feature == "label"]
    assert hits and hits[0].detail == detail, [v.describe() for v in report.violations]
    assert hits[0].rows.tolist() == [507] and hits[0].examples[0][0] == 507
    assert report.droppable and report.failing_rows().tolist() == [507]
    assert c.check(df.drop(index=[507]), "train").ok
    assert c.check(df.drop(columns="price"), "serve", with_target=False).ok


def _set_target(row, value):
    def corrupt(df):
        df = df.copy()
        if isinstance(value, str) or isinstance(value, bool):
            df["price"] = df["price"].astype(object)
        elif df["price"].dtype.kind in "iu":
            df["price"] = df["price"].astype("float64")
        df.loc[row % len(df), "price"] = value
        return df
    return corrupt


TARGET_DAMAGE = {
    "NaN": _set_target(3, np.nan), "Inf": _set_target(1, np.inf), "-Inf": _set_target(2, -np.inf),
    "beyond float32": _set_target(0, 3.5e38), "above range": _set_target(4, 1000.01), "below range": _set_target(5, -0.01),
    "text": _set_target(6, "x"), "boolean": _set_target(7, True),
    "bool column": lambda df: df.assign(price=df["price"] > 100),
    "int column": lambda df: df.assign(price=df["price"].round().astype("int64")),
    "nullable dtype": lambda df: df.assign(price=df["price"].round().astype("Int64")),
    "float32 column": lambda df: df.assign(price=df["price"].astype("float32")),
    "at the bounds": lambda df: df.assign(price=np.where(np.arange(len(df)) % 2, 0.0, 1000.0)),
}


@pytest.mark.parametrize("name", list(TARGET_DAMAGE))
def test_fast_path_clears_a_regression_target_only_where_pandera_does(name):
    c = TableContract.from_dict(TABLE_SPEC)
    df = TARGET_DAMAGE[name](houses(12))
    fast, pandera = c._surely_clean(df, True), pandera_finds_nothing(c, df)
    assert not fast or pandera
    assert c.check(df, "train").ok == pandera
    if name in ("int column", "float32 column", "at the bounds"):
        assert fast  # plain numbers in range take the fast path


@SETTINGS
@given(data=st.data())
def test_fast_path_on_random_regression_targets_implies_pandera(data):
    c = TableContract.from_dict({**TABLE_SPEC, "target_range": data.draw(st.sampled_from([None, [0, 1000]]))})
    df = houses(data.draw(st.integers(1, 15)), seed=data.draw(st.integers(0, 100)))
    for _ in range(data.draw(st.integers(0, 2))):
        df = TARGET_DAMAGE[data.draw(st.sampled_from(sorted(TARGET_DAMAGE)))](df)
    if c._surely_clean(df, True):
        assert pandera_finds_nothing(c, df)
    assert c.check(df, "train").ok == pandera_finds_nothing(c, df)


def test_clean_regression_tables_skip_the_schema(monkeypatch):
    c = TableContract.from_dict(TABLE_SPEC)
    df = houses()
    monkeypatch.setattr(TableContract, "_schema", lambda *a: pytest.fail("the schema ran on a clean table"))
    assert c.check(df, "train").ok and c.check(df.assign(price=df["price"].round().astype(int)), "train").ok


# ------------------------------------------------------------------------------ inference


def test_infer_contract_auto_classification_and_regression():
    df = houses(120)
    auto = infer_contract(df, "price", "houses")
    assert auto.task == "regression" and auto.classes == ()
    assert auto.target_range == (float(df["price"].min()), float(df["price"].max()))
    assert auto.check(df, "all").ok and TableContract.from_dict(auto.to_dict()) == auto
    lo, hi = df["price"].min(), df["price"].max()
    wide = infer_contract(df, "price", "houses", margin=0.1, task="regression")
    assert wide.target_range == pytest.approx((lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)))
    # few whole numbers: auto gives classes, as before
    labelled = df.assign(price=(df["price"] > 400).astype(int))
    cls = infer_contract(labelled, "price", "houses")
    assert cls.task == "classification" and cls.classes == (0, 1)
    assert infer_contract(labelled, "price", "houses", task="classification") == cls
    # a numeric target forced to regression keeps its range; to classification, its values as classes
    assert infer_contract(labelled, "price", "houses", task="regression").target_range == (0.0, 1.0)
    missing = df.assign(price=df["price"].where(df.index != 3, np.nan).where(df.index != 4, np.inf))
    assert infer_contract(missing, "price", "houses").target_range == (
        float(np.delete(df["price"].to_numpy(), [3, 4]).min()), float(np.delete(df["price"].to_numpy(), [3, 4]).max()))


def test_infer_contract_refuses_an_ambiguous_target_and_an_unknown_task():
    df = houses(120).assign(price=np.arange(120) % 23)  # 23 whole numbers: classes or a count?
    with pytest.raises(TaskError, match=r"data.target='price' holds 23 distinct whole numbers.*so keel will not "
                                        r"guess\. Fix: task=classification or task=regression"):
        infer_contract(df, "price", "houses")
    assert infer_contract(df, "price", "houses", task="regression").task == "regression"
    with pytest.raises(TaskError, match=r"task='ranking': expected one of classification, regression"):
        infer_contract(df, "price", "houses", task="ranking")


# ------------------------------------------------------------------------------ splits


def test_quantile_strata_bins_ties_and_bad_values():
    v = np.arange(100.0)
    s = quantile_strata(v, 10)
    assert s.dtype == np.int64 and np.bincount(s).tolist() == [10] * 10
    assert (np.diff(s) >= 0).all()  # bins follow the value order
    ties = np.array([1.0] * 50 + list(range(2, 52)))
    s = quantile_strata(ties, 10)
    assert len(set(s[:50])) == 1  # equal values share one bin
    bad = np.array([1, 2, None, "x", "3.5", np.nan, np.inf, True, 4], dtype=object)
    s = quantile_strata(bad, 2)
    assert s[[2, 3, 5, 6, 7]].tolist() == [-1] * 5 and (s[[0, 1, 4, 8]] >= 0).all()
    assert quantile_strata(np.full(5, np.nan)).tolist() == [-1] * 5
    assert quantile_strata(pd.Series([3.0, 1.0, 2.0]), 3).tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match=r"bins=0: expected an integer >= 1"):
        quantile_strata(v, 0)


class Toy(InMemoryDataModule):
    """Tensor rows with a numeric target: y = skewed values; ``bad`` rows get a bad target;
    ``fixed`` rows form the test split and get ``shift`` added to their target."""

    def __init__(self, n=600, bad=(), fixed=None, shift=0.0, contract=None, **kw):
        spec = {"name": "toy", "shape": [3], "dtype": "float32", "task": "regression", "target_range": [0, 1e6]}
        super().__init__(contract or spec, **kw)
        self.n, self.bad, self.fixed, self.shift = n, dict(bad), fixed, shift

    def load(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(self.n, 3)).astype(np.float32)
        y = rng.lognormal(3, 1, self.n)
        if self.fixed is not None:
            y[self.fixed] += self.shift
        for row, value in self.bad.items():
            y[row] = value
        return x, y

    def test_rows(self):
        return self.fixed


def test_regression_splits_cover_the_target_range_and_are_seeded():
    dm = Toy(split_seed=3)
    dm.setup()
    y = {s: dm.split_arrays(s)[1] for s in ("train", "val", "test")}
    assert all(v.dtype == np.float32 for v in y.values())
    assert dm._data["train"].tensors[1].dtype.is_floating_point
    q = np.linspace(0.1, 0.9, 9)
    spread = np.quantile(y["train"], 0.9) - np.quantile(y["train"], 0.1)
    for s in ("val", "test"):
        assert len(y[s]) == pytest.approx(90, abs=6)
        gap = np.abs(np.quantile(y[s], q) - np.quantile(y["train"], q)).max()
        assert gap < 0.1 * spread, (s, gap)
        assert y[s].max() > np.quantile(y["train"], 0.9) and y[s].min() < np.quantile(y["train"], 0.1)
    again = Toy(split_seed=3)
    again.setup()
    other = Toy(split_seed=4)
    other.setup()
    for s in ("train", "val", "test"):
        assert again.split_arrays(s)[1].tolist() == y[s].tolist()
    assert other.split_arrays("val")[1].tolist() != y["val"].tolist()
    # the stratified split itself: strata from quantile bins
    parts = stratified_split(quantile_strata(Toy().load()[1]), 0.15, 0.15, 3)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(600))


def test_bad_targets_still_split_then_are_reported_or_dropped(caplog):
    bad = {5: np.nan, 17: np.inf, 40: -3.0, 99: 2e6}
    with pytest.raises(ContractViolationError) as info:
        Toy(bad=bad).setup()
    rows = sorted(r for rep in info.value.reports for r in rep.failing_rows().tolist())
    assert rows == [5, 17, 40, 99]
    text = str(info.value)
    assert "finite on label" in text and "range on label" in text and "allowed [0, 1e+06]" in text
    dm = Toy(bad=bad, on_violation="drop")
    with caplog.at_level("WARNING"):
        dm.setup()
    assert dm.dropped["total"] == 4 and sum(dm.split_sizes().values()) == 596
    assert sorted(r for s in dm.dropped["splits"].values() for r in s["rows"]) == [5, 17, 40, 99]
    assert all(np.isfinite(dm.split_arrays(s)[1]).all() for s in ("train", "val", "test"))
    assert "data.on_violation=drop: dropped" in caplog.text


def test_table_drop_removes_bad_target_rows(tmp_path):
    df = houses(150)
    df["price"] = df["price"].astype(object)
    df.loc[[4, 9], "price"] = [np.nan, "n/a?"]
    df.loc[20, "price"] = 5000.0
    path = tmp_path / "houses.csv"
    df.to_csv(path, index=False)
    from keel.data import TableDataModule

    dm = TableDataModule(path=str(path), target="price", contract=TABLE_SPEC, on_violation="drop")
    dm.setup()
    assert sorted(r for s in dm.dropped["splits"].values() for r in s["rows"]) == [4, 9, 20]
    assert sum(dm.split_sizes().values()) == 147 and dm.split_arrays("train")[1].dtype == np.float32
    with pytest.raises(ContractViolationError, match=r"dtype on label: 1 of \d+ rows fail \(column 'price': expected "
                                                     r"a number \(regression target\)\); e.g. row 9: n/a\?"):
        TableDataModule(path=str(path), target="price", contract=TABLE_SPEC).setup()


# ------------------------------------------------------------------------------ task and statistics


def test_task_must_agree_with_the_contract():
    from keel.data import DigitsDataModule

    with pytest.raises(KeelError, match=r"^data contract 'toy' declares a regression target \(task: regression\) but "
                                        r"task=classification\. Fix: task=regression \(or task=auto\), or give a "
                                        r"classification contract \(data.contract=<file.yaml>\)$"):
        Toy(task="classification")
    with pytest.raises(KeelError, match=r"data contract 'digits' declares a classification target \(a list of "
                                        r"classes\) but task=regression"):
        DigitsDataModule(contract=DIGITS, task="regression")
    with pytest.raises(KeelError, match=r"task='ranking': expected one of auto, classification, regression"):
        Toy(task="ranking")
    assert Toy(task="regression").task == Toy(task="auto").task == "regression"
    assert DigitsDataModule(contract=DIGITS).task == "classification"


def test_a_float_csv_column_without_contract_is_inferred_as_regression(tmp_path, caplog):
    from keel.data import TableDataModule

    df = houses(150)
    path = tmp_path / "houses.csv"
    df.to_csv(path, index=False)
    dm = TableDataModule(path=str(path), target="price", contract=None)
    with caplog.at_level("INFO"):
        dm.setup()
    assert dm.task == "regression" and dm.contract.classes == () and dm.contract.num_classes == 0
    # the range of every row the contract was inferred from: no split fails its own file
    lo, hi = float(df["price"].min()), float(df["price"].max())
    # the file's range widened by data.infer_margin (0.1 of the span) on each side
    assert dm.contract.target_range == pytest.approx((lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)))
    assert all(r.ok for r in dm.reports.values())
    assert dm.split_arrays("train")[1].dtype == np.float32
    assert "task=auto: regression (target 'price' holds non-integer numbers" in caplog.text
    assert dm.target_stats()["rows"] == dm.split_sizes()["train"]


def test_a_table_without_contract_infers_the_task_asked_for(tmp_path):
    from keel.data import TableDataModule

    path = tmp_path / "counts.csv"
    houses(150).assign(price=np.arange(150) % 23).to_csv(path, index=False)
    dm = TableDataModule(path=str(path), target="price", contract=None)
    assert dm.task == "auto"
    with pytest.raises(TaskError, match="so keel will not guess"):
        dm.setup()
    dm = TableDataModule(path=str(path), target="price", contract=None, task="regression")
    dm.setup()
    assert dm.task == "regression" and dm.contract.target_range == pytest.approx((-2.2, 24.2))  # 0..22, +-10%
    dm = TableDataModule(path=str(path), target="price", contract=None, task="classification")
    dm.setup()
    assert dm.task == "classification" and dm.contract.num_classes == 23


def test_target_stats_match_numpy_and_class_counts_is_refused():
    dm = Toy()
    dm.setup()
    for split in ("train", "val", "test"):
        y = dm.split_arrays(split)[1].astype(np.float64)
        stats = dm.target_stats(split)
        assert stats == {"mean": pytest.approx(y.mean()), "std": pytest.approx(y.std(ddof=1)),
                         "min": float(y.min()), "max": float(y.max()), "rows": len(y)}
        assert all(type(v) is float for k, v in stats.items() if k != "rows") and type(stats["rows"]) is int
    with pytest.raises(KeelError, match=r"class_counts: rows per class are a classification statistic.*"
                                        r"Fix: use target_stats\(\) for regression"):
        dm.class_counts()
    constant = Toy(bad={i: 7.0 for i in range(600)})
    constant.setup()
    assert constant.target_stats()["std"] == 1e-12  # floored: it can divide

    from keel.data import DigitsDataModule

    digits = DigitsDataModule(contract=DIGITS)
    with pytest.raises(KeelError, match=r"target_stats: mean/std of the target are a regression statistic"):
        digits.target_stats()
    assert digits.split_arrays("train")[1].dtype == np.int64


# ------------------------------------------------------------------------------ drift


def test_regression_target_drift_is_recorded_and_alerts_on_a_shift(caplog):
    fixed = np.arange(500, 600)
    calm = Toy(fixed=fixed)
    calm.setup()
    for split in ("val", "test"):
        r = calm.drift["splits"][split]
        assert r["labels"] is None and r["target"]["kind"] == "numeric" and r["target"]["status"] == "ok"
    assert set(calm.drift["target_reference"]) >= {"edges", "counts", "mean", "std", "min", "max"}
    assert "target" not in calm.reference["features"]  # serving data has no target: features only
    shifted = Toy(fixed=fixed, shift=500.0)
    with caplog.at_level("WARNING"):
        shifted.setup()
    test = shifted.drift["splits"]["test"]
    assert test["target"]["status"] == "alert" and test["target"]["psi"] > 1.0
    assert test["target"]["mean"]["current"] > test["target"]["mean"]["reference"] + 400
    assert test["summary"]["n_alert"] == 0  # the features did not move...
    assert test["status"] == "alert" and shifted.drift["status"] == "alert"  # ...the target did
    assert shifted.drift["splits"]["val"]["target"]["status"] == "ok"
    assert "drift train->test: 0 features alert" in caplog.text and "; target alert (PSI " in caplog.text
    text = format_report(shifted.drift)
    assert "  target: psi " in text.split("[test]")[1] and "(alert; mean " in text
    json.dumps(shifted.drift, allow_nan=False)


def test_target_drift_is_a_numeric_features_drift():
    rng = np.random.default_rng(1)
    ref, same, moved = rng.normal(0, 1, 400), rng.normal(0, 1, 300), rng.normal(1.5, 1, 300)
    stats = reference_stats({"y": ref}, {"y": "numeric"}, bins=T.bins)
    for cur in (same, moved):
        assert target_drift(stats["features"]["y"], cur, T) == compare(stats, {"y": cur}, T)["features"]["y"]
    assert target_drift(stats["features"]["y"], same, T)["status"] == "ok"
    shifted = target_drift(stats["features"]["y"], moved, T)
    assert shifted["status"] == "alert" and shifted["psi"] > T.psi_alert
    with pytest.raises(DriftError):
        target_drift(stats["features"]["y"], np.zeros((3, 2)), T)


def test_drift_report_target_arguments():
    cols, kinds = {"a": np.arange(40.0)}, {"a": "numeric"}
    y = np.arange(40.0)
    out = drift_report(cols, kinds, {"val": cols}, None, {}, [], T, reference_target=y, split_targets={"val": y + 100})
    assert out["splits"]["val"]["target"]["status"] == "alert" and out["status"] == "alert"
    assert list(out["splits"]["val"]) == ["features", "summary", "labels", "target", "leakage", "status"]
    with pytest.raises(DriftError, match=r"splits without targets: \['val'\]"):
        drift_report(cols, kinds, {"val": cols}, None, {}, [], T, reference_target=y)
    plain = drift_report(cols, kinds, {"val": cols}, None, {}, [], T)
    assert "target" not in plain["splits"]["val"] and "target_reference" not in plain


# ------------------------------------------------------------------------------ the embedded table and configs


def test_diabetes_is_embedded_contracted_and_split_by_target(compose_cfg):
    assert compose_cfg("data=diabetes", resolve=False).data.task == "auto"
    cfg = compose_cfg("data=diabetes")
    assert cfg.data.task == "regression" and cfg.data.contract.task == "regression"
    dm = instantiate(cfg.data)
    assert isinstance(dm, DiabetesDataModule) and dm.task == "regression"
    dm.setup()
    sizes = dm.split_sizes()
    assert sum(sizes.values()) == 442 and sizes["val"] == pytest.approx(66, abs=3)
    assert set(dm.reports) == {"train", "val", "test"} and all(r.ok for r in dm.reports.values())
    assert dm.contract.target_range == (0.0, 700.0) and len(dm.contract.columns) == 10
    stats = dm.target_stats()
    assert stats["mean"] == pytest.approx(152, abs=3) and stats["rows"] == sizes["train"]
    assert 25 <= stats["min"] and stats["max"] <= 346
    x, y = dm.split_arrays("test")
    assert x.shape == (sizes["test"], 10) and x.dtype == y.dtype == np.float32
    assert dm.preprocessing["type"] == "tabular" and dm.net_input_shape == [10]
    for split in ("val", "test"):
        assert dm.drift["splits"][split]["target"]["status"] == "ok"  # stratified on the target
    with pytest.raises(Exception) as info:  # Hydra wraps it; entry points print the KeelError
        instantiate(compose_cfg("data=diabetes", "task=classification").data)
    assert "declares a regression target" in str(info.value.__cause__ or info.value)
    assert instantiate(compose_cfg("data=diabetes", "task=regression").data).task == "regression"


@pytest.mark.parametrize("data", ["digits", "mnist", "csv", "breast_cancer", "diabetes"])
def test_every_data_config_passes_the_run_task(compose_cfg, data):
    cfg = compose_cfg(f"data={data}", "task=regression")
    assert cfg.data.task == "regression"


def test_breast_cancer_takes_a_task_and_refuses_regression(compose_cfg):
    cfg = compose_cfg("data=breast_cancer")
    dm = instantiate(cfg.data)
    assert dm.task == "classification"
    with pytest.raises(Exception) as info:
        instantiate(compose_cfg("data=breast_cancer", "task=regression").data)
    assert "declares a classification target" in str(info.value.__cause__ or info.value)
    logging.getLogger(__name__).debug("ok")
