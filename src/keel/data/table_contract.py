"""Tabular data contracts, validated with pandera in lazy mode (every failing check collected).

A contract names each feature column (dtype, nullability, numeric range, allowed categories)
and the target column: class labels (classification) or a number (regression). It is plain
data (``to_dict``), stored in checkpoints and bundles, and reports violations in the same
format as :class:`TensorContract`.

YAML form, classification (``task: classification`` is the default and may be left out)::

    kind: table
    name: my_data
    target: label
    classes: [0, 1]                 # label values; their order defines the logits
    class_names: [no, yes]          # optional display names
    columns:
      age:   {dtype: float64, nullable: false, min: 0, max: 120}
      color: {dtype: category, nullable: true, categories: [red, green, blue]}

Regression (no ``classes``; the target must be a finite number, inside ``target_range``)::

    kind: table
    name: diabetes
    task: regression
    target: target
    target_range: [0.0, 700.0]      # inclusive; null: any finite number
    columns: {...}

A regression target is reported like a label (feature ``label``): a value that is not a
number (``dtype``), missing (``nullable``), Inf or beyond the float32 range (``finite``),
outside ``target_range`` (``range``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from keel.data.contract import (
    CLASSIFICATION,
    FLOAT32_MAX,
    MAX_EXAMPLES,
    REGRESSION,
    ContractError,
    ContractReport,
    Violation,
    _spec_task,
    parse_target_range,
    plain_value,
    task_key_problems,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

NUMERIC_DTYPES = ("float64", "float32", "int64", "int32", "bool")
DTYPES = NUMERIC_DTYPES + ("category",)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


@dataclass(frozen=True)
class ColumnSpec:
    """One feature column: ``dtype`` (a numeric dtype or ``category``), ``nullable``, an
    inclusive ``[min, max]`` for numeric columns and the allowed ``categories`` otherwise."""

    name: str
    dtype: str
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] | None = None

    @property
    def numeric(self) -> bool:
        return self.dtype != "category"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": self.dtype, "nullable": self.nullable}
        if self.numeric:
            out["min"], out["max"] = self.min, self.max
        else:
            out["categories"] = list(self.categories or ())
        return out


def _column_from_dict(name: str, spec: Any, problems: list[str]) -> ColumnSpec | None:
    where = f"columns.{name}"
    if not isinstance(spec, Mapping):
        problems.append(f"{where}: expected a mapping with dtype/nullable/min/max/categories, got {spec!r}")
        return None
    allowed = {"dtype", "nullable", "min", "max", "categories"}
    problems += [f"{where}: unknown key {k!r} (allowed: {sorted(allowed)})" for k in spec if k not in allowed]
    dtype = spec.get("dtype")
    if dtype not in DTYPES:
        problems.append(f"{where}.dtype={dtype!r}: expected one of {list(DTYPES)}")
        return None
    nullable = spec.get("nullable", False)
    if not isinstance(nullable, bool):
        problems.append(f"{where}.nullable={nullable!r}: expected true or false")
    lo, hi, cats = spec.get("min"), spec.get("max"), spec.get("categories")
    if dtype == "category":
        if lo is not None or hi is not None:
            problems.append(f"{where}: min/max apply to numeric columns, not dtype category")
        if not (isinstance(cats, Sequence) and not isinstance(cats, str) and len(cats) >= 1):
            problems.append(f"{where}.categories={cats!r}: a category column needs a non-empty list of categories")
            return None
        names = [str(c) for c in cats]
        if len(set(names)) != len(names):
            problems.append(f"{where}.categories: values must be unique, got {names}")
        return ColumnSpec(name, dtype, bool(nullable), categories=tuple(names))
    if cats is not None:
        problems.append(f"{where}: categories apply to dtype category, not {dtype}")
    for key, v in (("min", lo), ("max", hi)):
        if v is not None and not _is_num(v):
            problems.append(f"{where}.{key}={v!r}: expected a number or null")
            return None
    if lo is not None and hi is not None and lo > hi:
        problems.append(f"{where}: min={lo} > max={hi}")
    return ColumnSpec(
        name, dtype, bool(nullable), None if lo is None else float(lo), None if hi is None else float(hi)
    )


def _positions(s: pd.Series, values: Sequence[str]) -> pd.Series:
    """Position of each value of ``s`` in ``values``, NaN where it is none of them.

    Values compare as text, but not through ``astype(str)``: that decodes bytes as UTF-8 and
    raises on other bytes. A whole float also matches its integer text: a CSV column of codes
    "1", "2" with a missing value in it reads back as 1.0, 2.0, NaN.
    """
    lookup = {v: i for i, v in enumerate(values)}

    def position(v: Any) -> float:
        i = lookup.get(v if isinstance(v, str) else str(v))
        if i is None and isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
            i = lookup.get(str(int(v)))
        return np.nan if i is None else float(i)

    return s.astype(object).map(position).astype("float64")


def _numeric_view(s: pd.Series) -> pd.Series:
    """Values as float64; entries that are not numbers become NaN (reported by the dtype rule)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(s):
        return s.astype("float64")
    if pd.api.types.is_numeric_dtype(s):
        return s.astype("float64")
    return pd.to_numeric(s, errors="coerce")


@dataclass(frozen=True)
class TableContract:
    """Expectations for a table: feature columns and the target column (class labels or a number).

    Args:
        name: contract name, shown in reports.
        target: the label (or regression target) column.
        classes: allowed label values (ints or strings); their order defines the logits.
            ``()`` for regression.
        columns: feature columns, in the order the model sees them.
        class_names: optional display names, one per class.
        task: ``classification`` or ``regression``.
        target_range: regression only: inclusive ``(low, high)`` of the target, or None (any
            finite number).
    """

    name: str
    target: str
    classes: tuple[Any, ...]
    columns: tuple[ColumnSpec, ...]
    class_names_: tuple[str, ...] | None = None
    task: str = CLASSIFICATION
    target_range: tuple[float, float] | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> TableContract:
        """Build from config data; :class:`ContractError` names every malformed field.

        ``task`` (optional): ``classification`` (default; ``classes`` required) or
        ``regression`` (no ``classes``/``class_names``; optional ``target_range``)."""
        spec = dict(spec)
        problems: list[str] = []
        if spec.pop("kind", "table") != "table":
            problems.append("kind: a TableContract has kind 'table'")
        task = _spec_task(spec, problems)
        regression = task == REGRESSION
        if regression:
            allowed, other = {"name", "target", "columns", "target_range"}, {"classes", "class_names"}
            shown = sorted(allowed | {"kind", "task"})
        else:
            allowed, other = {"name", "target", "classes", "columns", "class_names"}, {"target_range"}
            shown = sorted(allowed | {"kind"})
        problems += [f"unknown key {k!r} (allowed: {shown})" for k in spec if k not in allowed | other]
        required = ("name", "target", "columns") if regression else ("name", "target", "classes", "columns")
        problems += [f"missing key {k!r}" + (" (or `task: regression` for a numeric target)" if k == "classes" else "")
                     for k in required if k not in spec]
        problems += task_key_problems(spec, task, ("classes", "class_names"))
        if problems:
            raise ContractError("invalid table contract: " + "; ".join(problems))
        target = spec["target"]
        if not (isinstance(target, str) and target):
            problems.append(f"target={target!r}: expected the name of the label column")
        classes = () if regression else spec["classes"]
        target_range = parse_target_range(spec.get("target_range"), problems) if regression else None
        if regression:
            pass
        elif not (isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) >= 2):
            problems.append(f"classes={classes!r}: expected a list of at least 2 label values")
            classes = []
        elif not (all(_is_int(c) for c in classes) or all(isinstance(c, str) for c in classes)):
            problems.append(f"classes={list(classes)!r}: expected all integers or all strings")
        elif len({str(c) for c in classes}) != len(classes):
            problems.append(f"classes={list(classes)!r}: labels must be unique")
        names = spec.get("class_names")
        if names is not None and (not isinstance(names, Sequence) or len(names) != len(classes)):
            problems.append(f"class_names={names!r}: expected one name per class ({len(classes)})")
        cols = spec["columns"]
        parsed: list[ColumnSpec] = []
        if not isinstance(cols, Mapping) or not cols:
            problems.append("columns: expected a non-empty mapping of column name -> spec")
        else:
            for col, cspec in cols.items():
                c = _column_from_dict(str(col), cspec, problems)
                if c is not None:
                    parsed.append(c)
            if isinstance(target, str) and target in cols:
                by = "`target`/`target_range`" if regression else "`target`/`classes`"
                problems.append(f"columns: the target {target!r} is declared by {by}, not a feature")
        if problems:
            raise ContractError("invalid table contract: " + "; ".join(problems))
        return cls(
            name=str(spec["name"]),
            target=str(spec["target"]),
            classes=tuple(int(c) if _is_int(c) else str(c) for c in classes),
            columns=tuple(parsed),
            class_names_=None if names is None else tuple(str(n) for n in names),
            task=task,
            target_range=target_range,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers, strings): safe for ``torch.load(weights_only=True)``.

        Classification: the keys contracts have always had (no ``task``), so fingerprints of
        existing contracts do not change. Regression: ``task`` and ``target_range``, no ``classes``.
        """
        if self.task == REGRESSION:
            return {
                "kind": "table",
                "name": self.name,
                "task": REGRESSION,
                "target": self.target,
                "target_range": None if self.target_range is None else list(self.target_range),
                "columns": {c.name: c.to_dict() for c in self.columns},
            }
        out: dict[str, Any] = {
            "kind": "table",
            "name": self.name,
            "target": self.target,
            "classes": list(self.classes),
            "columns": {c.name: c.to_dict() for c in self.columns},
        }
        if self.class_names_ is not None:
            out["class_names"] = list(self.class_names_)
        return out

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form: equal contracts have equal fingerprints."""
        # to_dict is canonical; column order matters (it is the model's input order), so no sort_keys
        return hashlib.sha256(json.dumps(self.to_dict()).encode()).hexdigest()

    # ---------------------------------------------------------------- properties
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.class_names_) if self.class_names_ else [str(c) for c in self.classes]

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one encoded sample, as the model receives it: one value per column."""
        return (len(self.columns),)

    def encoded_width(self) -> int:
        """Width after the model's tabular preprocessing (see ``TabularPreprocess``)."""
        width = 0
        for c in self.columns:
            if c.numeric:
                width += 2 if c.nullable else 1
            else:
                width += len(c.categories or ()) + 1
        return width

    # ---------------------------------------------------------------- checking
    def _schema(self, check_target: bool) -> Any:
        import pandera.pandas as pa

        columns: dict[str, Any] = {}
        for c in self.columns:
            checks = []
            if c.numeric:
                checks.append(
                    pa.Check(
                        lambda s, c=c: _numeric_ok(s, c.dtype),
                        error=f"dtype|expected {c.dtype}",
                        ignore_na=True,
                    )
                )
                # the model computes in float32: beyond its range a finite float64 becomes Inf
                checks.append(
                    pa.Check(
                        lambda s: ~(_numeric_view(s).abs() > FLOAT32_MAX),
                        error="finite|Inf, or beyond the float32 range (|value| > 3.4e38)",
                        ignore_na=True,
                    )
                )
                if c.min is not None or c.max is not None:
                    lo = -np.inf if c.min is None else c.min
                    hi = np.inf if c.max is None else c.max
                    checks.append(
                        pa.Check(
                            lambda s, lo=lo, hi=hi: _numeric_view(s).between(lo, hi) | _numeric_view(s).isna(),
                            error=f"range|allowed [{lo:g}, {hi:g}]",
                            ignore_na=True,
                        )
                    )
            else:
                allowed = list(c.categories or ())
                checks.append(
                    pa.Check(
                        lambda s, allowed=allowed: _positions(s, allowed).notna(),
                        error=f"categories|allowed {allowed if len(allowed) <= 8 else allowed[:8] + ['...']}",
                        ignore_na=True,
                    )
                )
            columns[c.name] = pa.Column(None, nullable=c.nullable, checks=checks, required=True)
        if check_target and self.task == REGRESSION:
            columns[self.target] = pa.Column(None, nullable=False, checks=self._target_checks(), required=True)
        elif check_target:
            columns[self.target] = pa.Column(
                None,
                nullable=False,
                checks=[
                    pa.Check(
                        lambda s: self._label_ok(s),
                        error=f"classes|allowed {list(self.classes)}",
                        ignore_na=True,
                    )
                ],
                required=True,
            )
        return pa.DataFrameSchema(columns, strict=True, name=self.name)

    def _target_checks(self) -> list[Any]:
        """A regression target's rules: a number (not text, not a boolean), finite in float32,
        inside ``target_range``; missing values are pandera's ``not_nullable``."""
        import pandera.pandas as pa

        checks = [
            pa.Check(_target_numeric, error="dtype|expected a number (regression target)", ignore_na=True),
            pa.Check(
                lambda s: ~(_numeric_view(s).abs() > FLOAT32_MAX),
                error="finite|Inf, or beyond the float32 range (|value| > 3.4e38)",
                ignore_na=True,
            ),
        ]
        if self.target_range is not None:
            lo, hi = self.target_range
            checks.append(
                pa.Check(
                    lambda s: _numeric_view(s).between(lo, hi) | _numeric_view(s).isna(),
                    error=f"range|allowed [{lo:g}, {hi:g}]",
                    ignore_na=True,
                )
            )
        return checks

    def _label_ok(self, s: pd.Series) -> pd.Series:
        import pandas as pd

        if all(isinstance(c, int) for c in self.classes) and pd.api.types.is_numeric_dtype(s):
            return s.astype("float64").isin([float(c) for c in self.classes])
        return _positions(s, [str(c) for c in self.classes]).notna()

    def check(self, df: pd.DataFrame, split: str, with_target: bool = True) -> ContractReport:
        """Validate ``df`` and return every violation.

        Row ids in the report are ``df``'s index when it is a unique integer index (source
        row ids), else positions.

        ``with_target=False`` checks features only (serving data has no labels).
        """
        import pandas as pd

        import pandera.pandas as pa

        if not isinstance(df, pd.DataFrame):
            detail = f"expected a table (pandas DataFrame), got {type(df).__name__}"
            return ContractReport(self.name, split, 0, (Violation("type", "table", 0, 0, detail=detail),))
        n = len(df)
        if n == 0:
            return ContractReport(self.name, split, 0, (Violation("non-empty", "table", 0, 0, detail="no rows"),))
        dup = df.columns[df.columns.duplicated()].unique()
        if len(dup):  # df[name] would be a table, not a column: nothing else can be checked
            names = ", ".join(map(str, dup))
            detail = "each column name must appear once"
            return ContractReport(self.name, split, n, (Violation("duplicate-columns", names, n, n, detail=detail),))
        if self._surely_clean(df, with_target):
            return ContractReport(self.name, split, n, ())
        if not (pd.api.types.is_integer_dtype(df.index) and df.index.is_unique):
            df = df.reset_index(drop=True)  # row ids must name one row each: positions then
        try:
            self._schema(with_target).validate(df, lazy=True)
        except pa.errors.SchemaErrors as err:
            return ContractReport(self.name, split, n, tuple(_violations(err.failure_cases, n, self.target)))
        return ContractReport(self.name, split, n, ())

    def _surely_clean(self, df: pd.DataFrame, with_target: bool) -> bool:
        """True only when pandera would find nothing: the same rules, column by column in NumPy.

        pandera runs ~3 checks per column through pandas, ~25 ms per split of a 30-column
        table of any size; on clean data, which is what every split of a healthy run is, these
        vectorized tests decide alone. Any doubt (a rule broken, a category, object or
        extension dtype column, a label that is not a plain number) returns False, and the
        schema's lazy validation then reports every violation as before.
        """
        declared = [c.name for c in self.columns] + ([self.target] if with_target else [])
        if len(df.columns) != len(declared) or set(df.columns) != set(declared):
            return False  # strict: missing or extra columns
        for c in self.columns:
            if not c.numeric:
                return False
            col = df[c.name]
            if not isinstance(col.dtype, np.dtype):
                return False  # pandas extension dtypes (nullable Int64, category ...): pandera decides
            v = col.to_numpy()
            if v.dtype.kind == "b":
                v = v.astype(np.float64)  # as _numeric_view: 0/1
            elif v.dtype.kind not in "iuf":
                return False
            if v.dtype.kind == "f":
                nan = np.isnan(v)
                if nan.any():
                    if not c.nullable:
                        return False
                    v = v[~nan]
                if c.dtype in ("int64", "int32", "bool") and not np.array_equal(v, np.round(v)):
                    return False  # non-whole values (and Inf, caught by the next rule anyway)
            if not len(v):
                continue
            lo, hi = v.min(), v.max()
            if v.dtype.kind == "f" and (not (abs(float(lo)) <= FLOAT32_MAX and abs(float(hi)) <= FLOAT32_MAX)):
                return False  # Inf, or beyond what the float32 model can hold
            if c.dtype == "bool" and (lo < 0 or hi > 1):
                return False
            if (c.min is not None and lo < c.min) or (c.max is not None and hi > c.max):
                return False
        if with_target and self.task == REGRESSION:
            y = df[self.target]
            if not isinstance(y.dtype, np.dtype) or y.dtype.kind not in "iuf":
                return False  # booleans, text, objects, extension dtypes: pandera decides
            v = y.to_numpy()
            if not len(v):
                return True
            lo, hi = v.min(), v.max()  # NaN propagates: then the comparisons below fail
            if v.dtype.kind == "f" and not (abs(float(lo)) <= FLOAT32_MAX and abs(float(hi)) <= FLOAT32_MAX):
                return False  # NaN (missing), Inf, or beyond what the float32 model can hold
            if self.target_range is not None and not (
                float(lo) >= self.target_range[0] and float(hi) <= self.target_range[1]
            ):
                return False
        elif with_target:
            y = df[self.target]
            if (not isinstance(y.dtype, np.dtype) or y.dtype.kind not in "iuf"
                    or not all(isinstance(k, int) for k in self.classes)):  # as _label_ok
                return False
            if not bool(self._label_ok(y).all()):  # its numeric branch, given the guard above
                return False  # a NaN label is not in the classes either
        return True

    def encode_labels(self, y: pd.Series | np.ndarray) -> np.ndarray:
        """Classification: label values -> int64 class indices in ``classes`` order; regression:
        the target as float32 values (call after a clean check)."""
        import pandas as pd

        s = pd.Series(np.asarray(y))
        if self.task == REGRESSION:
            return _numeric_view(s).to_numpy(dtype=np.float32)
        if all(isinstance(c, int) for c in self.classes) and pd.api.types.is_numeric_dtype(s):
            lookup = {float(c): i for i, c in enumerate(self.classes)}
            return s.astype("float64").map(lookup).to_numpy(dtype=np.int64)
        return _positions(s, [str(c) for c in self.classes]).to_numpy(dtype=np.int64)

    def decode_features(self, x: np.ndarray) -> pd.DataFrame:
        """Inverse of :meth:`encode_features`: encoded rows back to a table of raw values."""
        return _decode(self, x)

    def encode_features(self, df: pd.DataFrame) -> np.ndarray:
        """Feature columns -> float32 ``(N, len(columns))``: numbers as they are (NaN kept:
        the model imputes), categories as their index in ``categories`` (missing: -1)."""
        out = np.empty((len(df), len(self.columns)), dtype=np.float32)
        for j, c in enumerate(self.columns):
            s = df[c.name]
            if c.numeric:
                out[:, j] = _numeric_view(s).to_numpy(dtype=np.float64)
            else:
                codes = _positions(s, c.categories or ())
                codes[s.isna()] = -1
                out[:, j] = codes.fillna(-1).to_numpy(dtype=np.float64)
        return out


def _decode(contract: TableContract, x: np.ndarray) -> pd.DataFrame:
    import pandas as pd

    data: dict[str, Any] = {}
    for j, c in enumerate(contract.columns):
        col = np.asarray(x[:, j], dtype=np.float64)
        if c.numeric:
            if c.dtype in ("int64", "int32", "bool") and not np.isnan(col).any():
                data[c.name] = col.astype(np.int64)
            else:
                data[c.name] = col
        else:
            cats = list(c.categories or ())
            data[c.name] = [cats[int(v)] if 0 <= v < len(cats) else None for v in col]
    return pd.DataFrame(data)


def _target_numeric(s: pd.Series) -> pd.Series:
    """Row-wise: the regression target value is a number (text that reads as one counts, as for
    numeric features; booleans do not: a yes/no target is a classification)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(s):
        return pd.Series(False, index=s.index)
    if s.dtype == object:
        is_bool = s.map(lambda v: isinstance(v, (bool, np.bool_)))
        return _numeric_view(s).notna() & ~is_bool
    return _numeric_view(s).notna()


def _numeric_ok(s: pd.Series, dtype: str) -> pd.Series:
    """Row-wise: the value is a number compatible with ``dtype`` (ints are valid floats;
    an integer column read as float because of NaN is fine when the values are whole)."""
    num = _numeric_view(s)
    ok = num.notna()
    if dtype in ("int64", "int32"):
        ok &= np.isinf(num) | (num == np.round(num))
    if dtype == "bool":
        ok &= num.isin([0.0, 1.0])
    return ok


def _violations(failure_cases: pd.DataFrame, n: int, target: str) -> list[Violation]:
    out: list[Violation] = []
    fc = failure_cases
    for (column, check), group in fc.groupby([fc["column"].fillna(""), fc["check"].astype(str)], sort=False):
        rows = group["index"].dropna()
        if check == "column_in_schema":
            cols = [str(v) for v in group["failure_case"]]
            out.append(Violation("extra-columns", ", ".join(cols), n, n, detail="columns not in the contract"))
            continue
        if check == "column_in_dataframe":
            cols = [str(v) for v in group["failure_case"]]
            out.append(Violation("missing-columns", ", ".join(cols), n, n, detail="columns the contract requires"))
            continue
        if check == "not_nullable":
            rule, detail = "nullable", "missing value (NaN/empty) in a non-nullable column"
        elif "|" in check:
            rule, detail = check.split("|", 1)
        else:
            rule, detail = check, ""
        feature = "label" if column == target else str(column)
        if feature == "label":
            detail = f"column {target!r}: {detail}"
        # no row index: the check failed on the column as a whole (e.g. it raised on a value)
        whole = len(rows) < len(group)
        ids = None if whole or not len(rows) else rows.to_numpy(dtype=np.int64)
        uniq = np.unique(ids) if ids is not None else None
        examples = tuple(
            (int(i), plain_value(v))
            for i, v in zip(group["index"].head(MAX_EXAMPLES), group["failure_case"].head(MAX_EXAMPLES))
            if i is not None and not (isinstance(i, float) and np.isnan(i))
        )
        out.append(
            Violation(rule, feature, int(uniq.size) if uniq is not None else n, n, examples, detail, uniq)
        )
    return out


def infer_contract(
    df: pd.DataFrame, target: str, name: str, max_categories: int = 50, margin: float = 0.0, task: str = "auto"
) -> TableContract:
    """A starting contract from a reference table: dtypes, observed ranges, categories.

    Numeric columns get their observed ``[min, max]`` (widened by ``margin`` x range);
    text/boolean-like columns with at most ``max_categories`` distinct values become
    ``category``; columns with missing values become nullable.

    Args:
        task: ``classification``: classes are the sorted distinct labels; ``regression``:
            ``target_range`` is the observed ``[min, max]`` of the target's finite values,
            widened by ``margin`` x range (None when there are none): the rows given are
            the reference, as for feature ranges, so none of them fails its own contract;
            serving never checks a target, and the range records what the model was fitted
            on; ``auto``: the task
            :func:`keel.tasks.infer.infer_task` reads from the target column (logged with why).

    Raises:
        ContractError: the target is missing, or a text column has too many distinct values.
        keel.tasks.TaskError: ``task`` is not auto, classification or regression; or ``auto``
            and the target column is empty or ambiguous (the message says how to choose).
    """
    import pandas as pd

    from keel.tasks import get_task

    if task != "auto":
        get_task(task)  # an unknown name: TaskError naming the allowed ones
    if target not in df.columns:
        raise ContractError(f"--target {target!r} is not a column; columns: {list(map(str, df.columns))}")
    if task == "auto":
        from keel.tasks.infer import infer_task

        found = infer_task(df[target], target)
        log.info("task=auto: %s (%s)", found.task, found.reason)
        task = found.task
    cols: dict[str, Any] = {}
    for col in df.columns:
        if col == target:
            continue
        s = df[col]
        nullable = bool(s.isna().any())
        if pd.api.types.is_bool_dtype(s):
            cols[str(col)] = {"dtype": "bool", "nullable": nullable, "min": 0, "max": 1}
        elif pd.api.types.is_numeric_dtype(s):
            dtype = "int64" if pd.api.types.is_integer_dtype(s) else "float64"
            lo, hi = s.min(), s.max()
            if pd.isna(lo):
                lo = hi = None
            else:
                pad = (float(hi) - float(lo)) * margin
                lo, hi = float(lo) - pad, float(hi) + pad
                if dtype == "int64" and margin == 0:
                    lo, hi = int(lo), int(hi)
            cols[str(col)] = {"dtype": dtype, "nullable": nullable, "min": lo, "max": hi}
        else:
            values = sorted({str(v) for v in s.dropna().unique()})
            if len(values) > max_categories:
                raise ContractError(
                    f"column {col!r} has {len(values)} distinct text values (more than --max-categories "
                    f"{max_categories}): drop it, encode it, or raise --max-categories"
                )
            cols[str(col)] = {"dtype": "category", "nullable": nullable, "categories": values}
    if task == REGRESSION:
        v = _numeric_view(df[target]).to_numpy(dtype=np.float64)
        v = v[np.isfinite(v)]
        target_range = None
        if v.size:
            lo, hi = float(v.min()), float(v.max())
            pad = (hi - lo) * margin
            target_range = [lo - pad, hi + pad]
        return TableContract.from_dict({"kind": "table", "name": name, "task": REGRESSION, "target": target,
                                        "target_range": target_range, "columns": cols})
    y = df[target].dropna()
    if pd.api.types.is_numeric_dtype(y) and (y == np.round(y)).all():
        classes: list[Any] = sorted(int(v) for v in y.unique())
    else:
        classes = sorted(str(v) for v in y.unique())
    return TableContract.from_dict({"kind": "table", "name": name, "target": target, "classes": classes, "columns": cols})


__all__ = ["ColumnSpec", "TableContract", "infer_contract"]
