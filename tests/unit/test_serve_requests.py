"""keel.serve.requests: request bodies -> rows, checked by the same code as `keel predict` (no server)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from keel.data.contract import ContractViolationError, TensorContract
from keel.data.table_contract import TableContract
from keel.serve.bundle import LabelledFile
from keel.serve.requests import RequestError, body_kind, check_length, json_array, on_invalid_mode, parse

TABLE = TableContract.from_dict({
    "kind": "table", "name": "t", "target": "label", "classes": [0, 1],
    "columns": {"age": {"dtype": "float64", "nullable": False, "min": 0, "max": 120},
                "color": {"dtype": "category", "nullable": True, "categories": ["red", "green"]}},
})
TENSOR = TensorContract.from_dict({"kind": "tensor", "name": "px", "shape": [2, 2], "dtype": "float32",
                                   "range": [0.0, 16.0], "classes": [0, 1]})


@pytest.fixture
def table():
    return LabelledFile(TABLE)


@pytest.fixture
def tensor():
    return LabelledFile(TENSOR)


def _json(doc) -> bytes:
    return json.dumps(doc).encode()


def test_content_types_and_query_values():
    assert body_kind("application/json; charset=utf-8") == "json"
    assert body_kind("text/csv") == "csv" and body_kind("application/x-npy") == "npy"
    assert body_kind("application/vnd.apache.parquet") == "parquet"
    with pytest.raises(RequestError, match="Content-Type text/plain: expected one of") as e:
        body_kind("text/plain")
    assert e.value.status == 415
    with pytest.raises(RequestError, match="Content-Type none"):
        body_kind(None)
    assert on_invalid_mode(None) == "fail" and on_invalid_mode("skip") == "skip"
    with pytest.raises(RequestError, match="on_invalid='drop': expected fail or skip"):
        on_invalid_mode("drop")


def test_content_length_is_checked_before_reading():
    check_length(None, 10)
    check_length("10", 10)
    with pytest.raises(RequestError, match="larger than the server's limit of 10 bytes") as e:
        check_length("11", 10)
    assert e.value.status == 413
    with pytest.raises(RequestError, match="Content-Length 'x1': not a number") as e:
        check_length("x1", 10)
    assert e.value.status == 400


def test_json_rows_give_the_report_a_dataframe_of_them_gets(table):
    rows = [{"age": 30, "color": "red", "label": 1, "id": "a"}, {"age": 300, "color": "blue", "id": "b"},
            {"color": None, "id": "c"}]
    parsed = parse(table, "json", _json({"rows": rows}), keep=("id",))
    assert parsed.source == "request.json" and parsed.rows.n == 3
    assert parsed.rows.carried == {"id": ["a", "b", "c"]} and list(parsed.rows.data.columns) == ["age", "color"]
    with pytest.raises(ContractViolationError) as e:
        table.encode_rows(parsed.rows, parsed.source)
    lines = [v.describe() for v in e.value.reports[0].violations]
    assert lines == ["nullable on age: 1 of 3 rows fail (missing value (NaN/empty) in a non-nullable column); "
                     "e.g. row 2: NaN",
                     "range on age: 1 of 3 rows fail (allowed [0, 120]); e.g. row 1: 300.0",
                     "categories on color: 1 of 3 rows fail (allowed ['red', 'green']); e.g. row 1: blue"]
    enc = table.encode_rows(parsed.rows, parsed.source, on_invalid="skip")
    assert enc.rows.tolist() == [0] and enc.invalid == {1: ["range on age", "categories on color"],
                                                        2: ["nullable on age"]}
    assert enc.report is not None and len(enc.report.violations) == 3
    np.testing.assert_array_equal(enc.x, np.array([[30.0, 0.0]], np.float32))


def test_json_rows_missing_a_column_fail_whole_even_with_skip(table):
    parsed = parse(table, "json", _json({"rows": [{"age": 3}, {"age": 4}]}))
    with pytest.raises(ContractViolationError, match=r"missing-columns: color"):
        table.encode_rows(parsed.rows, parsed.source, on_invalid="skip")


def test_csv_body_is_read_as_keel_predict_reads_the_file(table, tmp_path):
    text = "age,color,label\n30,red,0\n-1,green,1\n"
    parsed = parse(table, "csv", text.encode())
    (tmp_path / "request.csv").write_text(text)
    from_file = table.read_rows(tmp_path / "request.csv")
    assert type(parsed.rows.data) is type(from_file.data)  # the pandas-free CsvTable path, as keel predict
    with pytest.raises(ContractViolationError) as a:
        table.encode_rows(parsed.rows, parsed.source)
    with pytest.raises(ContractViolationError) as b:
        table.encode_rows(from_file, "request.csv")
    assert str(a.value) == str(b.value) and "range on age: 1 of 2 rows fail" in str(a.value)


def test_malformed_and_misdirected_bodies(table, tensor):
    cases = [
        (table, "json", b"{not json", 400, "not valid JSON"),
        (table, "json", b"", 400, "empty request body"),
        (table, "json", _json([1, 2]), 400, r"expected a JSON object \{\"rows\""),
        (table, "json", _json({"inputs": [[1]]}), 400, r"\"inputs\" is for tensor bundles"),
        (table, "json", _json({"rows": []}), 400, "must be a non-empty list"),
        (table, "json", _json({"rows": [1, {"age": 2}]}), 400, r"rows \[0\] are not JSON objects"),
        (table, "json", _json({"rows": [{"age": 1}], "x": 1}), 400, r"unknown keys \['x'\]"),
        (table, "npy", b"\x93NUMPY...", 415, "this bundle serves a table"),
        (tensor, "csv", b"a\n1\n", 415, "this bundle serves tensors"),
        (tensor, "npy", b"not an npy", 400, "request.npy: not a readable .npy array"),
        (tensor, "json", _json({"rows": [{"a": 1}]}), 400, r"\"rows\" is for table bundles"),
        (table, "csv", b"\xff\xfe\x00garbage", 400, "request.csv: not a readable CSV file"),
    ]
    for bundle, kind, body, status, match in cases:
        with pytest.raises(RequestError, match=match) as e:
            parse(bundle, kind, body)
        assert e.value.status == status, (kind, body, e.value)


def test_json_inputs_take_the_contract_dtype_when_the_numbers_fit(tensor):
    ok = parse(tensor, "json", _json({"inputs": [[[1, 2], [3, 4]], [[0.5, 0], [0, 16]]]}))
    enc = tensor.encode_rows(ok.rows, ok.source)
    assert enc.x.dtype == np.float32 and enc.x.shape == (2, 2, 2) and enc.rows.tolist() == [0, 1]
    one = parse(tensor, "json", _json({"inputs": [[1, 2], [3, 4]]}))  # a single sample
    assert tensor.encode_rows(one.rows, one.source).x.shape == (1, 2, 2)
    # too large for float32: kept as float64, so the check names both problems
    big = parse(tensor, "json", _json({"inputs": [[[1e39, 0], [0, 0]]]}))
    with pytest.raises(ContractViolationError, match=r"dtype on x: .*float64, expected float32") as e:
        tensor.encode_rows(big.rows, big.source)
    assert "beyond the float32 range" in str(e.value)
    ragged = parse(tensor, "json", _json({"inputs": [[[1, 2], [3]], [[1, 2], [3, 4]]]}))
    with pytest.raises(ContractViolationError, match="nested sequences of different lengths"):
        tensor.encode_rows(ragged.rows, ragged.source)
    assert json_array([[True, False]], "float32").dtype == bool  # booleans are not numbers here
    assert json_array([[1.0, 2.0]], "int64").dtype == np.int64 and json_array([[1.5]], "int64").dtype == np.float64


def test_skip_with_no_valid_row_left_is_a_violation(tensor):
    nan = parse(tensor, "json", b'{"inputs": [[[NaN, 1], [2, 3]], [[1, 1], [20, 3]]]}')
    with pytest.raises(ContractViolationError, match="finite on x: 1 of 2 rows fail"):
        tensor.encode_rows(nan.rows, nan.source, on_invalid="skip")


def test_npy_body_is_loaded_without_pickles(tensor):
    buf = io.BytesIO()
    np.save(buf, np.ones((3, 2, 2), np.float32))
    parsed = parse(tensor, "npy", buf.getvalue())
    assert parsed.rows.n == 3 and tensor.encode_rows(parsed.rows, parsed.source).x.shape == (3, 2, 2)
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(RequestError, match="not a readable .npy array") as e:
        parse(tensor, "npy", buf.getvalue())
    assert e.value.status == 400


RECORD_SETS = [
    [{"age": 30, "color": "red"}, {"age": 41.5, "color": "green"}],
    [{"age": 30, "color": "red"}, {"age": None, "color": None}, {"color": "blue"}],
    [{"age": -1, "color": "red", "label": 1}, {"age": 500, "color": "red", "extra": 3}],
    [{"age": 1e39, "color": "green"}, {"age": float("inf"), "color": "red"}, {"age": 3, "color": "RED"}],
    [{"age": 2**40, "color": "red"}],
    [{"color": "red"}],
]


@pytest.mark.parametrize("records", RECORD_SETS, ids=range(len(RECORD_SETS)))
def test_plain_json_rows_take_the_pandas_free_check_with_the_report_of_the_dataframe_path(table, records):
    import pandas as pd

    from keel.serve.table import CsvTable, check_table, encode_table

    parsed = parse(table, "json", json.dumps({"rows": records}).encode())
    assert isinstance(parsed.rows.data, CsvTable)
    fast = check_table(TABLE, parsed.rows.data, "request.json")
    df = pd.DataFrame.from_records(records)
    df = df.drop(columns=[c for c in ("label",) if c in df.columns])
    slow = TABLE.check(df, "request.json", with_target=False)
    assert fast.to_dict() == slow.to_dict()
    assert [None if v.rows is None else v.rows.tolist() for v in fast.violations] == \
        [None if v.rows is None else v.rows.tolist() for v in slow.violations]
    if fast.ok:
        np.testing.assert_array_equal(encode_table(TABLE, parsed.rows.data), TABLE.encode_features(df))


@pytest.mark.parametrize("records", [
    [{"age": True, "color": "red"}],          # a boolean in a numeric column
    [{"age": "30", "color": "red"}],          # a string in a numeric column
    [{"age": 3, "color": 1}],                 # a number in a category column
    [{"age": 3, "color": None}],              # a category column with nothing in it
    [{"age": 2**70, "color": "red"}],         # beyond int64
    [{"age": [1, 2], "color": "red"}],        # not a scalar
], ids=["bool", "str-number", "int-category", "all-missing", "huge-int", "list"])
def test_other_json_rows_go_to_pandas_and_get_its_report(table, records):
    import pandas as pd

    parsed = parse(table, "json", json.dumps({"rows": records}).encode())
    assert isinstance(parsed.rows.data, pd.DataFrame)
    expected = TABLE.check(parsed.rows.data, "request.json", with_target=False)
    try:  # a prediction or the DataFrame's own report, never another error
        table.encode_rows(parsed.rows, parsed.source)
        assert expected.ok
    except ContractViolationError as e:
        assert e.reports[0].to_dict() == expected.to_dict()
