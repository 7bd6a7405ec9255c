"""Tensor data contracts: what every split must satisfy, checked with numpy.

A contract is plain data (it round-trips through ``to_dict``), so it is stored in every
checkpoint and carried into exported bundles. ``check`` returns every violation at once;
``validate`` raises :class:`ContractViolationError` listing all of them.

The target is either class labels (``task: classification``, the default: a list of
``classes``) or a number (``task: regression``: optional inclusive ``target_range``, no
classes). A classification contract's ``to_dict`` has no ``task`` key, so contracts written
before regression existed keep their fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keel.errors import KeelError

MAX_EXAMPLES = 5
CLASSIFICATION, REGRESSION = "classification", "regression"
CONTRACT_TASKS = (CLASSIFICATION, REGRESSION)
# Models take float32 input: a finite float64 beyond this becomes Inf when it is cast.
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Violation:
    """One failed rule: which rule, on which feature, how many rows, a few examples."""

    rule: str
    feature: str
    failing: int
    total: int
    examples: tuple[tuple[int, Any], ...] = ()
    detail: str = ""
    # Source row ids of every failing row (None: the rule fails the whole split, e.g. a
    # missing column). Used to drop rows; not part of the printed or stored report.
    rows: np.ndarray | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        if self.rule in ("missing-columns", "extra-columns", "duplicate-columns", "type"):
            return f"{self.rule}: {self.feature} ({self.detail})"
        ex = ", ".join(f"row {i}: {v}" for i, v in self.examples)
        text = f"{self.rule} on {self.feature}: {self.failing} of {self.total} rows fail"
        if self.detail:
            text += f" ({self.detail})"
        if ex:
            text += f"; e.g. {ex}"
        return text


@dataclass(frozen=True)
class ContractReport:
    """The result of checking one split against a contract."""

    contract: str
    split: str
    rows: int
    violations: tuple[Violation, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def droppable(self) -> bool:
        """Whether every violation is row-level, so dropping failing rows repairs the split."""
        return all(v.rows is not None for v in self.violations)

    def failing_rows(self) -> np.ndarray:
        """Sorted unique source row ids that fail any row-level rule."""
        parts = [np.asarray(v.rows) for v in self.violations if v.rows is not None]
        return np.unique(np.concatenate(parts)) if parts else np.array([], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "contract": self.contract,
            "split": self.split,
            "rows": self.rows,
            "violations": [
                {
                    "rule": v.rule,
                    "feature": v.feature,
                    "failing": v.failing,
                    "total": v.total,
                    "examples": [[i, plain_value(x)] for i, x in v.examples],
                    "detail": v.detail,
                }
                for v in self.violations
            ],
        }


class ContractError(KeelError):
    """The contract itself is malformed (a config mistake, not a data one)."""


class ContractViolationError(KeelError):
    """One or more splits break the contract; ``reports`` holds every violation."""

    def __init__(self, reports: Sequence[ContractReport], source: str = "", fix: str | None = None):
        self.source, self.fix = source, fix
        self.reports = [r for r in reports if not r.ok]
        n = sum(len(r.violations) for r in self.reports)
        where = f" in {source}" if source else ""
        lines = [f"data contract {self.reports[0].contract!r} violated{where} ({n} violation{'s' if n != 1 else ''}):"]
        for r in self.reports:
            lines.append(f"  split {r.split!r} ({r.rows} rows):")
            lines += [f"    - {v.describe()}" for v in r.violations]
        lines.append(fix or (
            "Fix: clean the data, or correct the contract in the data config (conf/data/<name>.yaml,"
            " key `contract`) if the data is right and the contract is not."
        ))
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple:  # rebuilt from its reports when sent between processes
        return (type(self), (self.reports, self.source, self.fix))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def plain_value(x: Any, max_chars: int = 80) -> Any:
    """A report value as plain JSON data: numpy scalars as Python ones, NaN/Inf as text (strict
    JSON has no NaN), anything else (bytes, dates, complex, objects) as its text, cut short."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Inf" if x > 0 else "-Inf")
    if x is None or isinstance(x, (bool, int, float)):
        return x
    text = x if isinstance(x, str) else str(x)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _numeric_dtype_name(name: Any) -> bool:
    """Whether ``name`` names a bool, integer or float numpy dtype (``np.dtype(None)`` would
    silently mean float64, and text, dates or records cannot be a model's input)."""
    try:
        return isinstance(name, str) and np.dtype(name).kind in "biuf"
    except (TypeError, ValueError):
        return False


def _array(value: Any) -> np.ndarray | None:
    """``value`` as a numpy array; None for ragged nested sequences (numpy refuses them)."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError):
        return None


def _examples(rows: np.ndarray, values: np.ndarray) -> tuple[tuple[int, Any], ...]:
    return tuple((int(i), plain_value(v)) for i, v in zip(rows[:MAX_EXAMPLES], values[:MAX_EXAMPLES]))


def _spec_task(spec: dict[str, Any], problems: list[str]) -> str:
    """Pop the spec's ``task`` (default classification); a bad value is named in ``problems``."""
    task = spec.pop("task", CLASSIFICATION)
    if task is None:
        return CLASSIFICATION
    if not (isinstance(task, str) and task in CONTRACT_TASKS):
        problems.append(f"task={task!r}: expected classification (a list of `classes`) or regression (a numeric "
                        "target, optional `target_range`)")
        return CLASSIFICATION
    return task


def task_key_problems(spec: Mapping[str, Any], task: str, class_keys: Sequence[str]) -> list[str]:
    """Keys that belong to the other task: ``classes`` (and ``class_names``) in a regression
    contract, ``target_range`` in a classification one; each with its fix."""
    if task == REGRESSION:
        return [f"{k}: a regression contract has no {k} (its target is a number). Fix: remove {k}, or set "
                "task: classification" for k in class_keys if k in spec]
    if "target_range" in spec:
        return ["target_range: applies to `task: regression` (a numeric target); a classification contract lists "
                "its `classes`. Fix: remove target_range, or set task: regression (and remove classes)"]
    return []


def parse_target_range(rng: Any, problems: list[str]) -> tuple[float, float] | None:
    """``target_range`` as ``(low, high)`` floats, or None; a malformed one is named in ``problems``."""
    if rng is None:
        return None
    if not (isinstance(rng, Sequence) and not isinstance(rng, str) and len(rng) == 2
            and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                    and math.isfinite(float(v)) for v in rng)
            and float(rng[0]) <= float(rng[1])):
        problems.append(f"target_range={rng!r}: expected [low, high] (finite numbers, low <= high), or null "
                        "(any finite number)")
        return None
    return float(rng[0]), float(rng[1])


def check_targets(values: np.ndarray, n: int, target_range: tuple[float, float] | None) -> list[Violation]:
    """Row-level checks of a 1-D regression target ``values`` (``n`` rows): numbers only
    (``dtype``), no missing, NaN, Inf or value beyond the float32 range (``finite``), inside
    ``target_range`` (``range``). Row ids are positions in ``values``."""
    out: list[Violation] = []
    y = values
    if y.dtype.kind not in "iuf" and y.dtype.kind != "O":
        return [Violation("dtype", "label", n, n, detail=f"dtype {y.dtype}, expected numbers")]
    if y.dtype.kind == "O":  # Python objects: numbers pass, None/NaN are missing, anything else is not a number
        num = np.full(n, np.nan)
        wrong = np.zeros(n, dtype=bool)
        for i, v in enumerate(y.tolist()):
            if v is None:
                continue
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
                try:
                    num[i] = float(v)
                except OverflowError:  # an int beyond float64: not a finite float32 either
                    num[i] = np.inf
            else:
                wrong[i] = True
        rows = np.flatnonzero(wrong)
        if rows.size:
            out.append(Violation("dtype", "label", int(rows.size), n, _examples(rows, y[rows]),
                                 "expected numbers", rows))
        raw = y
        missing = ~wrong & np.isnan(num)
    else:
        num = y.astype(np.float64)
        raw = y
        missing = np.isnan(num)
    with np.errstate(invalid="ignore"):
        bad = missing | np.isinf(num) | (np.abs(num) > FLOAT32_MAX)
    rows = np.flatnonzero(bad)
    if rows.size:
        detail = "missing, NaN or Inf target"
        if np.any(np.isfinite(num[rows])):
            detail += ", or beyond the float32 range (|value| > 3.4e38)"
        out.append(Violation("finite", "label", int(rows.size), n, _examples(rows, raw[rows]),
                             detail, rows))
    if target_range is not None:
        lo, hi = target_range
        with np.errstate(invalid="ignore"):
            outside = (num < lo) | (num > hi)  # NaN compares False; Inf fails here too, as for features
        rows = np.flatnonzero(outside)
        if rows.size:
            out.append(Violation("range", "label", int(rows.size), n, _examples(rows, raw[rows]),
                                 f"allowed [{lo:g}, {hi:g}]", rows))
    return out


@dataclass(frozen=True)
class TensorContract:
    """Expectations for tensor data (images, fixed-size feature arrays) and their target:
    integer labels (classification) or a number (regression).

    Args:
        name: contract name, shown in reports.
        shape: shape of one sample; the batch axis is free.
        dtype: numpy dtype name of the features, e.g. ``float32``.
        range: inclusive ``[low, high]`` of every feature value, or None.
        finite: whether NaN/Inf are forbidden in the features.
        classes: allowed label values (integers); their order defines the logits. ``()`` for
            regression.
        task: ``classification`` or ``regression``.
        target_range: regression only: inclusive ``(low, high)`` of the target, or None (any
            finite number). A regression target is always numeric and finite.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    classes: tuple[int, ...]
    range: tuple[float, float] | None = None
    finite: bool = True
    task: str = CLASSIFICATION
    target_range: tuple[float, float] | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> TensorContract:
        """Build from config data; :class:`ContractError` names every malformed field.

        ``task`` (optional): ``classification`` (default; ``classes`` required) or
        ``regression`` (no ``classes``; optional ``target_range``)."""
        spec = dict(spec)
        kind = spec.pop("kind", "tensor")  # present in to_dict() output
        problems: list[str] = []
        task = _spec_task(spec, problems)
        regression = task == REGRESSION
        common = {"name", "shape", "dtype", "range", "finite"}
        allowed = common | {"target_range"} if regression else common | {"classes"}
        other = {"classes"} if regression else {"target_range"}  # named by task_key_problems
        problems += [f"unknown key {k!r} (allowed: {sorted(allowed)})" for k in spec if k not in allowed | other]
        required = ("name", "shape", "dtype") if regression else ("name", "shape", "dtype", "classes")
        problems += [f"missing key {k!r}" + (" (or `task: regression` for a numeric target)" if k == "classes" else "")
                     for k in required if k not in spec]
        problems += task_key_problems(spec, task, ("classes",))
        if kind != "tensor":
            problems.append(f"kind={kind!r}: a TensorContract has kind 'tensor'")
        if problems:
            raise ContractError("invalid data contract: " + "; ".join(problems))
        shape = spec["shape"]
        if not (isinstance(shape, Sequence) and shape and all(_is_int(d) and d > 0 for d in shape)):
            problems.append(f"shape={shape!r}: expected a non-empty list of positive integers, e.g. [1, 8, 8]")
        if not _numeric_dtype_name(spec["dtype"]):
            problems.append(
                f"dtype={spec['dtype']!r}: expected a numpy dtype name such as float32 (a bool, integer or float type)"
            )
        classes = () if regression else spec["classes"]
        if regression:
            pass
        elif not (isinstance(classes, Sequence) and len(classes) >= 2 and all(_is_int(c) for c in classes)):
            problems.append(f"classes={classes!r}: expected a list of at least 2 integer labels")
        elif len(set(classes)) != len(classes):
            problems.append(f"classes={list(classes)!r}: labels must be unique")
        target_range = parse_target_range(spec.get("target_range"), problems) if regression else None
        rng = spec.get("range")
        if rng is not None and not (
            isinstance(rng, Sequence) and len(rng) == 2 and all(isinstance(v, (int, float)) for v in rng) and rng[0] <= rng[1]
        ):
            problems.append(f"range={rng!r}: expected [low, high] with low <= high, or null")
        if problems:
            raise ContractError("invalid data contract: " + "; ".join(problems))
        return cls(
            name=str(spec["name"]),
            shape=tuple(int(d) for d in shape),
            dtype=str(np.dtype(spec["dtype"])),
            classes=tuple(int(c) for c in classes),
            range=None if rng is None else (float(rng[0]), float(rng[1])),
            finite=bool(spec.get("finite", True)),
            task=task,
            target_range=target_range,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers, strings): safe for ``torch.load(weights_only=True)``.

        Classification: the keys contracts have always had (no ``task``), so fingerprints of
        existing contracts do not change. Regression: ``task`` and ``target_range``, no ``classes``.
        """
        out: dict[str, Any] = {"kind": "tensor", "name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.task == REGRESSION:
            out["task"] = REGRESSION
            out["target_range"] = None if self.target_range is None else list(self.target_range)
        else:
            out["classes"] = list(self.classes)
        out["range"] = None if self.range is None else list(self.range)
        out["finite"] = self.finite
        return out

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form: equal contracts have equal fingerprints."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.classes]

    def encode_labels(self, y: Any) -> np.ndarray:
        """Classification: labels -> int64 class indices in ``classes`` order; regression: the
        target as float32 values (call after a clean check)."""
        if self.task == REGRESSION:
            return np.asarray(y, dtype=np.float32)
        y = np.asarray(y)
        order = np.argsort(self.classes)
        sorted_classes = np.asarray(self.classes)[order]
        pos = np.searchsorted(sorted_classes, y)
        return order[np.clip(pos, 0, len(order) - 1)].astype(np.int64)

    def check(self, x: Any, y: Any | None, split: str, row_ids: Any | None = None) -> ContractReport:
        """Check features ``x`` (N, *shape) and labels or targets ``y`` (N,); return every violation.

        ``row_ids`` (N,) maps rows to their index in the source (file or dataset), so the
        examples in the report point at the source rows; default: position in ``x``.
        """
        report = self._check(x, y, split)
        if row_ids is None or report.ok:
            return report
        ids = np.asarray(row_ids)
        remapped = tuple(
            Violation(
                v.rule, v.feature, v.failing, v.total, tuple((int(ids[i]), val) for i, val in v.examples), v.detail,
                None if v.rows is None else ids[v.rows],
            )
            for v in report.violations
        )
        return ContractReport(report.contract, report.split, report.rows, remapped)

    def _check(self, x: Any, y: Any | None, split: str) -> ContractReport:
        out: list[Violation] = []
        x = _array(x)
        if x is None:
            detail = "not an array: nested sequences of different lengths"
            return ContractReport(self.name, split, 0, (Violation("shape", "x", 0, 0, detail=detail),))
        n = int(x.shape[0]) if x.ndim else 0
        if x.ndim == 0 or n == 0:
            out.append(Violation("non-empty", "x", 0, 0, detail="the split has no rows"))
            return ContractReport(self.name, split, n, tuple(out))
        if tuple(x.shape[1:]) != self.shape:
            out.append(
                Violation("shape", "x", n, n, detail=f"sample shape {list(x.shape[1:])}, expected {list(self.shape)}")
            )
        if x.dtype != np.dtype(self.dtype):
            out.append(Violation("dtype", "x", n, n, detail=f"dtype {x.dtype}, expected {self.dtype}"))
        # booleans, integers and floats only: complex, datetime and text values have no order
        # against the contract's range (their dtype violation is reported above)
        if x.dtype.kind in "biuf":
            flat = x.reshape(n, -1)
            if np.issubdtype(flat.dtype, np.floating) and self.finite:
                bad = ~np.isfinite(flat)
                detail = "NaN or Inf"
                if flat.dtype.itemsize > 4:  # served as float32: larger values turn into Inf
                    with np.errstate(invalid="ignore"):
                        over = np.abs(flat) > FLOAT32_MAX
                    if over.any():
                        bad |= over
                        detail = "NaN or Inf, or beyond the float32 range (|value| > 3.4e38)"
                rows = np.flatnonzero(bad.any(axis=1))
                if rows.size:
                    first = flat[rows, bad[rows].argmax(axis=1)]
                    out.append(Violation("finite", "x", int(rows.size), n, _examples(rows, first), detail, rows))
            if self.range is not None:
                lo, hi = self.range
                with np.errstate(invalid="ignore"):
                    below, above = flat < lo, flat > hi
                rows = np.flatnonzero((below | above).any(axis=1))
                if rows.size:
                    sub = flat[rows]
                    first = sub[np.arange(rows.size), (below[rows] | above[rows]).argmax(axis=1)]
                    out.append(
                        Violation(
                            "range", "x", int(rows.size), n, _examples(rows, first), f"allowed [{lo:g}, {hi:g}]", rows
                        )
                    )
        if y is not None:
            labels = _array(y)
            if labels is None:
                out.append(Violation("shape", "label", n, n, detail="not an array: nested sequences of different lengths"))
            else:
                out += self._check_labels(labels, n)
        return ContractReport(self.name, split, n, tuple(out))

    def _check_labels(self, y: np.ndarray, n: int) -> list[Violation]:
        out: list[Violation] = []
        if y.ndim != 1 or y.shape[0] != n:
            what = "targets" if self.task == REGRESSION else "labels"
            return [Violation("shape", "label", n, n, detail=f"{what} have shape {list(y.shape)}, expected [{n}]")]
        if self.task == REGRESSION:
            return check_targets(y, n, self.target_range)
        if np.issubdtype(y.dtype, np.floating):
            nan = np.flatnonzero(~np.isfinite(y))
            if nan.size:
                out.append(
                    Violation("finite", "label", int(nan.size), n, _examples(nan, y[nan]), "NaN or Inf label", nan)
                )
            frac = np.flatnonzero(np.isfinite(y) & (y != np.round(y)))
            if frac.size:
                out.append(Violation("integer", "label", int(frac.size), n, _examples(frac, y[frac]), "", frac))
        elif not np.issubdtype(y.dtype, np.integer):
            return out + [Violation("dtype", "label", n, n, detail=f"dtype {y.dtype}, expected integers")]
        with np.errstate(invalid="ignore"):
            unknown = np.flatnonzero(np.isfinite(y.astype(np.float64)) & ~np.isin(y, self.classes))
        if unknown.size:
            out.append(
                Violation(
                    "classes", "label", int(unknown.size), n, _examples(unknown, y[unknown]),
                    f"allowed {list(self.classes)}", unknown,
                )
            )
        return out

    def validate(self, x: Any, y: Any | None, split: str) -> ContractReport:
        """Like :meth:`check`, but raise :class:`ContractViolationError` on any violation."""
        report = self.check(x, y, split)
        if not report.ok:
            raise ContractViolationError([report])
        return report


def load_contract_spec(contract: Mapping[str, Any] | str) -> dict[str, Any]:
    """A contract given inline (a mapping) or as the path of a YAML file, as a dict."""
    if not isinstance(contract, str):
        return dict(contract)
    from pathlib import Path

    import yaml

    path = Path(contract)
    if not path.is_file():
        raise KeelError(
            f"{contract}: no such contract file. Fix: give the path of a contract YAML (e.g. written by "
            "`keel contract infer`), or pick one with data/contract=<name> from conf/data/contract/"
        )
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise KeelError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(spec, dict):
        raise KeelError(f"{path}: expected a contract mapping, got {type(spec).__name__}")
    return spec


def contract_from_dict(spec: Mapping[str, Any]) -> Any:
    """Build a :class:`TensorContract` or a ``TableContract`` from config data by its ``kind``."""
    kind = spec.get("kind", "tensor")
    if kind == "table":
        from keel.data.table_contract import TableContract

        return TableContract.from_dict(spec)
    if kind == "tensor":
        return TensorContract.from_dict(spec)
    raise ContractError(f"invalid data contract: kind={kind!r}: expected 'tensor' or 'table'")


__all__ = [
    "CLASSIFICATION", "CONTRACT_TASKS", "FLOAT32_MAX", "REGRESSION", "ContractError", "ContractReport",
    "ContractViolationError", "TensorContract", "Violation", "check_targets", "contract_from_dict",
    "load_contract_spec", "parse_target_range", "plain_value", "task_key_problems",
]
