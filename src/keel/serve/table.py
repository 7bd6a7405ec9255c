"""Table input for ``keel predict`` without pandas: a CSV reader and the contract check in numpy.

Why: importing pandas (which pulls in pyarrow) and pandera costs ~0.7 s, most of a table
bundle's cold start, while a file to predict on is typically a small plain CSV. For such a
file :func:`read_csv` gives the contract's columns typed exactly as ``pandas.read_csv`` types
them, and :func:`check_table` reports exactly what ``TableContract.check`` (pandera, lazy)
reports on that DataFrame: the same violations in the same order, with the same row ids and
examples. :func:`encode_table` matches ``TableContract.encode_features``.

The reader takes only files whose meaning under ``pandas.read_csv`` is unambiguous; for any
other file it returns None and the caller reads it with pandas and checks it with pandera, so
what predict outputs or refuses never depends on which path ran.
tests/unit/test_serve_table.py holds both paths to that (hypothesis).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keel.data.contract import FLOAT32_MAX, MAX_EXAMPLES, ContractReport, Violation, plain_value

# pandas' default ``na_values`` (pandas._libs.parsers.STR_NA_VALUES): read as missing in every
# column. tests/unit/test_serve_table.py checks this copy against pandas.
NA_TOKENS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})
SUFFIXES = (".csv", ".tsv", ".txt")  # read_table's plain-text CSV suffixes (no compression)
# This reader takes 0.1-0.2 s per MiB, pandas ~0.04 s plus ~0.7 s of imports (pandas, pyarrow,
# pandera): from about 3 MiB on pandas is faster, so larger files are left to it.
MAX_BYTES = 2 << 20
# A column's tokens are matched as one string, joined by NUL (the csv module refuses NUL in a
# file, so no token holds one): one regex call per column instead of one per token.
_SEP = "\x00"
# Decimal numbers; integers of up to 18 digits only (they always fit int64: longer ones may
# not, and pandas reads those as uint64 or text). Unambiguous (no two ways to split a run of
# digits), so a failed match backtracks linearly.
_EXPONENT = r"[eE][+-]?[0-9]+"
_NUMBER = rf"[+-]?(?:[0-9]{{1,18}}|[0-9]+\.[0-9]*(?:{_EXPONENT})?|\.[0-9]+(?:{_EXPONENT})?|[0-9]+{_EXPONENT})"
_MISSING = "|".join(re.escape(t) for t in sorted(NA_TOKENS, key=len, reverse=True))
_INTEGERS = re.compile(rf"[+-]?[0-9]{{1,18}}(?:{_SEP}[+-]?[0-9]{{1,18}})*")
_NUMBERS = re.compile(rf"(?:{_NUMBER}|{_MISSING})(?:{_SEP}(?:{_NUMBER}|{_MISSING}))*")
# ASCII spaces around a token: pandas strips them from numbers (not from text) and skips lines
# of spaces
_SPACES = " \t\n\r\x0b\x0c"
# Tokens pandas may read as numbers or booleans: in a category column they change the column's
# dtype and so the text its values are compared as (1 -> "1", but 1.0 -> "1.0"); left to pandas.
_NUMBER_START = re.compile(r"[+-]?\.?[0-9]")
_WORDS = frozenset({"true", "false", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", "nan", "+nan",
                    "-nan"})


@dataclass(frozen=True)
class CsvTable:
    """The rows of a CSV file, with the contract's columns typed as ``pandas.read_csv`` types them.

    Attributes:
        header: every column name, in file order.
        rows: number of data rows (row ids are 0 .. rows - 1, as ``read_table`` numbers them).
        numeric: numeric contract columns present in the file: int64 where pandas reads int64
            (whole numbers, nothing missing), else float64 with NaN where missing.
        text: category contract columns present in the file: the strings, None where missing.
    """

    header: tuple[str, ...]
    rows: int
    numeric: dict[str, np.ndarray]
    text: dict[str, list[str | None]]

    def __len__(self) -> int:
        return self.rows


def read_csv(path: str | Path, contract: Any) -> CsvTable | None:
    """Read a plain CSV (``.tsv``: tab-separated) for a table contract, without pandas.

    Returns None, leaving the file to ``read_table``, unless the file is plain: at most
    ``MAX_BYTES``, UTF-8 without a byte-order mark, no NUL or malformed quoting, a header of
    distinct non-empty names, at least one data row, and every row with one field per
    column; and unless each contract column is unambiguous: numeric columns hold decimal
    numbers (no spaces, no inf/nan words) or pandas' missing-value tokens, category columns
    hold text that pandas could not read as a number or boolean.
    """
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES or p.stat().st_size > MAX_BYTES:
        return None
    try:
        with p.open(newline="", encoding="utf-8") as f:
            records = list(csv.reader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ",", strict=True))
    except (UnicodeDecodeError, csv.Error):
        return None
    if len(records) < 2:
        return None
    header, body = records[0], records[1:]
    width = len(header)
    if (not header or not all(header) or header[0].startswith("\ufeff") or len(set(header)) != width
            or any(len(r) != width for r in body)):
        return None
    # ... and a quote left inside a field is where csv dialects differ
    fields = _SEP + _SEP.join(_SEP.join(r) for r in records) + _SEP
    if '"' in fields or any(_SEP + w in fields or w + _SEP in fields for w in _SPACES):
        return None
    columns = dict(zip(header, zip(*body)))
    numeric: dict[str, np.ndarray] = {}
    text: dict[str, list[str | None]] = {}
    for c in contract.columns:
        if c.name not in columns:
            continue
        tokens = list(columns[c.name])
        typed = _numbers(tokens) if c.numeric else _texts(tokens)
        if typed is None:
            return None
        (numeric if c.numeric else text)[c.name] = typed
    return CsvTable(tuple(header), len(body), numeric, text)


def _numbers(tokens: list[str]) -> np.ndarray | None:
    """int64 when every token is an integer, float64 (NaN where missing) when every token is a
    number or missing; None otherwise. Python's float() rounds correctly, as pandas' parser does."""
    joined = _SEP.join(tokens)
    if _INTEGERS.fullmatch(joined):
        return np.array(list(map(int, tokens)), dtype=np.int64)
    if not _NUMBERS.fullmatch(joined):
        return None
    if NA_TOKENS.isdisjoint(tokens):
        return np.array(list(map(float, tokens)), dtype=np.float64)
    return np.array([math.nan if t in NA_TOKENS else float(t) for t in tokens], dtype=np.float64)


def _texts(tokens: list[str]) -> list[str | None] | None:
    """The strings (None where missing) when pandas reads the column as text; None otherwise."""
    out: list[str | None] = []
    for t in tokens:
        if t in NA_TOKENS:
            out.append(None)
        elif _NUMBER_START.match(t) or t.lower() in _WORDS:
            return None
        else:
            out.append(t)
    return out


def check_table(contract: Any, table: CsvTable, split: str) -> ContractReport:
    """Every violation of the contract's feature columns, as ``contract.check(read_table(path),
    split, with_target=False)`` reports them (the label column, if present, is an extra column)."""
    n = table.rows
    names = {c.name for c in contract.columns}
    extra = [h for h in table.header if h not in names]
    missing = [c.name for c in contract.columns if c.name not in table.header]
    cases: list[tuple[str, str, str, np.ndarray, np.ndarray]] = []  # rule, column, detail, rows, their values
    for c in contract.columns:
        if c.numeric and c.name in table.numeric:
            values = table.numeric[c.name]
            view = values.astype(np.float64)
            na = np.isnan(view)
            na_values = view
            rules = [("dtype", f"expected {c.dtype}", ~_dtype_ok(view, c.dtype)),
                     ("finite", "Inf, or beyond the float32 range (|value| > 3.4e38)", np.abs(view) > FLOAT32_MAX)]
            if c.min is not None or c.max is not None:
                lo = -np.inf if c.min is None else c.min
                hi = np.inf if c.max is None else c.max
                rules.append(("range", f"allowed [{lo:g}, {hi:g}]", (view < lo) | (view > hi)))
        elif not c.numeric and c.name in table.text:
            strings = table.text[c.name]
            values = np.array(strings, dtype=object)
            na = np.array([v is None for v in strings], dtype=bool)
            # pandas holds NaN there, in a float64 column when every value is missing
            na_values = np.full(n, math.nan) if na.all() else np.where(na, math.nan, values)
            allowed = list(c.categories or ())
            shown = allowed if len(allowed) <= 8 else allowed[:8] + ["..."]
            known = set(allowed)
            rules = [("categories", f"allowed {shown}", np.array([v not in known for v in strings], dtype=bool))]
        else:
            continue
        if not c.nullable and na.any():
            rows = np.flatnonzero(na)
            cases.append(("nullable", c.name, "missing value (NaN/empty) in a non-nullable column", rows,
                          na_values[rows]))
        for rule, detail, bad in rules:
            rows = np.flatnonzero(bad & ~na)  # pandera's ignore_na: missing values pass every check
            if rows.size:
                cases.append((rule, c.name, detail, rows, values[rows]))
    out: list[Violation] = []
    if extra:
        out.append(Violation("extra-columns", ", ".join(extra), n, n, detail="columns not in the contract"))
    if missing:
        out.append(Violation("missing-columns", ", ".join(missing), n, n, detail="columns the contract requires"))
    # pandera concatenates every failure case into one column, whose dtype is their common
    # one: without any text (column names count) ints show as floats once one value is a float
    kinds = {values.dtype.kind for *_, values in cases} | ({"O"} if extra or missing else set())
    as_float = "O" not in kinds and "f" in kinds
    for rule, column, detail, rows, values in cases:
        shown = values[:MAX_EXAMPLES].astype(np.float64) if as_float else values[:MAX_EXAMPLES]
        examples = tuple((int(i), plain_value(v)) for i, v in zip(rows, shown))
        out.append(Violation(rule, column, int(rows.size), n, examples, detail, rows))
    return ContractReport(contract.name, split, n, tuple(out))


def _dtype_ok(view: np.ndarray, dtype: str) -> np.ndarray:
    """``table_contract._numeric_ok`` on values that are all numbers (or NaN: not checked)."""
    ok = np.ones(view.shape, dtype=bool)
    if dtype in ("int64", "int32"):
        ok &= np.isinf(view) | (view == np.round(view))
    if dtype == "bool":
        ok &= np.isin(view, [0.0, 1.0])
    return ok


def encode_table(contract: Any, table: CsvTable) -> np.ndarray:
    """``contract.encode_features`` of the same rows: float32 ``(rows, len(columns))``, numbers
    as they are (NaN kept), categories as their index (missing: -1). Call after a clean check."""
    out = np.empty((table.rows, len(contract.columns)), dtype=np.float32)
    for j, c in enumerate(contract.columns):
        if c.numeric:
            out[:, j] = table.numeric[c.name].astype(np.float64)
        else:
            lookup = {v: i for i, v in enumerate(c.categories or ())}
            out[:, j] = [-1 if s is None else lookup[s] for s in table.text[c.name]]
    return out


__all__ = ["CsvTable", "check_table", "encode_table", "read_csv"]
