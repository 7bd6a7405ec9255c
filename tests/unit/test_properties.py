"""Property-based tests (hypothesis): random arrays and frames against the contract checkers
and against predict.

Whatever comes in, the checkers return a report (never raise), and a report is clean exactly
when the input satisfies the contract (an independent oracle here says when that is). Predict
answers with a valid prediction (one row of probabilities per input row, equal to the model's)
or with a contract error, and a prediction only for input that satisfies the contract.

The bundles served here are built once per module with ``onnx.helper`` (no torch, no
training, well under a second): a linear model over the contract's input, so every
prediction can be recomputed with numpy.

Examples per test: the ``keel`` profile (fixed seed, bounded, no deadline) keeps this file
at a few seconds; ``KEEL_HYPOTHESIS_PROFILE=explore`` runs many more, with fresh randomness.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keel.data.contract import FLOAT32_MAX, ContractReport, ContractViolationError, TensorContract
from keel.data.table_contract import TableContract

settings.register_profile(
    "keel", max_examples=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "explore", max_examples=2000, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
PROFILE = settings.get_profile(os.environ.get("KEEL_HYPOTHESIS_PROFILE", "keel"))

# ------------------------------------------------------------------------------ contracts

TENSOR = TensorContract.from_dict(
    {"name": "grid", "shape": [2, 3], "dtype": "float32", "range": [0.0, 16.0], "finite": True, "classes": [3, 7, 9]}
)
# float64 data, no range: only the float32 cast the model makes bounds the values
WIDE = TensorContract.from_dict({"name": "wide", "shape": [4], "dtype": "float64", "finite": True, "classes": [0, 1]})
# NaN allowed (finite: false), the range still applies to the other values
LOOSE = TensorContract.from_dict(
    {"name": "loose", "shape": [3], "dtype": "float32", "range": [-1.0, 1.0], "finite": False, "classes": [0, 1]}
)
TENSORS = (TENSOR, WIDE, LOOSE)

UNICODE = "größe 🌍"
TABLE = TableContract.from_dict({
    "kind": "table", "name": "people", "target": "y", "classes": ["no", "yes"],
    "columns": {
        "age": {"dtype": "float64", "nullable": False, "min": 0, "max": 120},
        "visits": {"dtype": "int64", "nullable": True, "min": None, "max": None},
        "member": {"dtype": "bool", "nullable": False},
        "colour": {"dtype": "category", "nullable": True, "categories": ["red", "green", "1"]},
        UNICODE: {"dtype": "float32", "nullable": True, "min": -1.5, "max": 2.5},
    },
})
COLUMNS = {c.name: c for c in TABLE.columns}


# ------------------------------------------------------------------------------ oracles

def tensor_ok(c: TensorContract, x: Any, y: Any | None) -> bool:
    """Whether ``(x, y)`` satisfies ``c``, written from the contract's documented rules."""
    try:
        x = np.asarray(x)
    except ValueError:  # ragged
        return False
    if x.ndim == 0 or x.shape[0] == 0 or x.shape[1:] != c.shape or x.dtype != np.dtype(c.dtype):
        return False
    v = x.astype(np.float64)
    if c.finite and not (np.isfinite(v) & (np.abs(v) <= FLOAT32_MAX)).all():
        return False
    if c.range is not None and not ((v >= c.range[0]) & (v <= c.range[1]) | np.isnan(v)).all():
        return False
    if y is None:
        return True
    try:
        y = np.asarray(y)
    except ValueError:
        return False
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iuf":
        return False
    w = y.astype(np.float64)
    return bool((np.isfinite(w) & (w == np.round(w)) & np.isin(w, c.classes)).all())


def assert_report_is_plain(report: ContractReport, rows: int | None = None) -> None:
    """Every report is strict JSON, row ids point at input rows, and it reads as one message."""
    json.dumps(report.to_dict(), allow_nan=False)
    for v in report.violations:
        if v.rows is not None and rows is not None:
            assert ((0 <= v.rows) & (v.rows < rows)).all(), v
    if not report.ok:
        assert f"data contract {report.contract!r} violated" in str(ContractViolationError([report]))


def table_encoding_is_sound(df: pd.DataFrame, encoded: np.ndarray) -> None:
    """What a clean report lets through reaches the model as the contract promises."""
    assert encoded.dtype == np.float32 and encoded.shape == (len(df), len(TABLE.columns))
    for j, c in enumerate(TABLE.columns):
        col = encoded[:, j]
        nan = np.isnan(col)
        if c.numeric:
            assert c.nullable or not nan.any(), c.name
            v = col[~nan].astype(np.float64)
            assert np.isfinite(v).all(), c.name
            tol = 1e-6 * max(1.0, abs(c.min or 0), abs(c.max or 0))  # float32 rounding at the edges
            assert c.min is None or (v >= c.min - tol).all(), c.name
            assert c.max is None or (v <= c.max + tol).all(), c.name
            if c.dtype == "bool":
                assert np.isin(v, [0.0, 1.0]).all()
        else:
            assert not nan.any()
            assert np.isin(col, np.arange(-1 if c.nullable else 0, len(c.categories or ()))).all(), c.name


# ------------------------------------------------------------------------------ strategies

ANY_DTYPE = st.one_of(
    hnp.scalar_dtypes(),  # bool, ints, uints, floats, complex, datetime64, timedelta64
    hnp.floating_dtypes(endianness="?"),
    hnp.unicode_string_dtypes(max_len=3),
    hnp.byte_string_dtypes(max_len=3),
)
ANY_SHAPE = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=4), st.binary(max_size=3),
    st.complex_numbers(), st.datetimes(), st.sampled_from(["red", "1", "nan", "inf", "1e400", "", " 3 "]),
    st.just(np.float32(3.0)), st.just(pd.NA), st.lists(st.integers(), max_size=2),
)
any_arrays = st.one_of(
    ANY_DTYPE.flatmap(lambda d: hnp.arrays(d, ANY_SHAPE)),
    st.lists(SCALARS, max_size=8).map(lambda v: np.array(v + [None], dtype=object)[:-1]),  # object arrays
    st.recursive(st.floats(), lambda inner: st.lists(inner, max_size=3), max_leaves=8),  # ragged nested lists
)
BAD_VALUES = (np.nan, np.inf, -np.inf, -0.5, 16.5, 1e39, 1e300, -1e300, -0.0)


@st.composite
def near_valid_tensors(draw, c: TensorContract) -> tuple[np.ndarray, np.ndarray | None]:
    """Mostly-valid ``(x, y)`` for ``c``: right shape and dtype, values in range, with a few
    cells and labels replaced by bad values, and sometimes the wrong dtype."""
    n = draw(st.integers(1, 5))
    lo, hi = c.range if c.range is not None else (-1e6, 1e6)
    x = draw(hnp.arrays(np.float64, (n, *c.shape), elements=st.floats(lo, hi)))
    for _ in range(draw(st.integers(0, 2))):
        x[tuple(draw(st.integers(0, d - 1)) for d in x.shape)] = draw(st.sampled_from(BAD_VALUES))
    with np.errstate(over="ignore", invalid="ignore"):  # NaN/Inf/huge cast to int or float16
        x = x.astype(draw(st.sampled_from([c.dtype] * 4 + ["float16", "int64", "float64"])))
    y = None
    if draw(st.booleans()):
        y = np.array(draw(st.lists(st.sampled_from(c.classes), min_size=n, max_size=n)), dtype=np.int64)
        if draw(st.booleans()):
            y = y.astype(np.float64)
            y[draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.nan, 4.0, 3.5, -1.0, float(c.classes[0])]))
    return x, y


def _column_values(draw, c: Any, n: int) -> tuple[pd.Series, np.ndarray]:
    """A valid column for ``c`` in one of the forms data arrives in, and its expected encoding."""
    if c.dtype == "bool":
        vals = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        form = draw(st.sampled_from(["bool", "int"]))
        return pd.Series(vals if form == "bool" else [int(v) for v in vals]), np.array(vals, dtype=np.float32)
    if c.dtype == "category":
        cats = list(c.categories)
        idx = draw(st.lists(st.integers(-1 if c.nullable else 0, len(cats) - 1), min_size=n, max_size=n))
        vals = [None if i < 0 else (1 if cats[i] == "1" and draw(st.booleans()) else cats[i]) for i in idx]
        s = pd.Series(vals, dtype=object)
        if draw(st.booleans()) and all(v is None or isinstance(v, str) for v in vals):
            s = s.astype("category")
        return s, np.array(idx, dtype=np.float32)
    lo = c.min if c.min is not None else -(2.0**40)
    hi = c.max if c.max is not None else 2.0**40
    width = 32 if float(np.float32(lo)) == lo and float(np.float32(hi)) == hi else 64
    ints = c.dtype in ("int64", "int32")
    elem = st.integers(int(np.ceil(lo)), int(np.floor(hi))) if ints else st.floats(lo, hi, width=width)
    vals = draw(st.lists(st.one_of(elem, st.none()) if c.nullable else elem, min_size=n, max_size=n))
    expected = np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float32)
    form = draw(st.sampled_from(["native", "object", "text"]))
    if form == "text":  # numbers as text, as a CSV column with a stray word in it arrives
        return pd.Series([None if v is None else repr(v) for v in vals], dtype=object), expected
    return pd.Series(vals, dtype=object if form == "object" else None), expected


@st.composite
def valid_tables(draw, contract: TableContract = TABLE) -> tuple[pd.DataFrame, np.ndarray, list[str] | None]:
    """A frame that satisfies ``contract`` (any column order, label column or not), the features
    the model must receive (contract order) and the labels."""
    n = draw(st.integers(1, 6))
    columns, encoded = {}, []
    for c in contract.columns:
        columns[c.name], expected = _column_values(draw, c, n)
        encoded.append(expected)
    labels = None
    if draw(st.booleans()):
        labels = draw(st.lists(st.sampled_from(contract.classes), min_size=n, max_size=n))
        columns[contract.target] = pd.Series(labels, dtype=object)
    order = draw(st.permutations(list(columns)))
    return pd.DataFrame({k: columns[k] for k in order}), np.stack(encoded, axis=1), labels


# (mutation, column, row-level, rule): one thing wrong with an otherwise valid frame
MUTATIONS = [
    ("null", "age", True, "nullable"), ("null", "member", True, "nullable"),
    ("set:-0.5", "age", True, "range"), ("set:120.5", "age", True, "range"), ("set:3.0", UNICODE, True, "range"),
    ("set:inf", "visits", True, "finite"), ("set:1e300", "visits", True, "finite"), ("set:-inf", "age", True, "finite"),
    ("set:abc", "age", True, "dtype"), ("set:2.5", "visits", True, "dtype"), ("set:2", "member", True, "dtype"),
    ("set:purple", "colour", True, "categories"), ("set:maybe", "y", True, "classes"), ("null", "y", True, "nullable"),
    ("drop", "member", False, "missing-columns"), ("extra", "ünknown ✗", False, "extra-columns"),
    ("duplicate", "age", False, "duplicate-columns"), ("lookalike", "age", False, "missing-columns"),
]


def _mutate(df: pd.DataFrame, mutation: str, column: str, row: int) -> pd.DataFrame:
    df = df.copy()
    if mutation == "drop":
        return df.drop(columns=[column])
    if mutation == "extra":
        df[column] = 1.0
        return df
    if mutation == "duplicate":
        return pd.concat([df, df[[column]]], axis=1)
    if mutation == "lookalike":  # a Cyrillic 'а' where the contract has a Latin 'a'
        return df.rename(columns={column: "\u0430" + column[1:]})
    value: Any = None if mutation == "null" else mutation.split(":", 1)[1]
    if value is not None:
        try:
            value = float(value)
        except ValueError:
            pass
    df[column] = df[column].astype(object)
    df.iloc[row, df.columns.get_loc(column)] = value
    return df


@st.composite
def any_tables(draw) -> pd.DataFrame:
    """Frames with any columns: contract names, unicode and integer names, any dtypes and values."""
    n = draw(st.integers(0, 5))
    names = st.one_of(st.sampled_from([*COLUMNS, "y"]), st.text(max_size=5), st.integers(-2, 2))
    data = []
    for name in draw(st.lists(names, max_size=7)):
        kind = draw(st.sampled_from(["object", "float", "int", "bool", "category", "string"]))
        if kind == "object":
            s = pd.Series(draw(st.lists(SCALARS, min_size=n, max_size=n)), dtype=object)
        elif kind == "float":
            s = pd.Series(draw(st.lists(st.floats(), min_size=n, max_size=n)), dtype="float64")
        elif kind == "int":
            s = pd.Series(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), dtype="int64")
        elif kind == "bool":
            s = pd.Series(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype="bool")
        elif kind == "category":
            s = pd.Series(draw(st.lists(st.sampled_from(["red", "green", "blue", None]), min_size=n, max_size=n)),
                          dtype="category")
        else:
            s = pd.Series(draw(st.lists(st.text(max_size=3), min_size=n, max_size=n)), dtype="string")
        data.append((name, s))
    df = pd.concat([s.rename(i) for i, (_, s) in enumerate(data)], axis=1) if data else pd.DataFrame(index=range(n))
    df.columns = [name for name, _ in data]  # duplicates allowed
    if n and draw(st.booleans()):  # an index that is not 0..n-1: labels, repeats
        df.index = draw(st.one_of(st.lists(st.integers(-3, 3), min_size=n, max_size=n),
                                  st.lists(st.text(max_size=2), min_size=n, max_size=n)))
    return df


# ------------------------------------------------------------------------------ contract specs and tensor contracts

@PROFILE
@given(c=st.sampled_from(TENSORS), x=any_arrays, y=st.one_of(st.none(), any_arrays))
def test_tensor_check_answers_any_input_with_a_report(c, x, y):
    report = c.check(x, y, "random")
    assert report.ok == tensor_ok(c, x, y)
    assert_report_is_plain(report, report.rows)


@PROFILE
@given(data=st.data(), c=st.sampled_from(TENSORS))
def test_tensor_check_is_exact_and_dropping_repairs(data, c):
    x, y = data.draw(near_valid_tensors(c))
    report = c.check(x, y, "train")
    assert report.ok == tensor_ok(c, x, y)
    assert_report_is_plain(report, len(x))
    if report.ok and y is not None:  # labels map to logits and back
        assert np.array_equal(np.asarray(c.classes)[c.encode_labels(y)], y)
    if not report.ok and report.droppable:  # on_violation=drop leaves a split that satisfies the contract
        keep = np.setdiff1d(np.arange(len(x)), report.failing_rows())
        assume(keep.size)
        assert c.check(x[keep], None if y is None else y[keep], "train").ok


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
SPEC_KEYS = ("kind", "name", "shape", "dtype", "classes", "range", "finite", "target", "columns", "class_names")
COLUMN_KEYS = ("dtype", "nullable", "min", "max", "categories", "unit")


@st.composite
def contract_specs(draw) -> dict[str, Any]:
    """A real contract spec (tensor or table) with a few keys replaced by any JSON-like value."""
    spec = json.loads(json.dumps(draw(st.sampled_from([TENSOR.to_dict(), TABLE.to_dict()]))))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(SPEC_KEYS) | st.text(max_size=3))
        if draw(st.booleans()):
            spec[key] = draw(JSONISH)
        else:
            spec.pop(key, None)
    columns = spec.get("columns")
    if isinstance(columns, dict) and columns and draw(st.booleans()):
        name = draw(st.sampled_from(sorted(columns)))
        columns[name] = draw(st.dictionaries(st.sampled_from(COLUMN_KEYS), JSONISH, max_size=4) | JSONISH)
    return spec


@PROFILE
@given(spec=contract_specs())
def test_a_contract_spec_builds_or_names_what_is_wrong(spec):
    from keel.data.contract import ContractError, contract_from_dict

    try:
        contract = contract_from_dict(spec)
    except ContractError as e:
        assert str(e).startswith("invalid") and "data contract" in str(e) or "table contract" in str(e)
        return
    assert contract_from_dict(contract.to_dict()) == contract  # what is stored rebuilds the same contract
    assert len(contract.fingerprint()) == 64


# ------------------------------------------------------------------------------ table contracts

@PROFILE
@given(df=any_tables(), with_target=st.booleans())
def test_table_check_answers_any_frame_with_a_report(df, with_target):
    report = TABLE.check(df, "random", with_target=with_target)
    assert_report_is_plain(report)
    names = [str(c) for c in df.columns]
    if report.ok:  # clean: exactly the contract's columns, once each, and values it allows
        assert sorted(names) == sorted([*COLUMNS, *(["y"] if with_target else [])])
        table_encoding_is_sound(df, TABLE.encode_features(df))


@PROFILE
@given(table=valid_tables())
def test_valid_tables_pass_and_encode_in_contract_order(table):
    df, expected, labels = table
    report = TABLE.check(df, "train", with_target=labels is not None)
    assert report.ok, [v.describe() for v in report.violations]
    np.testing.assert_array_equal(TABLE.encode_features(df), expected)
    if labels is not None:
        assert [TABLE.classes[i] for i in TABLE.encode_labels(df["y"])] == labels


@PROFILE
@given(table=valid_tables(), mutation=st.sampled_from(MUTATIONS), data=st.data())
def test_one_wrong_thing_is_caught_and_named(table, mutation, data):
    df, _, labels = table
    kind, column, row_level, rule = mutation
    assume(column != "y" or labels is not None)
    row = data.draw(st.integers(0, len(df) - 1))
    bad = _mutate(df, kind, column, row)
    report = TABLE.check(bad, "train", with_target=labels is not None)
    assert not report.ok
    assert_report_is_plain(report, len(bad))
    hits = [v for v in report.violations if v.rule == rule]
    assert hits, [v.describe() for v in report.violations]
    feature = "label" if column == "y" else column
    assert any(feature in v.feature for v in hits), [v.describe() for v in hits]
    if row_level:
        assert row in report.failing_rows()
        keep = bad.drop(index=report.failing_rows())
        assume(len(keep))
        assert TABLE.check(keep, "train", with_target=labels is not None).ok


def test_an_empty_table_and_a_non_table_are_reports_not_crashes():
    empty = TABLE.check(pd.DataFrame(columns=list(COLUMNS)), "val", with_target=False)
    assert [v.rule for v in empty.violations] == ["non-empty"]
    array = TABLE.check(np.zeros((2, 5)), "val", with_target=False)
    assert [v.describe() for v in array.violations] == [
        "type: table (expected a table (pandas DataFrame), got ndarray)"
    ]


# ------------------------------------------------------------------------------ predict

def _linear_onnx(path: Path, shape: tuple[int, ...], classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A linear classifier over the flattened input (NaN read as 0), outputs ``logits`` and
    ``probabilities`` with a dynamic batch axis, as keel's exported models have. Returns (W, b)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(int(np.prod(shape)), classes)).astype(np.float32)
    b = rng.normal(size=classes).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("IsNaN", ["flat"], ["missing"]),
        helper.make_node("Where", ["missing", "zero", "flat"], ["filled"]),
        helper.make_node("Gemm", ["filled", "W", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", classes]) for name in ("logits", "probabilities")],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b"),
                     numpy_helper.from_array(np.zeros(1, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return w, b


def _bundle(root: Path, contract: Any, seed: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """A bundle as export writes it (model, samples, manifest with sha256 of every file)."""
    from keel.export.bundle import write_manifest
    from keel.export.runtime import run, session

    root.mkdir()
    w, b = _linear_onnx(root / "model.onnx", contract.shape, contract.num_classes, seed)
    (root / "samples").mkdir()
    x = np.zeros((2, *contract.shape), np.float32)
    logits, probs = run(session(root / "model.onnx"), x)
    for name, arr in (("input", x), ("logits", logits), ("probabilities", probs)):
        np.save(root / "samples" / f"{name}.npy", arr)
    write_manifest(root, {
        "models": {"fp32": "model.onnx", "int8": None},
        "io": {"inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", *contract.shape]}],
               "outputs": [{"name": n, "dtype": "float32", "shape": ["batch", contract.num_classes]}
                           for n in ("logits", "probabilities")]},
        "classes": list(contract.classes), "class_names": contract.class_names,
        "data": {"contract": contract.to_dict(), "reference": None},
        "samples": {"input": "samples/input.npy", "logits": "samples/logits.npy",
                    "probabilities": "samples/probabilities.npy"},
        "quantization": None,
    })
    return root, w, b


class Served:
    """A loaded toy bundle and the weights that recompute its predictions."""

    def __init__(self, root: Path, bundle: Any, w: np.ndarray, b: np.ndarray) -> None:
        self.root, self.bundle, self.w, self.b = root, bundle, w, b

    def __repr__(self) -> str:  # hypothesis prints the fixture with every failing example
        return f"Served({self.root.name})"

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The model's probabilities for encoded input ``x``, in float64 numpy."""
        z = np.nan_to_num(x.reshape(len(x), -1).astype(np.float64)) @ self.w + self.b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Served]:
    from keel.serve.bundle import load_bundle, verify_bundle

    out = {}
    for key, contract, seed in (("tensor", TENSOR, 0), ("table", TABLE, 1)):
        root, w, b = _bundle(tmp_path_factory.mktemp("bundles") / key, contract, seed)
        assert verify_bundle(root) == []  # a well-formed bundle by keel's own check
        out[key] = Served(root, load_bundle(root), w, b)
    return out


def _assert_valid_prediction(index: np.ndarray, probs: np.ndarray, rows: int, expected: np.ndarray) -> None:
    assert probs.shape == (rows, expected.shape[1]) and index.shape == (rows,)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(index, probs.argmax(axis=1))
    np.testing.assert_allclose(probs, expected, atol=1e-4)


@PROFILE
@given(x=st.one_of(any_arrays, near_valid_tensors(TENSOR).map(lambda xy: xy[0]),
                   near_valid_tensors(TENSOR).map(lambda xy: xy[0][0])))  # single samples too
def test_tensor_predict_is_a_valid_prediction_or_a_contract_error(bundles, x):
    served = bundles["tensor"]
    try:
        batch = np.asarray(x)
        batch = batch[None] if batch.ndim == len(TENSOR.shape) else batch
    except (ValueError, TypeError):  # ragged
        batch = None
    try:
        _, probs = served.bundle.predict(x, "random")  # (logits, probabilities)
        index = probs.argmax(axis=1)
    except ContractViolationError as e:
        assert batch is None or not tensor_ok(TENSOR, batch, None)
        assert "data contract 'grid' violated in random" in str(e)
        return
    assert batch is not None and tensor_ok(TENSOR, batch, None), "predicted for input that breaks the contract"
    _assert_valid_prediction(index, probs, len(batch), served.reference(batch))


def _table_outcome(bundle: Any, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """predict's answer, or None for a refusal with a keel error (the documented outcomes)."""
    from keel.export.bundle import BundleError

    try:
        _, probs = bundle.predict(df, "random.csv")  # (logits, probabilities)
        return probs.argmax(axis=1), probs
    except ContractViolationError as e:
        assert "data contract 'people' violated in random.csv" in str(e)
    except BundleError as e:  # no rows to predict
        assert len(df) == 0, e
    return None


@PROFILE
@given(table=valid_tables(), mutation=st.one_of(st.none(), st.sampled_from(MUTATIONS)), data=st.data())
def test_table_predict_answers_in_contract_order_or_refuses(bundles, table, mutation, data):
    served = bundles["table"]
    df, expected, labels = table
    if labels is not None:  # serving input carries no label column
        df = df.drop(columns=["y"])
    if mutation is not None and mutation[1] != "y":
        df = _mutate(df, mutation[0], mutation[1], data.draw(st.integers(0, len(df) - 1)))
    outcome = _table_outcome(served.bundle, df)
    if mutation is None or mutation[1] == "y":
        assert outcome is not None, "a valid frame was refused"
        _assert_valid_prediction(*outcome, len(df), served.reference(expected))
    else:
        assert outcome is None, "predicted for a frame that breaks the contract"


@PROFILE
@given(df=any_tables())
def test_table_predict_on_any_frame_never_crashes(bundles, df):
    served = bundles["table"]
    outcome = _table_outcome(served.bundle, df)
    clean = TABLE.check(df, "random", with_target=False).ok
    assert (outcome is not None) == clean
    if outcome is not None:
        _assert_valid_prediction(*outcome, len(df), served.reference(TABLE.encode_features(df)))


def _keel(*args: str) -> tuple[int, str, str]:
    """``keel ARGS`` in-process: (exit status, stdout, stderr)."""
    from keel.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


@PROFILE
@given(table=valid_tables(), mutation=st.one_of(st.none(), st.sampled_from(MUTATIONS)), data=st.data())
def test_keel_predict_on_a_csv_predicts_exactly_when_the_file_is_valid(bundles, tmp_path_factory, table, mutation,
                                                                      data):
    from keel.data.table_io import read_table

    root = bundles["table"].root
    df, _, labels = table
    if labels is not None:
        df = df.drop(columns=["y"])
    if mutation is not None and mutation[1] != "y":
        df = _mutate(df, mutation[0], mutation[1], data.draw(st.integers(0, len(df) - 1)))
    path = tmp_path_factory.mktemp("csv") / "in.csv"
    df.to_csv(path, index=False)
    rc, out, err = _keel("predict", str(root), str(path))
    clean = TABLE.check(read_table(path), "in.csv", with_target=False).ok
    assert rc == (0 if clean else 2), err
    if mutation is None or mutation[1] == "y":
        assert rc == 0, f"a valid frame was refused after a CSV round trip: {err}"
    if rc == 2:
        assert err.startswith("error: ") and "Traceback" not in err and out == ""
    else:
        rows = [line.split(",") for line in out.splitlines()[1:]]
        assert len(rows) == len(df) and {r[1] for r in rows} <= {"no", "yes"}
        assert all(abs(sum(map(float, r[3:])) - 1) < 1e-4 for r in rows)


@PROFILE
@given(x=st.one_of(any_arrays.filter(lambda a: isinstance(a, np.ndarray)),
                   near_valid_tensors(TENSOR).map(lambda xy: xy[0])))
def test_keel_predict_on_any_npy_exits_0_with_predictions_or_2_with_one_message(bundles, tmp_path_factory, x):
    root = bundles["tensor"].root
    path = tmp_path_factory.mktemp("npy") / "in.npy"
    np.save(path, x, allow_pickle=True)  # object arrays too: keel must refuse to unpickle them
    rc, out, err = _keel("predict", str(root), str(path))
    batch = x[None] if x.ndim == len(TENSOR.shape) else x
    assert rc == (0 if tensor_ok(TENSOR, batch, None) else 2), err
    if rc == 2:
        assert err.startswith("error: ") and "Traceback" not in err and out == ""
    else:
        assert len(out.splitlines()) == 1 + len(batch)


# ------------------------------------------------------------------------------ untrusted bundles

def test_a_tampered_bundle_is_refused_before_anything_is_served(bundles, tmp_path):
    from keel.export.bundle import BundleError
    from keel.serve.bundle import load_bundle

    changed = tmp_path / "changed"
    shutil.copytree(bundles["tensor"].root, changed)
    model = bytearray((changed / "model.onnx").read_bytes())
    model[-1] ^= 1
    (changed / "model.onnx").write_bytes(bytes(model))
    with pytest.raises(BundleError, match=r"refusing to serve a bundle that fails its checks: model.onnx: sha256 "
                                          r"differs from the manifest"):
        load_bundle(changed)
    np.save(tmp_path / "x.npy", np.zeros((1, *TENSOR.shape), np.float32))
    rc, out, err = _keel("predict", str(changed), str(tmp_path / "x.npy"))
    assert rc == 2 and out == "" and "refusing to serve" in err

    escaping = tmp_path / "escaping"
    shutil.copytree(bundles["tensor"].root, escaping)
    manifest = json.loads((escaping / "manifest.json").read_text())
    manifest["models"]["fp32"] = "../changed/model.onnx"  # the hashes still match: only the path is wrong
    (escaping / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="points outside the bundle directory"):
        load_bundle(escaping).predict(np.zeros((1, *TENSOR.shape), np.float32))


# ------------------------------------------------------------------------------ a real bundle

@pytest.fixture(scope="module")
def real_table_bundle(tmp_path_factory) -> Any:
    """A bundle trained and exported by ``train.py`` (one short epoch) on a table with a nullable
    number, a nullable category and an integer column: the real graph imputes, one-hot encodes
    and standardizes inside."""
    import subprocess
    import sys

    from keel.serve.bundle import load_bundle

    root = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    n = 240
    frame = pd.DataFrame({
        "income": np.where(rng.random(n) < 0.1, np.nan, rng.normal(50.0, 10.0, n).round(2)),
        "colour": np.where(rng.random(n) < 0.1, None, rng.choice(["red", "green", "blue"], n)),
        "visits": rng.integers(0, 20, n),
    })
    frame["label"] = np.where(frame["visits"] + (frame["colour"] == "red") * 5 > 12, "yes", "no")
    frame.to_csv(root / "people.csv", index=False)
    cmd = [sys.executable, "train.py", "data=csv", f"data.path={root / 'people.csv'}", "data.target=label",
           "debug=fast", "logger=none", "~callbacks.quantize", "callbacks.progress_bar.refresh_rate=0",
           f"paths.log_dir={root / 'runs'}"]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (bundle,) = (root / "runs").rglob("bundle")
    return load_bundle(bundle)


@pytest.mark.integration
@PROFILE
@given(data=st.data())
def test_a_real_bundle_answers_valid_rows_alike_in_any_batch_and_column_order(real_table_bundle, data):
    bundle = real_table_bundle
    df, _, labels = data.draw(valid_tables(bundle.contract))
    if labels is not None:
        df = df.drop(columns=[bundle.contract.target])
    logits, probs = bundle.predict(df, "rows")
    index = logits.argmax(axis=1)
    k = bundle.contract.num_classes
    assert probs.shape == (len(df), k) and np.isfinite(probs).all(), "missing values must be imputed in the graph"
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5) and np.array_equal(index, probs.argmax(axis=1))
    one_by_one = np.concatenate([bundle.predict(df.iloc[[i]], "row")[1] for i in range(len(df))])
    np.testing.assert_allclose(one_by_one, probs, atol=1e-5)  # no batch statistics at inference
    np.testing.assert_allclose(bundle.predict(df[df.columns[::-1]], "rows")[1], probs, atol=1e-6)
