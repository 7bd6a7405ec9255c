"""Read CSV/Parquet tables and pick their drift columns (pandas only: no torch, used by serving).

pandas is imported by the functions that read, not by this module: ``keel predict`` resolves the
format with :func:`table_format` and reads most CSV files without pandas (``keel.serve.table``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from keel.errors import KeelError

if TYPE_CHECKING:
    import pandas as pd

    from keel.data.table_contract import TableContract

FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}


# The Fix of each read error: for a training config, and for a file given to a bundle (keel predict/evaluate)
TRAINING_FIXES = {"missing": "data.path=<a .csv or .parquet file>", "format": "rename the file or set data.format=csv|parquet",
                  "empty": "point data.path at a file with a header and rows", "no rows": "point data.path at a file with data"}
SERVING_FIXES = {"missing": "give the path of an existing .csv or .parquet file",
                 "format": "rename the file or give --format csv|parquet", "empty": "give a file with a header and rows",
                 "no rows": "give a file with data rows"}


class TableReadError(KeelError):
    """A table file cannot be read: missing, empty, not CSV/Parquet, or without the label column."""


def table_format(path: str | Path, fmt: str = "auto", fixes: Mapping[str, str] = TRAINING_FIXES) -> str:
    """The format :func:`read_table` reads ``path`` as (``fmt``, or from the suffix for ``auto``),
    after the checks that need no parsing.

    Raises:
        TableReadError: naming the file and the fix, for a missing or empty file or an unknown suffix.
    """
    p = Path(path)
    if not p.is_file():
        raise TableReadError(f"{p}: no such file. Fix: {fixes['missing']}")
    if fmt == "auto":
        suffixes = [s.lower() for s in p.suffixes]
        if suffixes and suffixes[-1] in (".gz", ".bz2", ".zip", ".xz") and len(suffixes) > 1:
            suffixes = suffixes[:-1]
        fmt = FORMATS.get(suffixes[-1] if suffixes else "", "")
        if not fmt:
            raise TableReadError(
                f"{p}: cannot tell the format from the suffix {p.suffix!r}: expected one of "
                f"{sorted(FORMATS)}. Fix: {fixes['format']}"
            )
    if p.stat().st_size == 0:
        raise TableReadError(f"{p}: the file is empty. Fix: {fixes['empty']}")
    return fmt


def read_table(path: str | Path, fmt: str = "auto", fixes: Mapping[str, str] = TRAINING_FIXES) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame whose index is the 0-based data row number.

    Args:
        path: the file.
        fmt: ``auto`` (by suffix, also ``.csv.gz``), ``csv`` or ``parquet``.
        fixes: the Fix of each error (:data:`TRAINING_FIXES`, or :data:`SERVING_FIXES` for a bundle's input).

    Raises:
        TableReadError: naming the file and the fix, for a missing, empty or unreadable file.
    """
    import pandas as pd

    p = Path(path)
    fmt = table_format(p, fmt, fixes)
    try:
        if fmt == "csv":
            sep = "\t" if p.suffix.lower() == ".tsv" else ","
            df = pd.read_csv(p, sep=sep)
        elif fmt == "parquet":
            df = pd.read_parquet(p)
        else:
            raise TableReadError(f"data.format={fmt!r}: expected auto, csv or parquet")
    except pd.errors.EmptyDataError:
        raise TableReadError(f"{p}: no columns to read (empty CSV). Fix: add a header line and rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
        if isinstance(e, TableReadError):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TableReadError(f"{p}: not a readable {fmt.upper()} file ({first}). Fix: check the file's format") from None
    if df.empty:
        raise TableReadError(f"{p}: the file has a header but no rows. Fix: {fixes['no rows']}")
    return df.reset_index(drop=True)


def table_drift_columns(
    df: pd.DataFrame, contract: TableContract | None = None, exclude: tuple[str, ...] = ()
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Feature columns of ``df`` for drift statistics, and their kinds (numeric/categorical).

    With a contract: its feature columns and dtypes. Without: every column not in
    ``exclude``, numeric pandas dtypes as numeric, the rest as categorical.
    """
    import pandas as pd

    from keel.data.table_contract import _numeric_view

    cols: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    if contract is not None:
        specs = [(c.name, c.numeric) for c in contract.columns]
    else:
        specs = [(str(c), pd.api.types.is_numeric_dtype(df[c])) for c in df.columns if c not in exclude]
    for name, numeric in specs:
        if name not in df.columns:
            raise KeelError(f"column {name!r} is missing; columns are {list(map(str, df.columns))}")
        if numeric:
            cols[name] = _numeric_view(df[name]).to_numpy(dtype=np.float64)
            kinds[name] = "numeric"
        else:
            s = df[name]
            cols[name] = s.astype(object).where(s.notna(), None).to_numpy()
            kinds[name] = "categorical"
    return cols, kinds


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def csv_to_parquet(path: str | Path, cache_dir: str | Path, row_group_rows: int = 65536,
                   block_size: int = 16 << 20) -> tuple[Path, bool]:
    """A Parquet copy of the CSV ``path`` in ``cache_dir`` for streaming, made once per content.

    The copy is named by the CSV's sha256 (a changed CSV gets a new copy; a touched or copied one
    reuses it), written with row groups of ``row_group_rows`` rows in bounded memory (pyarrow's
    streaming CSV reader) and renamed into place, so an interrupted conversion leaves nothing.
    Column types are pyarrow's inference from the first ``block_size`` bytes; a column that later holds a
    value of another type (a 1.5 below whole numbers, text below numbers) is widened (int ->
    float -> text) and the conversion redone.

    Returns:
        ``(parquet path, converted now)``.

    Raises:
        TableReadError: naming the file and the fix, for a file pyarrow cannot read as CSV.
    """
    import os
    import re

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    p = Path(path)
    table_format(p, "csv")
    digest = _file_sha256(p)
    out_dir = Path(cache_dir)
    out = out_dir / f"{p.name.split('.')[0]}-{digest[:16]}.parquet"
    if out.is_file():
        return out, False
    out_dir.mkdir(parents=True, exist_ok=True)
    parse = pacsv.ParseOptions(delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
    read = pacsv.ReadOptions(block_size=block_size)
    types: dict[str, pa.DataType] = {}
    widen = {"int64": pa.float64(), "double": pa.string()}
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        names = pacsv.open_csv(p, read_options=read, parse_options=parse).schema.names
    except (pa.ArrowInvalid, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TableReadError(f"{p}: not a readable CSV file ({first}). Fix: check the file's format") from None
    for _ in range(2 * len(names) + 1):
        try:
            reader = pacsv.open_csv(p, read_options=read, parse_options=parse,
                                    convert_options=pacsv.ConvertOptions(column_types=types))
            with pq.ParquetWriter(tmp, reader.schema) as writer:
                pending: list[pa.RecordBatch] = []
                rows = 0
                for batch in reader:
                    pending.append(batch)
                    rows += batch.num_rows
                    while rows >= row_group_rows:
                        t = pa.Table.from_batches(pending)
                        writer.write_table(t.slice(0, row_group_rows), row_group_size=row_group_rows)
                        rest = t.slice(row_group_rows)
                        pending, rows = rest.to_batches(), rest.num_rows
                if rows:
                    writer.write_table(pa.Table.from_batches(pending, schema=reader.schema),
                                       row_group_size=row_group_rows)
            break
        except pa.ArrowInvalid as e:
            tmp.unlink(missing_ok=True)
            found = re.search(r"column #(\d+): CSV conversion error to (\w+)", str(e))
            if found is None or found.group(2) not in widen:
                first = str(e).splitlines()[0]
                raise TableReadError(f"{p}: not a readable CSV file ({first}). Fix: check the file's format") from None
            types[names[int(found.group(1))]] = widen[found.group(2)]
    tmp.replace(out)
    return out, True
