"""TableContract.check's vectorized path for clean tables: it answers "clean" only where the pandera
schema finds nothing, and leaves every doubt to the schema (which then names the violations)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from keel.data.table_contract import TableContract

SPEC = {
    "name": "t",
    "target": "y",
    "classes": [0, 1, 2],
    "columns": {
        "a": {"dtype": "float64", "nullable": True, "min": 0.0, "max": 10.0},
        "b": {"dtype": "float32", "nullable": False},
        "i": {"dtype": "int64", "nullable": False, "min": -5, "max": 5},
        "j": {"dtype": "int64", "nullable": True},
        "f": {"dtype": "bool", "nullable": False},
    },
}


@pytest.fixture
def contract() -> TableContract:
    return TableContract.from_dict(SPEC)


def clean(n: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 10, n)
    a[::7] = np.nan
    j = rng.integers(-100, 100, n).astype("float64")  # an int column read as float because of NaN
    j[::5] = np.nan
    return pd.DataFrame({"a": a, "b": rng.normal(size=n).astype("float32"), "i": rng.integers(-5, 6, n),
                         "j": j, "f": rng.integers(0, 2, n).astype(bool), "y": rng.integers(0, 3, n)})


def pandera_finds_nothing(contract: TableContract, df: pd.DataFrame, with_target: bool = True) -> bool:
    import pandera.pandas as pa

    try:
        contract._schema(with_target).validate(df.reset_index(drop=True), lazy=True)
    except pa.errors.SchemaErrors:
        return False
    return True


def test_clean_tables_skip_the_schema(contract, monkeypatch):
    df = clean()
    assert pandera_finds_nothing(contract, df)
    monkeypatch.setattr(TableContract, "_schema", lambda *a: pytest.fail("the schema ran on a clean table"))
    report = contract.check(df, "train")
    assert report.ok and report.rows == 50
    assert contract.check(df.drop(columns="y"), "serve", with_target=False).ok
    assert contract.check(df.assign(f=df["f"].astype("int64"), i=df["i"].astype("float64")), "train").ok


def _set(col, row, value):
    def corrupt(df):
        if row not in df.index or col not in df:
            raise KeyError(row)  # .loc would append a row
        df = df.copy()
        if isinstance(value, str):
            df[col] = df[col].astype(object)
        elif df[col].dtype.kind in "biu":
            df[col] = df[col].astype("float64")
        df.loc[row, col] = value
        return df
    return corrupt


CORRUPTIONS = {
    "above max": _set("a", 3, 10.5),
    "below min": _set("i", 4, -6),
    "NaN where not nullable": _set("b", 2, np.nan),
    "Inf": _set("b", 1, np.inf),
    "beyond float32": _set("a", 0, 1e39),
    "non-whole int": _set("i", 5, 1.5),
    "non-whole nullable int": _set("j", 1, 2.25),
    "bool not 0/1": _set("f", 6, 2.0),
    "text in a number column": _set("a", 8, "x"),
    "label not a class": _set("y", 9, 3),
    "NaN label": _set("y", 9, np.nan),
    "extra column": lambda df: df.assign(z=1.0),
    "missing column": lambda df: df.drop(columns="b"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_violation_goes_to_the_schema_and_is_reported(contract, name):
    df = CORRUPTIONS[name](clean())
    assert not contract._surely_clean(df, True)
    assert not pandera_finds_nothing(contract, df)
    report = contract.check(df, "train")
    assert not report.ok and report.violations


def test_doubtful_dtypes_go_to_the_schema_and_pass_when_valid(contract):
    df = clean()
    for variant in (df.assign(i=df["i"].astype("Int64")),       # pandas nullable integer
                    df.assign(y=df["y"].astype("category")),     # categorical label
                    df.assign(b=df["b"].astype(object))):        # numbers held as objects
        assert not contract._surely_clean(variant, True)
        assert contract.check(variant, "train").ok == pandera_finds_nothing(contract, variant)


def test_string_classes_and_category_columns_always_take_the_schema():
    spec = {"name": "s", "target": "y", "classes": ["no", "yes"],
            "columns": {"c": {"dtype": "category", "categories": ["u", "v"]}, "x": {"dtype": "float64"}}}
    contract = TableContract.from_dict(spec)
    df = pd.DataFrame({"c": ["u", "v", "u"], "x": [0.1, 0.2, 0.3], "y": ["no", "yes", "no"]})
    assert not contract._surely_clean(df, True)
    assert contract.check(df, "train").ok


def test_never_clean_where_the_schema_finds_something(contract):
    """Random tables with random damage: the vectorized answer "clean" implies pandera's."""
    rng = np.random.default_rng(1)
    damage = list(CORRUPTIONS.values())
    agreed_clean = 0
    for k in range(150):
        df = clean(n=int(rng.integers(1, 40)), seed=k)
        for _ in range(int(rng.integers(0, 3))):
            fn = damage[int(rng.integers(len(damage)))]
            try:
                df = fn(df)
            except KeyError:  # a row index past a short table, a column already dropped
                pass
        fast = contract._surely_clean(df, True)
        if fast:
            assert pandera_finds_nothing(contract, df), df
            agreed_clean += 1
    assert agreed_clean > 10  # the clean path was exercised, not only the schema
