"""HTTP request bodies -> the rows :meth:`keel.serve.bundle.ContractInput.encode_rows` checks
(pure functions of the body bytes: no server, no torch).

Bodies by ``Content-Type``:

- ``application/json``: ``{"rows": [{column: value, ...}, ...]}`` for a table bundle (a
  DataFrame of the records: a key missing from a row is a missing value there, the target
  column is left out as ``keel predict`` leaves it out), ``{"inputs": [...]}`` for a tensor
  bundle (samples ``(N, *shape)`` or one sample ``shape``). JSON has no dtypes: numbers are
  read as the contract's dtype when they fit it, otherwise kept as they are, so the contract
  check reports them (a float beyond the float32 range, a fraction for an integer dtype).
- ``text/csv``: a CSV file, read exactly as ``keel predict FILE.csv`` reads one (the body goes
  through a temporary file into ``read_rows``), so the same file gets the same report.
- ``application/vnd.apache.parquet``: a Parquet file (table bundles), likewise.
- ``application/x-npy`` or ``application/octet-stream``: a ``.npy`` array (tensor bundles),
  loaded without pickles as ``keel predict`` loads one.

Every problem that is not a contract violation raises :class:`RequestError` with its HTTP
status (400 malformed, 413 too large, 415 a body kind this bundle does not take).
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keel.errors import KeelError

JSON, CSV, PARQUET, NPY = "json", "csv", "parquet", "npy"
CONTENT_TYPES = {
    "application/json": JSON,
    "text/csv": CSV,
    "application/csv": CSV,
    "application/vnd.apache.parquet": PARQUET,
    "application/x-parquet": PARQUET,
    "application/x-npy": NPY,
    "application/octet-stream": NPY,
}
ON_INVALID = ("fail", "skip")


class RequestError(KeelError):
    """A request the server answers with ``status`` and this message (never a prediction)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Parsed:
    """A request body as rows for the bundle: ``rows`` (a :class:`keel.serve.bundle.Rows`),
    ``source`` (the name reports give it) and ``kind`` (json, csv, parquet, npy)."""

    rows: Any
    source: str
    kind: str


def body_kind(content_type: str | None) -> str:
    """json, csv, parquet or npy from a ``Content-Type`` header (parameters ignored).

    Raises:
        RequestError: 415 for any other type, naming the ones taken.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in CONTENT_TYPES:
        shown = media or "none"
        raise RequestError(415, f"Content-Type {shown}: expected one of {', '.join(CONTENT_TYPES)}. Fix: send JSON "
                                "({\"rows\": [...]} or {\"inputs\": [...]}), a CSV/Parquet file or a .npy array "
                                "with its Content-Type")
    return CONTENT_TYPES[media]


def on_invalid_mode(value: str | None) -> str:
    """The ``on_invalid`` query parameter (default ``fail``).

    Raises:
        RequestError: 400 for another value.
    """
    if value is None:
        return "fail"
    if value not in ON_INVALID:
        raise RequestError(400, f"on_invalid={value!r}: expected fail or skip")
    return value


def check_length(header: str | None, limit: int) -> None:
    """Refuse a body by its ``Content-Length`` before reading it.

    Raises:
        RequestError: 400 for a malformed length, 413 above ``limit`` bytes.
    """
    if header is None:
        return
    try:
        n = int(header)
    except ValueError:
        raise RequestError(400, f"Content-Length {header!r}: not a number of bytes") from None
    if n < 0:
        raise RequestError(400, f"Content-Length {header!r}: not a number of bytes")
    if n > limit:
        raise RequestError(413, too_large(limit))


def too_large(limit: int) -> str:
    return (f"request body larger than the server's limit of {limit} bytes. Fix: send fewer rows per request, "
            "or start keel serve with a larger --max-body-bytes")


def parse(bundle: Any, kind: str, body: bytes, keep: tuple[str, ...] = ()) -> Parsed:
    """The rows of a request ``body`` of ``kind`` for ``bundle`` (a ContractInput).

    ``keep``: table columns carried into each answer as text (``keel predict --keep``).

    Raises:
        RequestError: 400 for a body that does not parse or has no rows, 415 for a kind the
            bundle does not take.
        ContractViolationError: from the readers, for image-like failures (not for ordinary
            violations: those come from ``encode_rows``).
    """
    if not body:
        raise RequestError(400, "empty request body: expected JSON, a CSV/Parquet file or a .npy array")
    if kind == JSON:
        return _parse_json(bundle, body, keep)
    if kind == NPY:
        if bundle.is_table:
            raise RequestError(415, "this bundle serves a table: send JSON {\"rows\": [...]} or a CSV/Parquet file "
                                    "(Content-Type text/csv or application/vnd.apache.parquet), not a .npy array")
        if keep:
            raise RequestError(400, f"keep={','.join(keep)}: a tensor request has no columns to keep")
        try:
            x = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise RequestError(400, f"request.npy: not a readable .npy array ({e})") from None
        return Parsed(_rows(x, len(x) if np.ndim(x) > 0 else 1), "request.npy", NPY)
    if not bundle.is_table:
        raise RequestError(415, "this bundle serves tensors: send JSON {\"inputs\": [...]} or a .npy array "
                                "(Content-Type application/x-npy), not a table file")
    suffix = ".csv" if kind == CSV else ".parquet"
    with tempfile.TemporaryDirectory(prefix="keel-serve-") as tmp:
        path = Path(tmp) / f"request{suffix}"
        path.write_bytes(body)
        try:
            rows = bundle.read_rows(path, kind, keep=keep)
        except RequestError:
            raise
        except KeelError as e:  # unreadable file, a keep column it lacks: the reader's message
            raise RequestError(400, str(e).replace(str(path), path.name)) from None
    return Parsed(rows, path.name, kind)


def _rows(data: Any, n: int, target: Any = None, carried: dict[str, list[str]] | None = None) -> Any:
    from keel.serve.bundle import Rows

    return Rows(data, target, carried or {}, n)


def _parse_json(bundle: Any, body: bytes, keep: tuple[str, ...]) -> Parsed:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON ({e})") from None
    want, other = ("rows", "inputs") if bundle.is_table else ("inputs", "rows")
    what = ("{\"rows\": [{\"column\": value, ...}, ...]}" if bundle.is_table
            else "{\"inputs\": [sample, ...]} (samples of shape " + str(list(bundle.contract.shape)) + ")")
    if not isinstance(doc, dict) or want not in doc:
        extra = ""
        if isinstance(doc, dict) and other in doc:
            extra = f" (\"{other}\" is for {'tensor' if bundle.is_table else 'table'} bundles)"
        raise RequestError(400, f"expected a JSON object {what}{extra}")
    unknown = sorted(set(doc) - {want})
    if unknown:
        raise RequestError(400, f"unknown keys {unknown} in the JSON body: expected {what}")
    value = doc[want]
    if not isinstance(value, list) or not value:
        raise RequestError(400, f"\"{want}\" must be a non-empty list: expected {what}")
    if bundle.is_table:
        return _table_rows(bundle.contract, value, keep)
    if keep:
        raise RequestError(400, f"keep={','.join(keep)}: a tensor request has no columns to keep")
    x = json_array(value, bundle.contract.dtype)
    single = isinstance(x, np.ndarray) and x.ndim == len(bundle.contract.shape)  # one sample
    n = 1 if single else len(value)
    return Parsed(_rows(x, n), "request.json", JSON)


def json_array(value: list, dtype: str) -> Any:
    """JSON numbers as an array of the contract's ``dtype`` where every value fits it (floats:
    within the dtype's range, NaN/Inf allowed for the finite check to report; integers: whole
    numbers in range); otherwise the array as numpy reads it (or the list itself when ragged),
    for the contract check to report."""
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged: the contract check names it
        return value
    want = np.dtype(dtype)
    if arr.dtype.kind not in "iuf" or arr.dtype == want:
        return arr
    if want.kind == "f":
        if arr.size and np.abs(arr).max() <= float(np.finfo(want).max):  # the usual case: all finite and in range
            return arr.astype(want)
        with np.errstate(invalid="ignore"):
            over = np.abs(arr.astype(np.float64)) > float(np.finfo(want).max)
        finite = np.isfinite(arr.astype(np.float64))
        return arr if (over & finite).any() else arr.astype(want)
    if want.kind in "iu":
        info = np.iinfo(want)
        as_float = arr.astype(np.float64)
        ok = np.isfinite(as_float).all() and (as_float == np.round(as_float)).all() and \
            (as_float >= info.min).all() and (as_float <= info.max).all()
        return arr.astype(want) if ok else arr
    return arr


_INT64 = 1 << 63


def json_table(contract: Any, records: list[dict], drop: tuple[str, ...] = ()) -> Any:
    """JSON records as the :class:`keel.serve.table.CsvTable` that ``pandas.DataFrame.from_records``
    would type the same way, for the pandas-free check (``check_table``, ~1 ms instead of ~8 ms
    for pandas + pandera on one row); None when any contract column is not plain, leaving the
    records to pandas: numeric columns must hold only JSON numbers (no booleans, integers within
    int64) or null/missing (int64 when all are integers, else float64 with NaN), category columns
    only strings or null/missing, and not all missing. ``drop``: keys that are not inputs (the
    target, ``keep`` columns). tests/unit/test_serve_requests.py holds both paths to the same
    report and encoding."""
    from keel.serve.table import CsvTable

    header = tuple(k for k in dict.fromkeys(k for r in records for k in r) if k not in drop)
    present = set(header)
    numeric: dict[str, np.ndarray] = {}
    text: dict[str, list[str | None]] = {}
    for c in contract.columns:
        if c.name not in present:
            continue
        values = [r.get(c.name) for r in records]
        if c.numeric:
            if all(type(v) is int and -_INT64 <= v < _INT64 for v in values):
                numeric[c.name] = np.array(values, dtype=np.int64)
            elif all(v is None or type(v) in (int, float) for v in values) and \
                    all(type(v) is not int or -_INT64 <= v < _INT64 for v in values):
                numeric[c.name] = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
            else:
                return None
        else:
            if not all(v is None or type(v) is str for v in values) or all(v is None for v in values):
                return None
            text[c.name] = values
    return CsvTable(header, len(records), numeric, text)


def _table_rows(contract: Any, records: list, keep: tuple[str, ...]) -> Parsed:
    bad = [i for i, r in enumerate(records) if not isinstance(r, dict)]
    if bad:
        raise RequestError(400, f"rows {bad[:5]}{' ...' if len(bad) > 5 else ''} are not JSON objects: expected "
                                "{\"rows\": [{\"column\": value, ...}, ...]}")
    features = set(contract.feature_names)
    if not keep:
        table = json_table(contract, records, drop=(contract.target,) if contract.target not in features else ())
        if table is not None:
            return Parsed(_rows(table, len(records)), "request.json", JSON)
    import pandas as pd

    df = pd.DataFrame.from_records(records)
    missing = [c for c in keep if c not in df.columns]
    if missing:
        raise RequestError(400, f"keep={','.join(missing)}: no such key in the rows (they have "
                                f"{', '.join(map(str, df.columns))})")
    carried = {c: ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in df[c].tolist()]
               for c in keep}
    target = contract.target
    y = df[target] if target in df.columns else None
    drop = [c for c in (*keep, target) if c in df.columns and c not in features]
    data = df.drop(columns=list(dict.fromkeys(drop)))
    return Parsed(_rows(data, len(df), y, carried), "request.json", JSON)


__all__ = ["CONTENT_TYPES", "Parsed", "RequestError", "body_kind", "check_length", "json_array", "json_table",
           "on_invalid_mode", "parse", "too_large"]
