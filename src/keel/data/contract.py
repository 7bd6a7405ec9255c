"""Tensor data contracts: what every split must satisfy, checked with numpy.

A contract is plain data (it round-trips through ``to_dict``), so it is stored in every
checkpoint and carried into exported bundles. ``check`` returns every violation at once;
``validate`` raises :class:`ContractViolationError` listing all of them.
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

    def __init__(self, reports: Sequence[ContractReport], source: str = ""):
        self.source = source
        self.reports = [r for r in reports if not r.ok]
        n = sum(len(r.violations) for r in self.reports)
        where = f" in {source}" if source else ""
        lines = [f"data contract {self.reports[0].contract!r} violated{where} ({n} violation{'s' if n != 1 else ''}):"]
        for r in self.reports:
            lines.append(f"  split {r.split!r} ({r.rows} rows):")
            lines += [f"    - {v.describe()}" for v in r.violations]
        lines.append(
            "Fix: clean the data, or correct the contract in the data config (conf/data/<name>.yaml,"
            " key `contract`) if the data is right and the contract is not."
        )
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple:  # rebuilt from its reports when sent between processes
        return (type(self), (self.reports, self.source))


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


@dataclass(frozen=True)
class TensorContract:
    """Expectations for tensor data (images, fixed-size feature arrays) and integer labels.

    Args:
        name: contract name, shown in reports.
        shape: shape of one sample; the batch axis is free.
        dtype: numpy dtype name of the features, e.g. ``float32``.
        range: inclusive ``[low, high]`` of every feature value, or None.
        finite: whether NaN/Inf are forbidden.
        classes: allowed label values (integers); their order defines the logits.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    classes: tuple[int, ...]
    range: tuple[float, float] | None = None
    finite: bool = True

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> TensorContract:
        """Build from config data; :class:`ContractError` names every malformed field."""
        spec = dict(spec)
        kind = spec.pop("kind", "tensor")  # present in to_dict() output
        allowed = {"name", "shape", "dtype", "classes", "range", "finite"}
        problems = [f"unknown key {k!r} (allowed: {sorted(allowed)})" for k in spec if k not in allowed]
        problems += [f"missing key {k!r}" for k in ("name", "shape", "dtype", "classes") if k not in spec]
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
        classes = spec["classes"]
        if not (isinstance(classes, Sequence) and len(classes) >= 2 and all(_is_int(c) for c in classes)):
            problems.append(f"classes={classes!r}: expected a list of at least 2 integer labels")
        elif len(set(classes)) != len(classes):
            problems.append(f"classes={list(classes)!r}: labels must be unique")
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
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers, strings): safe for ``torch.load(weights_only=True)``."""
        return {
            "kind": "tensor",
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "classes": list(self.classes),
            "range": None if self.range is None else list(self.range),
            "finite": self.finite,
        }

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
        """Labels -> int64 class indices in ``classes`` order (call after a clean check)."""
        y = np.asarray(y)
        order = np.argsort(self.classes)
        sorted_classes = np.asarray(self.classes)[order]
        pos = np.searchsorted(sorted_classes, y)
        return order[np.clip(pos, 0, len(order) - 1)].astype(np.int64)

    def check(self, x: Any, y: Any | None, split: str, row_ids: Any | None = None) -> ContractReport:
        """Check features ``x`` (N, *shape) and labels ``y`` (N,); return every violation.

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
            return [Violation("shape", "label", n, n, detail=f"labels have shape {list(y.shape)}, expected [{n}]")]
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
    "FLOAT32_MAX", "ContractError", "ContractReport", "ContractViolationError", "TensorContract", "Violation",
    "contract_from_dict", "load_contract_spec", "plain_value",
]
