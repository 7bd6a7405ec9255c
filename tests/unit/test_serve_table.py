"""keel.serve.table (CSV + contract check without pandas) agrees with read_table + TableContract.check.

`keel predict` reads plain CSV files with keel.serve.table and everything else with pandas and
pandera; what it prints or refuses must not depend on which path ran. The property test
writes random CSV files (NaN/Inf, out-of-range, whole/fractional numbers in int columns,
unknown categories, missing and extra columns, quoting, numbers pandas cannot tell from text)
and, whenever the pandas-free reader takes a file, requires the same report (every violation,
its rows and examples) and the same encoded input as the pandas path.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.data.table_contract import TableContract
from keel.data.table_io import TableReadError, read_table
from keel.serve.table import NA_TOKENS, check_table, encode_table, read_csv

NUMERIC = ("float64", "int64", "int32", "bool")
NUMBER_TOKENS = ("0", "1", "2", "7", "-3", "12", "+4", "007", "1.5", "2.0", "-0.0", ".5", "3.", "1e2", "2.5E-1",
                 "0.30000000000000004", "123456789012345678", "1e39", "-1e400", "3.4028234663852886e38")
NA_SAMPLE = ("", "NA", "nan", "None", "N/A", "null")
# pandas reads these as text, booleans or specials: the pandas-free reader must leave the file to pandas
AMBIGUOUS = ("abc", "inf", "-Infinity", "True", "false", " 1", "1 ", "NAN", "1_000", "0x10", "1,5", 'a"b')
CATEGORY_POOL = ("x", "y", "zz", "Ä", "x y", "-", "e5", "a,b", "l\nm", "c\rd", "tab\there")


def _contract(columns: dict[str, dict]) -> TableContract:
    return TableContract.from_dict({"kind": "table", "name": "t", "target": "label", "classes": [0, 1],
                                    "columns": columns})


@st.composite
def column_specs(draw: st.DrawFn) -> dict:
    dtype = draw(st.sampled_from((*NUMERIC, "category", "category")))
    nullable = draw(st.booleans())
    if dtype == "category":
        cats = draw(st.lists(st.sampled_from(CATEGORY_POOL), min_size=1, max_size=4, unique=True))
        return {"dtype": dtype, "nullable": nullable, "categories": cats}
    lo = draw(st.one_of(st.none(), st.sampled_from((-1, 0, 0.5, 1))))
    hi = draw(st.one_of(st.none(), st.sampled_from((1, 5, 10, 1e38))))
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    return {"dtype": dtype, "nullable": nullable, "min": lo, "max": hi}


def _satisfies(value: float, spec: dict) -> bool:
    lo = -np.inf if spec["min"] is None else spec["min"]
    hi = np.inf if spec["max"] is None else spec["max"]
    if not (lo <= value <= hi and abs(value) < 3e38):
        return False
    if spec["dtype"] in ("int64", "int32"):
        return value == round(value)
    return spec["dtype"] != "bool" or value in (0, 1)


def _tokens(spec: dict, mode: str) -> st.SearchStrategy[str]:
    """Tokens for one column: ``valid`` ones satisfy the spec, ``loose`` ones may break it,
    ``ambiguous`` ones may also be read by pandas as text, booleans or specials."""
    missing = st.sampled_from(NA_SAMPLE)
    if spec["dtype"] == "category":
        valid = st.sampled_from(spec["categories"])
        loose = st.one_of(valid, valid, valid, st.sampled_from(("q", "X", *CATEGORY_POOL)), missing)
        odd = st.sampled_from(("1", "2.0", "true", " x", "NaN", "inf"))
    else:
        ok = [t for t in NUMBER_TOKENS if _satisfies(float(t), spec)]
        valid = st.sampled_from(ok) if ok else missing
        loose = st.one_of(valid, valid, st.sampled_from(NUMBER_TOKENS), st.sampled_from(NUMBER_TOKENS), missing)
        odd = st.sampled_from(AMBIGUOUS)
    if mode == "valid":
        return st.one_of(valid, valid, valid, missing) if spec["nullable"] else valid
    return st.one_of(loose, odd) if mode == "ambiguous" else loose


@st.composite
def csv_cases(draw: st.DrawFn) -> tuple[dict, list[str], list[list[str]], str, bool, str]:
    names = draw(st.lists(st.sampled_from(("a", "b", "c d", "NA", "Ω")), min_size=1, max_size=4, unique=True))
    specs = {name: draw(column_specs()) for name in names}
    # a third of the files satisfy the contract (their encodings are compared too), a third may
    # break it, a third also hold tokens pandas reads as text, booleans or specials (or reads
    # otherwise than the csv module): the pandas-free reader must leave those to pandas
    mode = draw(st.sampled_from(("valid", "loose", "ambiguous")))
    present = [n for n in names if mode == "valid" or draw(st.integers(0, 9)) > 0]  # ~1 in 10 missing
    extra = [] if mode == "valid" else draw(st.lists(st.sampled_from(("label", "extra", "x2")), max_size=2,
                                                      unique=True))
    header = draw(st.permutations(present + extra))
    other = st.sampled_from(("1", "z", "", " w ") if mode == "ambiguous" else ("1", "z", ""))
    rows = [[draw(_tokens(specs[h], mode)) if h in specs else draw(other) for h in header]
            for _ in range(draw(st.integers(1, 8)))]
    suffix = draw(st.sampled_from((".csv", ".csv", ".tsv", ".txt")))
    quote_all = draw(st.booleans())
    newline = draw(st.sampled_from(("\n", "\r\n")))
    return specs, header, rows, suffix, quote_all, newline


def _write(path: Path, header: list[str], rows: list[list[str]], quote_all: bool, newline: str = "\n") -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t" if path.suffix == ".tsv" else ",", lineterminator=newline,
                        quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def _both(contract: TableContract, path: Path):
    """(pandas-path report, encoded or None), (pandas-free report, encoded or None), or None for
    the pandas-free side when its reader leaves the file to pandas (None for both when pandas
    cannot read the file; the pandas-free reader must not take it then)."""
    try:
        df = read_table(path)
    except TableReadError:
        assert read_csv(path, contract) is None
        return None, None
    slow = contract.check(df, path.name, with_target=False)
    slow_x = contract.encode_features(df) if slow.ok else None
    table = read_csv(path, contract)
    if table is None:
        return (slow, slow_x), None
    fast = check_table(contract, table, path.name)
    return (slow, slow_x), (fast, encode_table(contract, table) if fast.ok else None)


def _assert_same(slow, fast) -> None:
    (r1, x1), (r2, x2) = slow, fast
    assert r2.to_dict() == r1.to_dict()
    assert [v.describe() for v in r2.violations] == [v.describe() for v in r1.violations]
    for a, b in zip(r1.violations, r2.violations):
        assert (a.rows is None) == (b.rows is None)
        if a.rows is not None:
            assert np.array_equal(a.rows, b.rows) and b.rows.dtype == np.int64
    if x1 is not None:
        assert x2.dtype == x1.dtype == np.float32 and np.array_equal(x1, x2, equal_nan=True)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csv_cases())
def test_pandas_free_path_reports_and_encodes_what_pandas_and_pandera_do(case):
    specs, header, rows, suffix, quote_all, newline = case
    contract = _contract(specs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"in{suffix}"
        _write(path, header, rows, quote_all, newline)
        slow, fast = _both(contract, path)
        if fast is not None:
            _assert_same(slow, fast)


SPEC = {
    "age": {"dtype": "int64", "nullable": False, "min": 0, "max": 120},
    "score": {"dtype": "float64", "nullable": True, "min": 0, "max": 1},
    "flag": {"dtype": "bool", "nullable": False, "min": 0, "max": 1},
    "color": {"dtype": "category", "nullable": True, "categories": ["red", "green"]},
}
HEADER = ["age", "score", "flag", "color"]


@pytest.mark.parametrize(
    "header,rows,expected",
    [
        (HEADER, [["30", "0.5", "1", "red"], ["41", "", "0", ""]], []),
        (HEADER, [["30", "0.5", "1", "red"], ["", "1.5", "2", "blue"], ["2.5", "1e39", "0", "green"]],
         ["nullable on age: 1 of 3 rows fail", "dtype on age: 1 of 3 rows fail (expected int64); e.g. row 2: 2.5",
          "finite on score: 1 of 3 rows fail", "range on score: 2 of 3 rows fail (allowed [0, 1]); e.g. row 1: 1.5, "
          "row 2: 1e+39", "dtype on flag: 1 of 3 rows fail (expected bool); e.g. row 1: 2",
          "range on flag: 1 of 3 rows fail (allowed [0, 1]); e.g. row 1: 2",
          "categories on color: 1 of 3 rows fail (allowed ['red', 'green']); e.g. row 1: blue"]),
        (["label", "age", "score", "color", "x"], [["1", "30", "0.5", "red", "z"]],
         ["extra-columns: label, x (columns not in the contract)",
          "missing-columns: flag (columns the contract requires)"]),
    ],
    ids=["clean", "row-violations", "missing-and-extra-columns"],
)
def test_plain_files_take_the_pandas_free_path_with_the_same_report(tmp_path, header, rows, expected):
    contract = _contract(SPEC)
    path = tmp_path / "in.csv"
    _write(path, header, rows, quote_all=False)
    slow, fast = _both(contract, path)
    assert fast is not None, "expected the pandas-free reader to take this file"
    _assert_same(slow, fast)
    described = [v.describe() for v in fast[0].violations]
    assert len(described) == len(expected)
    assert all(d.startswith(e) for d, e in zip(described, expected)), described


@pytest.mark.parametrize(
    "text,name",
    [
        ("age,score,flag,color\n30,0.5,True,red\n", "in.csv"),  # booleans: pandas' bool dtype
        ("age,score,flag,color\n30, 0.5,1,red\n", "in.csv"),  # spaces around a number
        ("age,score,flag,color\n30,inf,1,red\n", "in.csv"),  # an inf word
        ("age,score,flag,color\nabc,0.5,1,red\n", "in.csv"),  # text in a numeric column
        ("age,score,flag,color\n30,0.5,1,1\n", "in.csv"),  # a number in a category column
        ("age,age,flag,color\n30,0.5,1,red\n", "in.csv"),  # duplicate names: pandas renames
        ("age,score,flag,color\n30,0.5,1\n", "in.csv"),  # ragged row: pandas pads it
        ("age,score,flag,color\n30,0.5,1,red\n\n40,0.1,0,red\n", "in.csv"),  # blank line: pandas skips it
        ("\ufeffage,score,flag,color\n30,0.5,1,red\n", "in.csv"),  # byte-order mark
        ("age,score,flag,color\n", "in.csv"),  # no rows
        ("age,score,flag,color\n30,0.5,1,red\n", "in.csv.gz"),  # compressed by name
        ("age,score,flag,color\n" + "1" * 100_000 + "x,0.5,1,red\n", "in.csv"),  # no runaway regex either
    ],
    ids=["bool", "spaces", "inf-word", "text-in-number", "number-in-category", "duplicate-header", "ragged",
         "blank-line", "bom", "no-rows", "gz-suffix", "long-digits"],
)
def test_ambiguous_files_are_left_to_pandas(tmp_path, text, name):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert read_csv(path, _contract(SPEC)) is None


def test_na_tokens_are_pandas_defaults():
    from pandas._libs.parsers import STR_NA_VALUES

    assert NA_TOKENS == set(STR_NA_VALUES)


# decimal numbers as CSV files hold them; integers that may not fit int64 are left to pandas
_NUMBER = st.from_regex(r"[+-]?([0-9]{1,25}(\.[0-9]{0,25})?|\.[0-9]{1,25})([eE][+-]?[0-9]{1,3})?", fullmatch=True)


@settings(max_examples=25, deadline=None)
@given(st.lists(_NUMBER.filter(lambda t: not re.fullmatch(r"[+-]?[0-9]{19,}", t)), min_size=1, max_size=40))
def test_numbers_parse_to_the_same_float64_as_pandas(tokens):
    contract = _contract({"v": {"dtype": "float64", "nullable": True, "min": None, "max": None}})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "n.csv"
        path.write_text("v\n" + "\n".join([*tokens, "1.5"]) + "\n", encoding="utf-8")
        table = read_csv(path, contract)
        expected = read_table(path)["v"].to_numpy(dtype=np.float64)
    assert table is not None
    got = table.numeric["v"].astype(np.float64)
    assert got.tobytes() == expected.tobytes()  # bit for bit, signed zeros included


def test_integers_past_int64_are_left_to_pandas(tmp_path):
    contract = _contract({"v": {"dtype": "int64", "nullable": False, "min": None, "max": None}})
    path = tmp_path / "n.csv"
    path.write_text("v\n1\n9223372036854775808\n")
    assert read_csv(path, contract) is None
    path.write_text("v\n1\n922337203685477580\n")  # 18 digits: int64, read as such
    assert read_csv(path, contract).numeric["v"].tolist() == [1, 922337203685477580]
