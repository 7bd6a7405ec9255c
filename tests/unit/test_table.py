"""Tables on local files: reading, contract violations (each kind), drop mode, encoding in the model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from keel.data import ContractViolationError
from keel.data.table import TableReadError, read_table
from keel.data.table_contract import TableContract, infer_contract
from keel.models.nets import TabularPreprocess
from keel.fit import build_model

CONTRACT = {
    "kind": "table",
    "name": "people",
    "target": "label",
    "classes": ["no", "yes"],
    "columns": {
        "age": {"dtype": "float64", "nullable": False, "min": 0, "max": 120},
        "income": {"dtype": "float64", "nullable": True, "min": 0, "max": None},
        "visits": {"dtype": "int64", "nullable": False, "min": 0, "max": 100},
        "color": {"dtype": "category", "nullable": True, "categories": ["red", "green", "blue"]},
    },
}


def _frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.uniform(18, 90, n).round(1)
    income = rng.normal(50_000, 15_000, n).clip(0).round(0)
    income[rng.choice(n, n // 10, replace=False)] = np.nan
    visits = rng.integers(0, 30, n)
    color = rng.choice(["red", "green", "blue"], n).astype(object)
    color[rng.choice(n, n // 20, replace=False)] = None
    label = np.where(age + rng.normal(0, 10, n) > 55, "yes", "no")
    return pd.DataFrame({"age": age, "income": income, "visits": visits, "color": color, "label": label})


@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "people.csv"
    _frame().to_csv(path, index=False)
    return path


def _dm(compose_cfg, path, *overrides, contract=CONTRACT):
    cfg = compose_cfg("data=csv", f"data.path={path}", "data.target=label", *overrides)
    cfg.data.contract = contract
    return cfg, instantiate(cfg.data)


def test_csv_trains_end_to_end_shapes_and_encoding(compose_cfg, csv):
    cfg, dm = _dm(compose_cfg, csv)
    dm.setup()
    assert sum(dm.split_sizes().values()) == 200 and all(r.ok for r in dm.reports.values())
    # numeric 3 (+1 indicator for nullable income) + color 3 categories + missing slot
    assert dm.net_input_shape == [3 + 1 + 4]
    model = build_model(cfg, dm)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1] == 4 and set(y.tolist()) <= {0, 1}
    assert torch.isnan(x).any()  # missing income reaches the model as NaN...
    assert torch.isfinite(model.preprocess(x)).all()  # ...and is imputed inside it
    assert model(x).shape == (len(x), 2)
    assert isinstance(model.preprocess, TabularPreprocess)


def test_preprocessing_is_fitted_on_train_only(compose_cfg, csv):
    cfg, dm = _dm(compose_cfg, csv)
    dm.setup()
    train_x = dm._data["train"].tensors[0].numpy().astype(np.float64)
    pre = dm.preprocessing
    assert pre["numeric"] == [0, 1, 2] and pre["categorical"] == [3] and pre["cardinalities"] == [3]
    assert pre["mean"][0] == pytest.approx(train_x[:, 0].mean())
    assert pre["mean"][1] == pytest.approx(np.nanmean(train_x[:, 1]))
    all_x = np.concatenate([dm._data[s].tensors[0].numpy() for s in ("train", "val", "test")]).astype(np.float64)
    assert pre["mean"][0] != pytest.approx(all_x[:, 0].mean(), abs=1e-9)


def test_parquet_reads_like_csv(tmp_path, compose_cfg):
    path = tmp_path / "people.parquet"
    _frame().to_parquet(path)
    _, dm = _dm(compose_cfg, path)
    dm.setup()
    assert sum(dm.split_sizes().values()) == 200


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda df: df.drop(columns=["visits"]), r"missing-columns: visits"),
        (lambda df: df.assign(extra=1), r"extra-columns: extra"),
        (lambda df: df.assign(visits=df["visits"].astype(object).where(df.index != 3, "many")),
         r"dtype on visits: 1 of \d+ rows fail \(expected int64\); e.g. row 3: many"),
        (lambda df: df.assign(age=df["age"].where(df.index != 7, 150.0)),
         r"range on age: 1 of \d+ rows fail \(allowed \[0, 120\]\); e.g. row 7: 150.0"),
        (lambda df: df.assign(color=df["color"].where(df.index != 5, "purple")),
         r"categories on color: 1 of \d+ rows fail .*row 5: purple"),
        (lambda df: df.assign(label=df["label"].where(df.index != 9, None)),
         r"nullable on label: 1 of \d+ rows fail \(column 'label': missing value"),
        (lambda df: df.assign(label=df["label"].where(df.index != 11, "maybe")),
         r"classes on label: 1 of \d+ rows fail \(column 'label': allowed \['no', 'yes'\]\); e.g. row 11: maybe"),
        (lambda df: df.assign(age=df["age"].where(df.index != 2, np.nan)),
         r"nullable on age: 1 of \d+ rows fail"),
    ],
    ids=["missing-column", "extra-column", "wrong-dtype", "out-of-range", "unknown-category", "nan-label",
         "label-outside-classes", "nan-in-non-nullable"],
)
def test_each_violation_is_reported_with_file_column_rows_and_fix(compose_cfg, tmp_path, mutate, expected):
    path = tmp_path / "bad.csv"
    mutate(_frame()).to_csv(path, index=False)
    _, dm = _dm(compose_cfg, path)
    with pytest.raises(ContractViolationError, match=expected) as info:
        dm.setup()
    msg = str(info.value)
    assert str(path) in msg and "Fix:" in msg


def test_every_violation_at_once(compose_cfg, tmp_path):
    df = _frame()
    df.loc[3, "age"] = -5
    df.loc[4, "color"] = "pink"
    df.loc[8, "label"] = "maybe"
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    _, dm = _dm(compose_cfg, path)
    with pytest.raises(ContractViolationError) as info:
        dm.setup()
    rules = {(v.rule, v.feature) for r in info.value.reports for v in r.violations}
    assert rules == {("range", "age"), ("categories", "color"), ("classes", "label")}


def test_drop_removes_failing_rows_says_how_many_and_why(compose_cfg, tmp_path, caplog):
    df = _frame()
    df.loc[[3, 4], "age"] = 500.0
    df.loc[8, "label"] = "maybe"
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    _, dm = _dm(compose_cfg, path, "data.on_violation=drop")
    with caplog.at_level("WARNING"):
        dm.setup()
    assert sum(dm.split_sizes().values()) == 197
    assert dm.dropped["total"] == 3
    dropped_rows = sorted(r for s in dm.dropped["splits"].values() for r in s["rows"])
    assert dropped_rows == [3, 4, 8]
    assert "data.on_violation=drop: dropped" in caplog.text and "range on age" in caplog.text
    report = dm.data_report()
    json.dumps(report)  # plain data
    assert report["dropped"]["total"] == 3


def test_drop_cannot_repair_a_missing_column(compose_cfg, tmp_path):
    path = tmp_path / "bad.csv"
    _frame().drop(columns=["age"]).to_csv(path, index=False)
    _, dm = _dm(compose_cfg, path, "data.on_violation=drop")
    with pytest.raises(ContractViolationError, match="missing-columns: age"):
        dm.setup()


def test_no_contract_infers_one(compose_cfg, csv):
    cfg, dm = _dm(compose_cfg, csv, contract=None)
    dm.setup()
    assert dm.contract.classes == ("no", "yes")
    assert {c.name: c.dtype for c in dm.contract.columns} == {
        "age": "float64", "income": "float64", "visits": "int64", "color": "category"}
    model = build_model(cfg, dm)  # net input shape and classes filled after setup
    assert model.hparams.net["input_shape"] == dm.net_input_shape and model.hparams.net["num_classes"] == 2


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("empty.csv", b"", r"empty.csv: the file is empty"),
        ("header.csv", b"a,b,label\n", r"header.csv: the file has a header but no rows"),
        ("data.xlsx", b"PK\x03\x04junk", r"data.xlsx: cannot tell the format from the suffix '.xlsx'"),
        ("fake.parquet", b"this is not parquet", r"fake.parquet: not a readable PARQUET file"),
        ("binary.csv", bytes(range(256)) * 4, r"binary.csv: not a readable CSV file"),
    ],
)
def test_unreadable_files_get_a_clear_error(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TableReadError, match=match):
        read_table(path)


def test_missing_file_and_missing_label_column(compose_cfg, tmp_path, csv):
    with pytest.raises(TableReadError, match=r"nope.csv: no such file. Fix: data.path="):
        read_table(tmp_path / "nope.csv")
    cfg = compose_cfg("data=csv", f"data.path={csv}", "data.target=outcome")
    dm = instantiate(cfg.data)
    with pytest.raises(TableReadError, match=r"no label column 'outcome'; columns are \['age', 'income'"):
        dm.setup()


def test_breast_cancer_is_embedded_contracted_and_weighted(compose_cfg):
    cfg = compose_cfg("data=breast_cancer")
    dm = instantiate(cfg.data)
    dm.setup()
    assert sum(dm.split_sizes().values()) == 569
    assert dm.contract.class_names == ["malignant", "benign"]
    model = build_model(cfg, dm)
    counts = dm.class_counts("train")
    assert counts[0] < counts[1]  # imbalanced: fewer malignant
    w = model.criterion.weight.tolist()  # the balanced weights reach the loss
    assert w[0] > w[1] and w[0] == pytest.approx(sum(counts) / (2 * counts[0]))


def test_infer_contract_round_trips_and_validates_its_source():
    df = _frame()
    c = infer_contract(df, "label", "people")
    assert TableContract.from_dict(c.to_dict()) == c
    assert c.check(df, "all").ok
    assert c.columns[1].nullable and not c.columns[0].nullable


def test_tabular_preprocess_matches_a_numpy_reference():
    pre = TabularPreprocess(numeric=[0, 2], mean=[1.0, 10.0], std=[2.0, 5.0], fill=[1.0, 10.0],
                            nullable=[True, False], categorical=[1], cardinalities=[3])
    x = torch.tensor([[3.0, 2.0, 20.0], [float("nan"), -1.0, 0.0]])
    out = pre(x)
    expected = torch.tensor([
        [1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0],   # (3-1)/2, (20-10)/5, not missing, one-hot code 2 -> slot 3
        [0.0, -2.0, 1.0, 1.0, 0.0, 0.0, 0.0],  # NaN -> fill, indicator 1, missing category -> slot 0
    ])
    assert pre.width == 7
    torch.testing.assert_close(out, expected)
