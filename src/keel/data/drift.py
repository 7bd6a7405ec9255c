"""Drift and leakage statistics between a reference split (train) and another split, numpy only.

Numeric features (and a regression target) are binned on quantiles of the reference;
categorical features and class labels are compared category by category. Per feature the
report gives PSI, KL(current || reference) and Jensen-Shannon divergence of epsilon-smoothed
bin fractions; ``shared_rows`` counts exact duplicate rows across two splits (leakage).

Definitions, with ``p`` the current and ``q`` the reference fractions over the same bins::

    frac = (count + epsilon) / (total + epsilon * nbins)      # every bin, both sides
    PSI  = sum((p - q) * ln(p / q))
    KL   = sum(p * ln(p / q))                                 # nats
    JS   = 0.5 * KL2(p || m) + 0.5 * KL2(q || m), m = (p + q) / 2, base 2, in [0, 1]

Sampling noise. Two samples of one distribution differ by chance, the more so the smaller they
are: over B bins the PSI of two samples of sizes n and m has, asymptotically, the distribution
chi2(B - 1) * (1/n + 1/m). PSI is the symmetric (Jeffreys) divergence of the fractions, and
``PSI * n*m/(n+m)`` tends to Pearson's chi-square statistic of the 2 x B table of counts (B.
Yurdakul, "Statistical Properties of Population Stability Index", PhD thesis, Western Michigan
University, 2018); JS (nats) tends to PSI / 8 likewise, so JS (base 2) to
``chi2(B - 1) * (1/n + 1/m) / (8 ln 2)``. A random 70/15/15 split of the wine table (178 rows)
thus expects PSI ~0.4 from noise alone, and its 27-row splits show PSI 1-3 at 10 bins, where
empty bins meet the tiny ``epsilon``. So every feature (and the labels, a regression target) is
also tested:

- Test: Pearson's chi-square test of homogeneity of the 2 x k table (reference counts, current
  counts) over the compared bins, ``p = P(chi2(k - 1) >= X2)``. Pearson's statistic, not PSI
  itself, is the test statistic: it needs no smoothing, and PSI's log ratio makes one empty bin
  of a small sample look like a shift (at 5 expected values a bin is empty 0.7% of the time, and
  ``epsilon = 1e-4`` turns that into PSI ~1).
- Small counts: the chi-square approximation needs every expected count >= 5 (the usual rule,
  W. G. Cochran, "The chi-square test of goodness of fit", Ann. Math. Statist. 23(3), 1952).
  Where the sizes do not support that, bins are merged before testing: adjacent quantile bins
  (numeric features, a target), or rare categories with each other (categoricals, labels: the
  frequent ones stay alone), until every merged bin expects >= 5 values on both sides;
  ``bins_tested`` says how many were left. Merging looks at the pooled counts only (the
  table's column sums), which the test conditions on, so it keeps the test's level (measured:
  P(p < 0.01) 0.5-1.7% under the null from 12 to 20,000 rows). Fewer than 2 bins left (a side
  with under 10 values): the feature is not testable (``testable`` false, status ``ok``), and
  the reports say so.
- Many features: the p-values of one comparison's testable features are adjusted by the
  Benjamini-Hochberg step-up (Y. Benjamini, Y. Hochberg, J. R. Stat. Soc. B 57(1), 1995), which
  controls the expected share of false alarms among the flagged features at ``alpha``; when
  nothing drifts (a random split) that is the chance of any false alarm. It holds for positively
  dependent tests (Benjamini, Yekutieli, Ann. Statist. 29(4), 2001), the usual case for features
  of one table. Labels and a target are one test each, not adjusted.
- ``noise_bound``: the statistic (PSI numeric, JS categorical) that noise alone exceeds with
  probability ``alpha`` at these sizes and bins, the asymptotic bound above; given only where
  no bins were merged (elsewhere the counts are too small for it to describe the statistic).
  There, ``psi >= noise_bound`` is about ``p_value <= alpha``.
- Computation: p from ``scipy.special.chdtrc`` and the bound from ``chdtri`` (the functions
  ``scipy.stats.chi2.sf``/``isf`` call); X2 and the BH step-up in numpy (the tests check them
  against ``scipy.stats.chi2_contingency`` and ``false_discovery_control``): importing
  ``scipy.stats`` takes ~0.5 s, about what all of ``keel drift`` takes.

Status: ``alert`` when the statistic >= its alert threshold and the (adjusted) test is
significant (``p < alpha``), ``warn`` likewise with the warn threshold, else ``ok``; PSI decides
for numeric features, JS for categoricals and labels. So a large PSI of a few rows is no alert,
nor is a significant but tiny shift of many rows. A feature with values on one side only is
``alert`` (there is no distribution to compare: the column broke).

Every function returns plain data (dict, list, str, int, float, bool, None; never numpy
types, never NaN or inf), so reports go through ``json.dumps(..., allow_nan=False)`` and
into checkpoints loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from keel.errors import KeelError

__all__ = [
    "DriftError",
    "DriftThresholds",
    "reference_stats",
    "compare",
    "label_shift",
    "target_drift",
    "shared_rows",
    "drift_report",
    "format_report",
    "StreamingReference",
    "label_shift_counts",
    "shared_row_mask",
]

KINDS = ("numeric", "categorical")
STATUSES = ("ok", "warn", "alert")
MAX_EXAMPLES = 5
_RANK = {s: i for i, s in enumerate(STATUSES)}
# Above this many cut points one searchsorted pass beats one comparison pass per cut.
_MAX_COMPARE_CUTS = 16
# Rows per block when hashing: a few MiB keeps the temporaries in cache.
_BLOCK_BYTES = 4 << 20
# Marks a missing (None/NaN) value in object/str columns for shared_rows. NumPy strips
# trailing NULs from str arrays, so the marker ends in a printable character.
_MISSING_STR = "\x00<missing>"
# Pearson's chi-square approximation holds when every expected count is >= 5 (Cochran 1952).
MIN_EXPECTED = 5.0


class DriftError(KeelError, ValueError):
    """Bad input to a drift function (thresholds, kinds, columns); the message names the fix."""


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class DriftThresholds:
    """When a drift statistic warns or alerts, and how distributions are binned and smoothed.

    Args:
        psi_warn, psi_alert: PSI levels (>= warns/alerts) for numeric features; 0 < warn <= alert.
        js_warn, js_alert: Jensen-Shannon levels (base 2) for categoricals and labels;
            0 < warn <= alert <= 1.
        bins: number of reference quantile bins for numeric features, >= 2.
        epsilon: pseudo-count added to every bin count before normalizing, > 0.
        alpha: significance level of the noise test, in (0, 1): a feature warns or alerts
            only when its (Benjamini-Hochberg adjusted) p-value is below it.

    Raises:
        DriftError: (a ValueError) listing every invalid field.
    """

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    js_warn: float = 0.05
    js_alert: float = 0.1
    bins: int = 10
    epsilon: float = 1e-4
    alpha: float = 0.01

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        problems = _threshold_problems(values)
        if problems:
            raise DriftError(_threshold_message(problems))
        for name, value in values.items():  # numpy scalars in -> plain numbers out
            object.__setattr__(self, name, int(value) if name == "bins" else float(value))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftThresholds:
        """Build from config data; absent keys keep their defaults.

        Raises:
            DriftError: naming every unknown key and every out-of-range value.
        """
        if not isinstance(d, Mapping):
            raise DriftError(f"drift thresholds must be a mapping, got {type(d).__name__}: {d!r}")
        known = [f.name for f in fields(cls)]
        unknown = [k for k in d if k not in known]
        values = {f.name: d.get(f.name, f.default) for f in fields(cls)}
        problems = [f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} (allowed: {', '.join(known)})"] if unknown else []
        problems += _threshold_problems(values)
        if problems:
            raise DriftError(_threshold_message(problems))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``from_dict(to_dict())`` round-trips."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _threshold_problems(values: Mapping[str, Any]) -> list[str]:
    problems = []
    for name in ("psi_warn", "psi_alert", "js_warn", "js_alert", "epsilon"):
        v = values[name]
        if not _is_real(v) or not math.isfinite(v) or v <= 0:
            problems.append(f"{name}={v!r}: expected a finite number > 0")
    for kind in ("psi", "js"):
        warn, alert = values[f"{kind}_warn"], values[f"{kind}_alert"]
        if _is_real(warn) and _is_real(alert) and warn > alert:
            problems.append(f"{kind}_warn={warn!r} > {kind}_alert={alert!r}: expected {kind}_warn <= {kind}_alert")
    for name in ("js_warn", "js_alert"):
        v = values[name]
        if _is_real(v) and v > 1:
            problems.append(f"{name}={v!r}: Jensen-Shannon (base 2) is at most 1, expected a value in (0, 1]")
    bins = values["bins"]
    if not isinstance(bins, (numbers.Integral)) or isinstance(bins, (bool, np.bool_)) or bins < 2:
        problems.append(f"bins={bins!r}: expected an integer >= 2")
    alpha = values["alpha"]
    if not _is_real(alpha) or not 0 < alpha < 1:  # NaN fails both comparisons
        problems.append(f"alpha={alpha!r}: expected a significance level in (0, 1), e.g. 0.01")
    return problems


def _threshold_message(problems: list[str]) -> str:
    return (
        "invalid drift thresholds:\n  - "
        + "\n  - ".join(problems)
        + "\nFix: correct these keys where the thresholds are configured."
    )


# --------------------------------------------------------------------------- small helpers


def _finite_or_none(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _status(value: float | None, warn: float, alert: float) -> str:
    if value is None:
        return "ok"
    if value >= alert:
        return "alert"
    if value >= warn:
        return "warn"
    return "ok"


def _worst(statuses: Sequence[str]) -> str:
    return max(statuses, key=_RANK.__getitem__, default="ok")


def _column(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DriftError(f"feature {name!r}: expected a 1-D column, got an array of shape {arr.shape}")
    return arr


def _as_float(values: Any, name: str) -> np.ndarray:
    """A numeric column as float64 (None -> NaN); no copy for float64 input."""
    arr = _column(values, name)
    if arr.dtype.kind in "biuf":
        return np.ascontiguousarray(arr, dtype=np.float64)  # strided views are several times slower
    if arr.dtype.kind == "O":
        try:
            return np.array([np.nan if v is None else v for v in arr.tolist()], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DriftError(
                f"feature {name!r} is declared numeric but holds non-numbers ({e}); "
                "declare it 'categorical' or convert it to numbers"
            ) from None
    raise DriftError(
        f"feature {name!r} is declared numeric but has dtype {arr.dtype}; "
        "declare it 'categorical' or convert it to numbers"
    )


def _bin_counts(x: np.ndarray, cuts: np.ndarray, total: int) -> np.ndarray:
    """Counts of non-NaN ``x`` in right-closed bins (-inf, c0], (c0, c1], ..., (c_last, +inf)."""
    if cuts.size == 0:
        return np.array([total], dtype=np.int64)
    if cuts.size <= _MAX_COMPARE_CUTS:
        # NaN <= c is False, so NaNs drop out; -inf lands in the first bin, +inf in the last.
        at_or_below = [np.count_nonzero(x <= c) for c in cuts.tolist()]
        return np.diff(np.array([0, *at_or_below, total], dtype=np.int64))
    valid = x[~np.isnan(x)] if total != x.size else x
    return np.bincount(np.searchsorted(cuts, valid, side="left"), minlength=cuts.size + 1).astype(np.int64)


def _smoothed(counts: np.ndarray, epsilon: float) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + epsilon) / (counts.sum() + epsilon * counts.size)


def _divergences(current: np.ndarray, reference: np.ndarray, epsilon: float) -> dict[str, float]:
    """PSI, KL(current || reference) in nats and JS (base 2) of the smoothed count vectors."""
    p, q = _smoothed(current, epsilon), _smoothed(reference, epsilon)
    log_ratio = np.log(p / q)
    m = 0.5 * (p + q)
    js = 0.5 * float(np.sum(p * np.log2(p / m))) + 0.5 * float(np.sum(q * np.log2(q / m)))
    return {
        "psi": float(np.sum((p - q) * log_ratio)),  # every term is >= 0
        "kl": max(0.0, float(np.sum(p * log_ratio))),  # clamp rounding below 0
        "js": min(1.0, max(0.0, js)),
    }


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, (float, np.floating)):
        return bool(np.isnan(v))
    return False


def _key(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def _value_counts(values: Any, name: str) -> tuple[dict[str, int], int]:
    """(str(value) -> count for non-missing values, number of missing (None/NaN) values)."""
    arr = _column(values, name)
    kind = arr.dtype.kind
    if kind in "biufUS":
        missing = 0
        if kind == "f":
            nan = np.isnan(arr)
            missing = int(np.count_nonzero(nan))
            if missing:
                arr = arr[~nan]
        uniq, counts = np.unique(arr, return_counts=True)
        out: dict[str, int] = {}
        for v, n in zip(uniq.tolist(), counts.tolist()):
            k = _key(v)
            out[k] = out.get(k, 0) + n
        return out, missing
    # object, datetime, complex, ...: count Python values, then merge by their str()
    out, missing = {}, 0
    try:
        counted = Counter(arr.tolist())
    except TypeError as e:
        raise DriftError(f"feature {name!r}: categorical values must be hashable ({e})") from None
    for v, n in counted.items():
        if _is_missing(v):
            missing += n
        else:
            k = _key(v)
            out[k] = out.get(k, 0) + n
    return out, missing


# --------------------------------------------------------------------------- reference stats


def reference_stats(columns: Mapping[str, np.ndarray], kinds: Mapping[str, str], bins: int = 10) -> dict:
    """Per-feature summary of the reference split that :func:`compare` measures drift against.

    Args:
        columns: feature name -> 1-D column; every column needs a kind.
        kinds: feature name -> ``"numeric"`` or ``"categorical"``; defines the features and
            their order.
        bins: quantile bins per numeric feature, >= 2.

    Returns:
        ``{"bins": bins, "features": {name: stats}}``, plain data. Numeric stats:
        ``kind, count`` (non-missing values, +-inf included), ``missing`` (NaN/None),
        ``mean, std`` (population), ``min, max`` (of the finite values; None when there are
        none), ``edges`` (ascending interior cut points; bins are right-closed,
        ``(-inf, e0], (e0, e1], ..., (e_last, +inf)``), ``counts`` (values per bin,
        ``len(edges) + 1`` ints). Edges are the de-duplicated quantiles of the finite values
        at ``linspace(0, 1, bins + 1)``: a cut at the maximum moves just below it so the
        maximum gets its own bin, and cuts that would leave a reference bin empty are
        dropped, so every bin holds reference mass; a constant column has one bin.
        Categorical stats: ``kind, count, missing, counts`` (str(value) -> count, most
        frequent first).

    Raises:
        DriftError: unknown kinds, features without a column or columns without a kind,
            non-1-D columns, non-numeric values in a numeric column, bad ``bins``.
    """
    if isinstance(bins, (bool, np.bool_)) or not isinstance(bins, numbers.Integral) or bins < 2:
        raise DriftError(f"bins={bins!r}: expected an integer >= 2")
    problems = [f"feature {n!r}: kind {k!r} is not one of {list(KINDS)}" for n, k in kinds.items() if k not in KINDS]
    missing = [n for n in kinds if n not in columns]
    extra = [n for n in columns if n not in kinds]
    if missing:
        problems.append(f"features without a column: {missing}")
    if extra:
        problems.append(f"columns without a kind: {extra} (add them to kinds as 'numeric' or 'categorical', or drop them)")
    if problems:
        raise DriftError("cannot compute reference stats:\n  - " + "\n  - ".join(problems))
    features = {}
    for name, kind in kinds.items():
        if kind == "numeric":
            features[name] = _numeric_reference(_as_float(columns[name], name), int(bins))
        else:
            counts, n_missing = _value_counts(columns[name], name)
            ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
            features[name] = {
                "kind": "categorical",
                "count": int(sum(ordered.values())),
                "missing": int(n_missing),
                "counts": ordered,
            }
    return {"bins": int(bins), "features": features}


def _numeric_reference(x: np.ndarray, bins: int) -> dict:
    nan = np.isnan(x)
    n_missing = int(np.count_nonzero(nan))
    count = x.size - n_missing
    finite_mask = np.isfinite(x)
    n_finite = int(np.count_nonzero(finite_mask))
    finite = x if n_finite == x.size else x[finite_mask]
    if n_finite:
        lo, hi = float(finite.min()), float(finite.max())
        cuts = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
        if cuts[-1] >= hi:  # right-closed bins would leave (max, inf) empty: cut just below max
            cuts[-1] = np.nextafter(hi, -np.inf)
            cuts = np.unique(cuts)
        with np.errstate(over="ignore", invalid="ignore"):  # |x| near float max: reported as None
            mean, std = float(finite.mean()), float(finite.std())
    else:
        lo = hi = mean = std = None
        cuts = np.empty(0, dtype=np.float64)
    counts = _bin_counts(x, cuts, count)
    # Interpolated quantiles between distinct values (discrete data) leave bins without
    # reference mass, where any current value would dominate PSI: merge them rightwards.
    # Removing a cut with an empty bin below it leaves the other counts unchanged.
    keep = counts[:-1] > 0
    if count and not keep.all():
        cuts = cuts[keep]
        counts = counts[np.append(keep, True)]
    return {
        "kind": "numeric",
        "count": int(count),
        "missing": n_missing,
        "mean": None if mean is None else _finite_or_none(mean),
        "std": None if std is None else _finite_or_none(std),
        "min": lo,
        "max": hi,
        "edges": [float(c) for c in cuts.tolist()],
        "counts": [int(c) for c in counts.tolist()],
    }


# --------------------------------------------------------------------------- compare


def compare(reference: dict, columns: Mapping[str, np.ndarray], thresholds: DriftThresholds) -> dict:
    """Drift of ``columns`` against ``reference`` (the output of :func:`reference_stats`).

    Args:
        reference: reference stats; its features are the ones compared.
        columns: feature name -> 1-D column of the current data; extra columns are ignored.
        thresholds: warn/alert levels, the smoothing ``epsilon`` and the test's ``alpha``.

    Returns:
        ``{"features": {name: {...}}, "summary": {...}, "status": worst}``, plain data.
        Every feature: ``kind, psi, kl, js`` (None when either side has no non-missing
        values), ``status``, ``count`` (current non-missing values), ``missing_rate``
        (``{"reference", "current"}``, missing / rows). NaN/None values are left out of
        the distributions. Numeric also: ``mean`` (``{"reference", "current"}``, finite
        values), ``out_of_range`` (fraction of current non-missing values outside the
        reference [min, max]; None without reference values). Categorical also:
        ``categories`` (bins compared), ``unseen`` (``{"rate", "values"}``: fraction of
        current values whose category the reference never saw, and up to 5 of them; they
        get their own bins with zero reference count before smoothing). A feature empty
        on exactly one side is ``alert``.
        The noise test (module docstring), per feature: ``p_value`` (Pearson's chi-square
        test of homogeneity over the tested bins; None when not testable), ``p_adjusted``
        (Benjamini-Hochberg over this comparison's testable features), ``significant``
        (``p_adjusted < thresholds.alpha``), ``noise_bound`` (the PSI, numeric, or JS,
        categorical, that noise alone exceeds with probability alpha at these sizes and bins;
        None where bins were merged or nothing was tested), ``testable`` (the counts support
        a test of >= 2 bins, or the feature has one bin: p 1), ``bins_tested`` (bins after
        merging; None when not testable). ``status`` is ``warn``/``alert`` only when
        ``significant``.
        Summary: ``max_psi, mean_psi, max_js`` (None without values), ``n_features, n_warn,
        n_alert, warn_features, alert_features`` (reference order), ``n_significant``,
        ``n_untestable, untestable_features`` (values on both sides, too few for the test;
        never ``warn``/``alert``), ``n_merged`` (features tested on merged bins),
        ``rows`` (rows of ``columns`` compared), ``rows_needed`` (rows that fill the
        reference's numeric bins with 5 expected values each, ``5 * bins``: fewer rows are
        tested on merged bins; None without numeric features).

    Raises:
        DriftError: naming every reference feature absent from ``columns``, or a
            malformed ``reference``.
    """
    features_ref = reference.get("features") if isinstance(reference, Mapping) else None
    if not isinstance(features_ref, Mapping):
        raise DriftError("reference must be the output of reference_stats(): a dict with a 'features' mapping")
    absent = [n for n in features_ref if n not in columns]
    if absent:
        raise DriftError(
            f"features in the reference but not in the data: {absent}; "
            f"pass a column for each (got columns {list(columns)})"
        )
    out = {}
    for name, ref in features_ref.items():
        kind = ref.get("kind")
        if kind == "numeric":
            out[name] = _compare_numeric(ref, _as_float(columns[name], name), thresholds)
        elif kind == "categorical":
            out[name] = _compare_categorical(ref, columns[name], name, thresholds)
        else:
            raise DriftError(f"reference feature {name!r} has kind {kind!r}, expected one of {list(KINDS)}")
    _decide(list(out.values()), thresholds)
    summary = _summary(out, reference.get("bins"), _rows(columns, out))
    return {"features": out, "summary": summary, "status": _worst([f["status"] for f in out.values()])}


def _rate(part: int, whole: int) -> float:
    return float(part) / whole if whole else 0.0


_UNTESTED = {"p_value": None, "p_adjusted": None, "significant": False, "noise_bound": None, "testable": False,
             "bins_tested": None}


def _metrics(
    current: np.ndarray, reference: np.ndarray, n_cur: int, n_ref: int, thresholds: DriftThresholds, by: str,
    ordered: bool,
) -> dict:
    """Divergences and the noise test of one feature; ``status`` is provisional until :func:`_decide`."""
    if n_cur == 0 or n_ref == 0:  # no distribution on one side: nothing to measure, nothing to test
        return {"psi": None, "kl": None, "js": None, "status": "alert" if n_cur or n_ref else "ok", **_UNTESTED}
    m = _divergences(current, reference, thresholds.epsilon)
    return {**m, "status": "ok", **_homogeneity(current, reference, ordered, thresholds.alpha, by)}


def _groups(pooled: np.ndarray, need: float, ordered: bool) -> np.ndarray | None:
    """Group index per bin so that every group's pooled count is >= ``need``; None: fewer than 2.

    Bins are taken in order (numeric: adjacent bins), or most frequent first (categories: the
    frequent ones stay alone, the rare ones pool with others as rare), and closed once they
    hold ``need``; a short last group joins the one before.
    """
    order = np.arange(pooled.size) if ordered else np.argsort(-pooled, kind="stable")
    labels = np.empty(pooled.size, dtype=np.int64)
    group, acc = 0, 0.0
    for j, v in zip(order.tolist(), pooled[order].tolist()):
        labels[j] = group
        acc += v
        if acc >= need:
            group, acc = group + 1, 0.0
    if acc > 0.0 and group:  # a short last group: join the previous one
        labels[labels == group] = group - 1
    n_groups = int(labels.max()) + 1
    return labels if n_groups >= 2 else None


def _homogeneity(current: np.ndarray, reference: np.ndarray, ordered: bool, alpha: float, by: str) -> dict:
    """Pearson's chi-square test of homogeneity of two count vectors over the same bins, bins
    merged until every expected count is >= MIN_EXPECTED (see the module docstring)."""
    from scipy.special import chdtrc, chdtri  # ~0.1 s the first time; scipy.stats would take ~0.5 s

    mass = (current + reference) > 0
    cur = current[mass].astype(np.float64)
    ref = reference[mass].astype(np.float64)
    n, m = float(ref.sum()), float(cur.sum())
    k = cur.size
    if k < 2:  # one bin: both sides' fractions are 1 whatever the data, so nothing can differ
        return {"p_value": 1.0, "p_adjusted": None, "significant": False, "noise_bound": 0.0, "testable": True,
                "bins_tested": k}
    need = MIN_EXPECTED * (n + m) / min(n, m)  # pooled count for both sides to expect >= 5
    labels = _groups(cur + ref, need, ordered)
    if labels is None:
        return dict(_UNTESTED)
    cur, ref = np.bincount(labels, weights=cur), np.bincount(labels, weights=ref)
    pooled = (cur + ref) / (n + m)
    x2 = float(np.sum((cur - m * pooled) ** 2 / (m * pooled)) + np.sum((ref - n * pooled) ** 2 / (n * pooled)))
    noise_bound = None
    if cur.size == k:  # no bins merged: the asymptotic bound describes the statistic at these bins
        scale = 1.0 if by == "psi" else 1.0 / (8.0 * math.log(2.0))  # JS is reported in bits
        noise_bound = _finite_or_none(chdtri(k - 1, alpha) * (1.0 / n + 1.0 / m) * scale)
    return {"p_value": min(1.0, max(0.0, float(chdtrc(cur.size - 1, x2)))), "p_adjusted": None,
            "significant": False, "noise_bound": noise_bound, "testable": True, "bins_tested": int(cur.size)}


def _bh(p: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control(p, method="bh")``)."""
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return adjusted.tolist()


def _decide(features: Sequence[dict], thresholds: DriftThresholds) -> None:
    """Adjust the p-values of ``features`` (one family) and set ``significant`` and ``status``."""
    tested = [f for f in features if f["p_value"] is not None]
    for f, p in zip(tested, _bh([f["p_value"] for f in tested])):
        f["p_adjusted"] = p
        f["significant"] = p < thresholds.alpha
    for f in features:
        if f["psi"] is None:  # one side empty: status set by _metrics
            continue
        value, warn, alert = (
            (f["psi"], thresholds.psi_warn, thresholds.psi_alert) if f.get("kind") == "numeric"
            else (f["js"], thresholds.js_warn, thresholds.js_alert)
        )
        f["status"] = _status(value, warn, alert) if f["significant"] else "ok"


def _compare_numeric(ref: Mapping, x: np.ndarray, thresholds: DriftThresholds) -> dict:
    cuts = np.asarray(ref["edges"], dtype=np.float64)
    ref_counts = np.asarray(ref["counts"], dtype=np.int64)
    n_missing = int(np.count_nonzero(np.isnan(x)))
    count = x.size - n_missing
    cur_counts = _bin_counts(x, cuts, count)
    finite = np.isfinite(x)
    n_finite = int(np.count_nonzero(finite))
    mean = None
    if n_finite:
        with np.errstate(over="ignore", invalid="ignore"):
            mean = _finite_or_none((x if n_finite == x.size else x[finite]).mean())
    out_of_range = None
    if ref["min"] is not None:
        outside = np.count_nonzero(x < ref["min"]) + np.count_nonzero(x > ref["max"])
        out_of_range = _rate(outside, count)
    return {
        "kind": "numeric",
        **_metrics(cur_counts, ref_counts, count, int(ref["count"]), thresholds, "psi", ordered=True),
        "count": int(count),
        "missing_rate": {
            "reference": _rate(ref["missing"], ref["count"] + ref["missing"]),
            "current": _rate(n_missing, x.size),
        },
        "mean": {"reference": ref["mean"], "current": mean},
        "out_of_range": out_of_range,
    }


def _compare_categorical(ref: Mapping, values: Any, name: str, thresholds: DriftThresholds) -> dict:
    ref_counts: Mapping[str, int] = ref["counts"]
    cur, n_missing = _value_counts(values, name)
    count = sum(cur.values())
    unseen = sorted((k for k in cur if k not in ref_counts), key=lambda k: (-cur[k], k))
    categories = [*ref_counts, *unseen]
    r = np.array([ref_counts.get(k, 0) for k in categories], dtype=np.int64)
    c = np.array([cur.get(k, 0) for k in categories], dtype=np.int64)
    return {
        "kind": "categorical",
        **_metrics(c, r, count, int(ref["count"]), thresholds, "js", ordered=False),
        "count": int(count),
        "missing_rate": {
            "reference": _rate(ref["missing"], ref["count"] + ref["missing"]),
            "current": _rate(n_missing, count + n_missing),
        },
        "categories": len(categories),
        "unseen": {"rate": _rate(sum(cur[k] for k in unseen), count), "values": unseen[:MAX_EXAMPLES]},
    }


def _rows(columns: Mapping[str, Any], features: Mapping[str, dict]) -> int:
    return max((len(columns[name]) for name in features), default=0)


def _summary(features: Mapping[str, dict], bins: Any, rows: int) -> dict:
    psis = [f["psi"] for f in features.values() if f["psi"] is not None]
    jss = [f["js"] for f in features.values() if f["js"] is not None]
    warn = [n for n, f in features.items() if f["status"] == "warn"]
    alert = [n for n, f in features.items() if f["status"] == "alert"]
    untestable = [n for n, f in features.items() if not f["testable"] and f["psi"] is not None]
    merged = [n for n, f in features.items() if f["testable"] and f["noise_bound"] is None]
    numeric = any(f["kind"] == "numeric" for f in features.values())
    return {
        "n_features": len(features),
        "max_psi": max(psis) if psis else None,
        "mean_psi": math.fsum(psis) / len(psis) if psis else None,
        "max_js": max(jss) if jss else None,
        "n_warn": len(warn),
        "n_alert": len(alert),
        "warn_features": warn,
        "alert_features": alert,
        "n_significant": sum(1 for f in features.values() if f["significant"]),
        "n_untestable": len(untestable),
        "untestable_features": untestable,
        "n_merged": len(merged),
        "rows": int(rows),
        "rows_needed": int(math.ceil(MIN_EXPECTED * bins)) if numeric and _is_real(bins) else None,
    }


# --------------------------------------------------------------------------- labels


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _class_counts(labels: Any, index: Mapping[Any, int], n_classes: int, what: str) -> np.ndarray:
    """Counts per class position; the extra last slot counts labels not in the classes."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DriftError(f"{what}: expected a 1-D array of labels, got shape {arr.shape}")
    counts = np.zeros(n_classes + 1, dtype=np.int64)
    if arr.dtype.kind in "biufUS":
        uniq, n = np.unique(arr, return_counts=True)
        pairs = zip(uniq.tolist(), n.tolist())
    else:
        try:
            pairs = Counter(arr.tolist()).items()
        except TypeError as e:
            raise DriftError(f"{what}: labels must be hashable ({e})") from None
    for v, k in pairs:
        counts[index.get(v, n_classes) if not _is_missing(v) else n_classes] += k
    return counts



def _label_report(ref: np.ndarray, cur: np.ndarray, classes: list, thresholds: DriftThresholds) -> dict:
    """The label-shift report of reference and current counts per class (then unknown)."""
    n_ref, n_cur = int(ref.sum()), int(cur.sum())
    bucket = slice(None) if ref[-1] or cur[-1] else slice(0, len(classes))
    out = {
        "classes": classes,
        "reference": [_rate(int(k), n_ref) for k in ref[:-1]],
        "current": [_rate(int(k), n_cur) for k in cur[:-1]],
        "unknown": {"reference": _rate(int(ref[-1]), n_ref), "current": _rate(int(cur[-1]), n_cur)},
        "counts": {"reference": [int(k) for k in ref], "current": [int(k) for k in cur]},
        **_metrics(cur[bucket], ref[bucket], n_cur, n_ref, thresholds, "js", ordered=False),
    }
    _decide([out], thresholds)
    return out

def label_shift(reference_labels: np.ndarray, labels: np.ndarray, classes: Sequence, thresholds: DriftThresholds) -> dict:
    """Class-distribution shift of ``labels`` against ``reference_labels``.

    Args:
        reference_labels, labels: 1-D label arrays; a label matches a class by Python
            equality (``1 == 1.0``; ``"1" != 1``); NaN/None and labels not in ``classes``
            count as unknown.
        classes: the class values, in the order of the returned lists.
        thresholds: JS warn/alert levels, ``epsilon`` and ``alpha``.

    Returns:
        ``{"classes", "reference", "current"`` (fractions per class, classes order),
        ``"unknown": {"reference", "current"}`` (fractions), ``"counts": {"reference",
        "current"}`` (ints per class, then unknown), ``"psi", "kl", "js", "status"`` (status
        by JS, warn/alert only when significant), and the noise test's ``"p_value",
        "p_adjusted"`` (== p_value: one test), ``"significant", "noise_bound", "testable",
        "bins_tested"}`` as in :func:`compare` (rare classes merged for the test). The
        unknown bucket joins the compared bins only when either side has unknown labels.
        Metrics are None and status ``alert`` when exactly one side is empty (``ok`` when
        both are).

    Raises:
        DriftError: empty, duplicate or unhashable classes; labels not 1-D.
    """
    classes = [_plain(c) for c in classes]
    if not classes:
        raise DriftError("classes is empty: pass the class values of the labels")
    try:
        index = {c: i for i, c in enumerate(classes)}
    except TypeError as e:
        raise DriftError(f"classes must be hashable values ({e})") from None
    if len(index) != len(classes):
        raise DriftError(f"classes={classes!r}: values must be unique")
    ref = _class_counts(reference_labels, index, len(classes), "reference_labels")
    return _label_report(ref, _class_counts(labels, index, len(classes), "labels"), classes, thresholds)


# --------------------------------------------------------------------------- regression target


TARGET = "target"


def target_drift(reference: dict, values: np.ndarray, thresholds: DriftThresholds) -> dict:
    """Drift of a regression target against its reference stats, as a numeric feature's.

    Args:
        reference: the target's stats: ``reference_stats({"target": y}, {"target": "numeric"},
            bins)["features"]["target"]``.
        values: the current split's target values (1-D numbers).
        thresholds: PSI warn/alert levels (PSI decides, as for numeric features), ``epsilon``
            and ``alpha``.

    Returns:
        What :func:`compare` gives a numeric feature: ``kind, psi, kl, js, status, p_value,
        p_adjusted`` (== p_value: one test), ``significant, noise_bound, testable, bins_tested,
        count, missing_rate, mean, out_of_range``, plain data.

    Raises:
        DriftError: non-numeric or non-1-D values.
    """
    out = _compare_numeric(reference, _as_float(values, TARGET), thresholds)
    _decide([out], thresholds)
    return out


# --------------------------------------------------------------------------- shared rows


class _Part:
    """One column (or the whole 2-D array) of both sides, encoded to comparable row bytes."""

    def __init__(self, a: np.ndarray, b: np.ndarray, name: str):
        self.name = name
        ka, kb = a.dtype.kind, b.dtype.kind
        if ka in "biufc" and kb in "biufc":
            self.dtype = np.result_type(a.dtype, b.dtype).newbyteorder("=")
            self.float = self.dtype.kind in "fc"
        elif ka == kb and ka in "US":  # str/bytes: pad both to the longer width
            self.dtype, self.float = np.result_type(a.dtype, b.dtype).newbyteorder("="), False
        elif a.dtype == b.dtype and ka != "O":  # datetime, void, ...: raw bytes
            self.dtype, self.float = a.dtype.newbyteorder("="), False
        else:  # mixed or object: compare str(value), missing values equal to each other
            a, b = _as_str(a), _as_str(b)
            self.dtype, self.float = np.result_type(a.dtype, b.dtype), False
        width = math.prod(a.shape[1:])
        self.sides = (a.reshape(len(a), width), b.reshape(len(b), width))

    def bytes(self, side: int, rows: slice | np.ndarray) -> np.ndarray:
        """(rows, nbytes) uint8 canonical encoding: -0.0 -> 0.0 and one NaN bit pattern."""
        block = self.sides[side][rows]
        if self.float:
            block = block.astype(self.dtype, copy=True)
            if block.dtype.kind == "c":
                block = block.view(np.dtype(f"f{block.dtype.itemsize // 2}"))
            block += 0.0  # -0.0 + 0.0 == +0.0
            np.copyto(block, np.nan, where=np.isnan(block))
        else:
            block = np.ascontiguousarray(block.astype(self.dtype, copy=False))
        return block.view(np.uint8).reshape(len(block), -1)


def _as_str(arr: np.ndarray) -> np.ndarray:
    flat = [_MISSING_STR if _is_missing(v) else _key(v) for v in arr.reshape(-1).tolist()]
    return np.array(flat, dtype=str).reshape(arr.shape)


def _row_words(parts: Sequence[_Part], side: int, rows: slice | np.ndarray) -> np.ndarray:
    raw = [p.bytes(side, rows) for p in parts]
    raw = raw[0] if len(raw) == 1 else np.concatenate(raw, axis=1)
    pad = -raw.shape[1] % 8
    if pad or not raw.flags.c_contiguous:
        raw = np.concatenate([raw, np.zeros((len(raw), pad), dtype=np.uint8)], axis=1)
    return raw.view(np.uint64)


def _multipliers(n_words: int) -> np.ndarray:
    rng = np.random.default_rng(0x6B65656C)  # fixed: hashes only need to agree within one call
    return rng.integers(0, 2**64 - 1, size=n_words, dtype=np.uint64, endpoint=True) | np.uint64(1)


def _row_hashes(parts: Sequence[_Part], side: int, n_rows: int, row_bytes: int) -> np.ndarray:
    """64-bit hash per row: sum over words of mix(word * odd_k) (wrapping uint64).

    Each term is a bijection of its word, so rows differing in a single word never collide.
    """
    out = np.empty(n_rows, dtype=np.uint64)
    mult = _multipliers((row_bytes + 7) // 8)
    step = max(1, _BLOCK_BYTES // max(row_bytes, 1))
    for start in range(0, n_rows, step):
        w = _row_words(parts, side, slice(start, start + step)) * mult
        w ^= w >> np.uint64(29)
        out[start : start + step] = w.sum(axis=1, dtype=np.uint64)
    return out


def _rows_equal(parts: Sequence[_Part], ref_rows: np.ndarray, other_rows: np.ndarray, row_bytes: int) -> np.ndarray:
    eq = np.empty(len(other_rows), dtype=bool)
    step = max(1, _BLOCK_BYTES // max(row_bytes, 1))
    for s in range(0, len(other_rows), step):
        a = _row_words(parts, 0, ref_rows[s : s + step])
        b = _row_words(parts, 1, other_rows[s : s + step])
        eq[s : s + step] = (a == b).all(axis=1)
    return eq


def _parts(reference: Any, other: Any) -> tuple[list[_Part], int, int]:
    if isinstance(reference, Mapping) != isinstance(other, Mapping):
        raise DriftError("shared_rows: pass two arrays or two column mappings, not one of each")
    if isinstance(reference, Mapping):
        if set(reference) != set(other):
            only_ref = [k for k in reference if k not in other]
            only_other = [k for k in other if k not in reference]
            raise DriftError(
                f"shared_rows: column names differ: only in reference {only_ref}, only in other {only_other}"
            )
        if not reference:
            raise DriftError("shared_rows: no columns given")
        sizes = []
        parts = []
        for name in reference:
            a, b = np.asarray(reference[name]), np.asarray(other[name])
            if a.ndim == 0 or b.ndim == 0 or a.shape[1:] != b.shape[1:]:
                raise DriftError(
                    f"shared_rows: column {name!r} has shapes {a.shape} and {b.shape}; expected 1-D columns "
                    "(or equal per-row shapes)"
                )
            sizes.append((name, len(a), len(b)))
            parts.append(_Part(a, b, str(name)))
        for side, label in ((1, "reference"), (2, "other")):
            lengths = {s[side] for s in sizes}
            if len(lengths) > 1:
                raise DriftError(f"shared_rows: {label} columns have different lengths: {[(s[0], s[side]) for s in sizes]}")
        return parts, sizes[0][1], sizes[0][2]
    a, b = np.asarray(reference), np.asarray(other)
    if a.ndim == 0 or b.ndim == 0 or a.shape[1:] != b.shape[1:]:
        raise DriftError(
            f"shared_rows: row shapes differ: reference {a.shape}, other {b.shape}; expected (N, ...) arrays "
            "with the same shape after the first axis"
        )
    return [_Part(np.ascontiguousarray(a), np.ascontiguousarray(b), "rows")], len(a), len(b)


def shared_rows(reference: np.ndarray | Mapping[str, np.ndarray], other: np.ndarray | Mapping[str, np.ndarray]) -> dict:
    """Rows of ``other`` that also occur exactly in ``reference`` (train/test leakage).

    Rows are compared on their values: a 2-D-or-more array ``(N, ...)`` row by row, or a
    mapping of equal-length columns (same names on both sides) across all columns. Numeric
    columns are cast to their common dtype (int 1 == float 1.0), then compared bytewise
    with ``-0.0 == 0.0`` and every NaN equal to every NaN (a record with the same missing
    fields is the same record). Object and mixed str/number columns compare ``str(value)``
    with None/NaN equal to each other. Exact: 64-bit row hashes select candidates, whose
    bytes are then compared.

    Returns:
        ``{"count"`` (rows of ``other`` found in ``reference``, repeats included),
        ``"fraction"`` (count / len(other), 0.0 when empty), ``"rows"`` (len(other)),
        ``"examples"`` (up to 5 ascending row indices of ``other``)}.

    Raises:
        DriftError: mixing an array and a mapping, different column names, row shapes or
            column lengths.
    """
    parts, n_ref, n_other = _parts(reference, other)
    row_bytes = sum(p.dtype.itemsize * p.sides[0].shape[1] for p in parts)
    found = np.empty(0, dtype=np.int64)
    if n_ref and n_other and row_bytes:
        h_ref_rows = _row_hashes(parts, 0, n_ref, row_bytes)
        ref_hashes = np.sort(h_ref_rows)
        h_other = _row_hashes(parts, 1, n_other, row_bytes)
        order = np.argsort(h_other)
        keys = h_other[order]
        pos = np.searchsorted(ref_hashes, keys)  # sorted keys: the search walks ref_hashes once
        pos[pos == n_ref] = 0
        hit = ref_hashes[pos] == keys
        if hit.any():
            candidates = np.sort(order[hit])
            ref_order = np.argsort(h_ref_rows)  # ref_hashes == h_ref_rows[ref_order]
            first = np.searchsorted(ref_hashes, h_other[candidates])
            eq = _rows_equal(parts, ref_order[first], candidates, row_bytes)
            # A hash shared by different rows (a collision): try the other reference rows with it.
            for i in np.flatnonzero(~eq).tolist():
                j, h = int(first[i]) + 1, ref_hashes[first[i]]
                while j < n_ref and ref_hashes[j] == h and not eq[i]:
                    eq[i] = bool(_rows_equal(parts, ref_order[j : j + 1], candidates[i : i + 1], row_bytes)[0])
                    j += 1
            found = candidates[eq]
    elif n_ref and n_other:  # zero-width rows are all equal
        found = np.arange(n_other)
    count = int(found.size)
    return {
        "count": count,
        "fraction": _rate(count, n_other),
        "rows": int(n_other),
        "examples": [int(i) for i in found[:MAX_EXAMPLES].tolist()],
    }


# --------------------------------------------------------------------------- report


def drift_report(
    reference_columns: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    splits: Mapping[str, Mapping[str, np.ndarray]],
    reference_labels: np.ndarray | None,
    split_labels: Mapping[str, np.ndarray],
    classes: Sequence,
    thresholds: DriftThresholds,
    reference_rows: np.ndarray | Mapping[str, np.ndarray] | None = None,
    split_rows: Mapping[str, Any] | None = None,
    reference_target: np.ndarray | None = None,
    split_targets: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """Reference stats, then feature drift, label shift (or target drift) and leakage for every split.

    Args:
        reference_columns, kinds: as :func:`reference_stats` (binned with ``thresholds.bins``).
        splits: split name -> its feature columns.
        reference_labels: reference labels, or None to skip label shift.
        split_labels: split name -> labels; needs every split when ``reference_labels`` is given.
        classes: class values for :func:`label_shift`.
        thresholds: warn/alert levels, bins and smoothing.
        reference_rows, split_rows: rows for :func:`shared_rows` (array or column mapping);
            leakage is computed for the splits in ``split_rows``, None elsewhere.
        reference_target, split_targets: a regression target (reference values, and values
            per split; every split needed): compared as a numeric distribution
            (:func:`target_drift`, bins from the reference). None: no target drift.

    Returns:
        ``{"thresholds", "reference", "splits": {name: {"features", "summary", "labels",
        "leakage", "status"}}, "status"}``, plain data. A split's status is the worst of its
        features and labels (or target), and at least ``warn`` when it shares rows with the
        reference. Each split's features are one family for the noise test's multiplicity
        adjustment; its labels (or target) are one test. With ``reference_target``: each
        split also has ``"target"`` (:func:`target_drift`) and the report
        ``"target_reference"`` (the target's reference stats, as a numeric feature's in
        ``reference``); ``"reference"`` holds the features only.

    Raises:
        DriftError: as the functions above; splits without labels or targets; ``split_rows``
            without ``reference_rows`` or naming unknown splits.
    """
    if reference_labels is not None:
        unlabeled = [s for s in splits if s not in split_labels]
        if unlabeled:
            raise DriftError(f"splits without labels: {unlabeled}; add them to split_labels or pass reference_labels=None")
    target_ref = None
    if reference_target is not None:
        missing = [s for s in splits if s not in (split_targets or {})]
        if missing:
            raise DriftError(f"splits without targets: {missing}; add them to split_targets or pass "
                             "reference_target=None")
        target_ref = reference_stats({TARGET: reference_target}, {TARGET: "numeric"}, bins=thresholds.bins)
        target_ref = target_ref["features"][TARGET]
    if split_rows:
        if reference_rows is None:
            raise DriftError("split_rows given without reference_rows: pass the reference rows too")
        unknown = [s for s in split_rows if s not in splits]
        if unknown:
            raise DriftError(f"split_rows names splits that are not in splits: {unknown}")
    stats = reference_stats(reference_columns, kinds, bins=thresholds.bins)
    out = {}
    for name, columns in splits.items():
        drift = compare(stats, columns, thresholds)
        labels = None
        if reference_labels is not None:
            labels = label_shift(reference_labels, split_labels[name], classes, thresholds)
        leakage = None
        if split_rows and name in split_rows:
            leakage = shared_rows(reference_rows, split_rows[name])
        status = [drift["status"]]
        if labels is not None:
            status.append(labels["status"])
        target = None
        if target_ref is not None:
            target = target_drift(target_ref, split_targets[name], thresholds)
            status.append(target["status"])
        if leakage is not None and leakage["count"]:
            status.append("warn")
        entry: dict[str, Any] = {"features": drift["features"], "summary": drift["summary"], "labels": labels}
        if target_ref is not None:  # regression only: classification reports keep their keys
            entry["target"] = target
        out[name] = {**entry, "leakage": leakage, "status": _worst(status)}
    report = {
        "thresholds": thresholds.to_dict(),
        "reference": stats,
        "splits": out,
        "status": _worst([s["status"] for s in out.values()]),
    }
    if target_ref is not None:
        report["target_reference"] = target_ref
    return report


def _fmt(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.1e}" if 0 < p < 1e-3 else f"{p:.3f}"


def _noise_lines(s: Mapping[str, Any], alpha: float) -> list[str]:
    """What the noise test could say about one comparison: significant, untestable, merged, rows."""
    if "n_significant" not in s:  # a report from before the noise test
        return []
    n, untestable = s["n_features"], s["n_untestable"]
    parts = []
    if n > untestable:
        parts.append(f"{s['n_significant']} of {n - untestable} tested features beyond sampling noise "
                     f"(chi-square p < {alpha:g}, Benjamini-Hochberg)")
    if untestable:
        names = ", ".join(s["untestable_features"][:MAX_EXAMPLES]) + (", ..." if untestable > MAX_EXAMPLES else "")
        parts.append(f"{untestable} not testable ({names}): no alert raised for them")
    if s["n_merged"]:
        parts.append(f"{s['n_merged']} tested on merged bins (too few values for all bins)")
    lines = ["  noise test: " + "; ".join(parts)] if parts else []
    rows, needed = s["rows"], s["rows_needed"]
    if n and untestable == n:
        lines.append(f"  {rows} rows: too few for the drift test (needs >= {2 * MIN_EXPECTED:g}: {MIN_EXPECTED:g} "
                     "expected values in each of at least 2 bins); no alert raised")
    elif needed is not None and rows < needed:
        lines.append(f"  {rows} rows: too few for the drift test at {needed // int(MIN_EXPECTED)} bins (needs >= "
                     f"{needed}); tested on merged bins, so only large shifts can alert")
    return lines


def format_report(report: dict, max_features: int = 10) -> str:
    """A few lines per split: status, the noise test (features beyond sampling noise, features
    not testable at these sizes, too few rows), label shift (or a regression target's drift),
    leakage and the ``max_features`` features most severe relative to their alert threshold
    (PSI for numeric, JS for categorical), with their BH-adjusted p-values."""
    t = {**DriftThresholds().to_dict(), **(report.get("thresholds") or {})}  # old reports lack alpha
    lines = [
        f"drift report: {report['status'].upper()} "
        f"(psi warn/alert {t['psi_warn']:g}/{t['psi_alert']:g}, js warn/alert {t['js_warn']:g}/{t['js_alert']:g}; "
        f"only beyond sampling noise: p < {t['alpha']:g})"
    ]
    for name, split in report["splits"].items():
        s = split["summary"]
        lines.append(
            f"[{name}] {split['status'].upper()}: {s['n_alert']} alert, {s['n_warn']} warn of {s['n_features']} "
            f"features; max psi {_fmt(s['max_psi'])}, mean psi {_fmt(s['mean_psi'])}, max js {_fmt(s['max_js'])}"
        )
        lines += _noise_lines(s, t["alpha"])
        labels = split.get("labels")
        if labels is not None:
            unknown = labels["unknown"]["current"]
            extra = f", {unknown:.2%} unknown" if unknown else ""
            lines.append(f"  labels: js {_fmt(labels['js'])}, psi {_fmt(labels['psi'])}, "
                         f"p {_fmt_p(labels.get('p_value'))} ({labels['status']}{extra})")
        target = split.get("target")
        if target is not None:
            notes = [f"mean {_fmt(target['mean']['reference'], 3)} -> {_fmt(target['mean']['current'], 3)}"]
            if target.get("out_of_range"):
                notes.append(f"out of range {target['out_of_range']:.1%}")
            lines.append(f"  target: psi {_fmt(target['psi'])}, js {_fmt(target['js'])}, "
                         f"p {_fmt_p(target.get('p_value'))} ({target['status']}; {'; '.join(notes)})")
        leak = split.get("leakage")
        if leak is not None:
            ex = f", e.g. rows {', '.join(map(str, leak['examples']))}" if leak["examples"] else ""
            lines.append(f"  leakage: {leak['count']} of {leak['rows']} rows ({leak['fraction']:.2%}) also in the reference{ex}")

        def severity(item: tuple[str, dict]) -> tuple[int, float]:
            f = item[1]
            value, alert = (f["psi"], t["psi_alert"]) if f["kind"] == "numeric" else (f["js"], t["js_alert"])
            return (_RANK[f["status"]], -1.0 if value is None else value / alert)

        top = sorted(split["features"].items(), key=severity, reverse=True)[: max(0, max_features)]
        if top:
            width = max(len(n) for n, _ in top)
            lines.append(f"  top {len(top)} of {len(split['features'])} features:")
            for fname, f in top:
                notes = []
                if f.get("testable") is False and f["psi"] is not None:
                    notes.append("not testable: too few values")
                elif f.get("testable") and f.get("noise_bound") is None:
                    notes.append(f"tested on {f['bins_tested']} merged bins")
                if f["missing_rate"]["current"] or f["missing_rate"]["reference"]:
                    notes.append(f"missing {f['missing_rate']['reference']:.1%} -> {f['missing_rate']['current']:.1%}")
                if f["kind"] == "categorical" and f["unseen"]["rate"]:
                    notes.append(f"unseen {f['unseen']['rate']:.1%}")
                if f["kind"] == "numeric" and f.get("out_of_range"):
                    notes.append(f"out of range {f['out_of_range']:.1%}")
                line = (f"    {fname:<{width}}  {f['kind']:<11}  psi {_fmt(f['psi'])}  js {_fmt(f['js'])}  "
                        f"p_adj {_fmt_p(f.get('p_adjusted')):<7}  {f['status']:<5}")
                lines.append((line + (f"  ({'; '.join(notes)})" if notes else "")).rstrip())
    return "\n".join(lines)


# Above this many flattened values per sample, drift is computed on per-channel summaries
# (mean/std/min/max of each sample) instead of on every value.
MAX_DRIFT_FEATURES = 256


def tensor_drift_columns(x: np.ndarray) -> dict[str, np.ndarray]:
    """Numeric drift features of tensor samples ``(N, *shape)``: every value (``x0``, ``x1``, ...
    in flattened order) up to MAX_DRIFT_FEATURES values per sample, else per-channel
    summaries of each sample (``c0.mean``, ``c0.std``, ``c0.min``, ``c0.max``, ...)."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(len(x), -1)
    if flat.shape[1] <= MAX_DRIFT_FEATURES:
        return {f"x{i}": flat[:, i] for i in range(flat.shape[1])}
    per_ch = x.reshape(len(x), x.shape[1] if x.ndim > 2 else 1, -1)
    cols = {}
    for c in range(per_ch.shape[1]):
        for stat in ("mean", "std", "min", "max"):
            cols[f"c{c}.{stat}"] = getattr(per_ch[:, c, :], stat)(axis=1)
    return cols


# --------------------------------------------------------------------------- streamed reference


class StreamingReference:
    """:func:`reference_stats` of columns that arrive in batches (a table larger than memory).

    Exact: ``count``, ``missing``, ``mean``, ``std`` (population, Chan's pairwise merge of batch
    moments), ``min``, ``max`` and the categorical counts (pass 1, :meth:`add`), and the numeric
    bin counts (pass 2, :meth:`add_bins`). The numeric bin edges are the quantiles of a uniform
    sample of the rows (:meth:`set_edges`; the caller draws it, e.g. a seeded bottom-k of row
    hashes), so only the cut points are approximate: every count in the result is the count of
    the full data in those bins, and :func:`compare`'s noise test stays valid for any cuts.
    Edges follow :func:`_numeric_reference`: a cut at the maximum moves just below it, and cuts
    that leave a reference bin empty are dropped after counting.

    Args:
        kinds: feature name -> ``numeric`` or ``categorical`` (the features and their order).
        bins: quantile bins per numeric feature, >= 2.
    """

    def __init__(self, kinds: Mapping[str, str], bins: int = 10) -> None:
        if isinstance(bins, (bool, np.bool_)) or not isinstance(bins, numbers.Integral) or bins < 2:
            raise DriftError(f"bins={bins!r}: expected an integer >= 2")
        bad = [f"feature {n!r}: kind {k!r} is not one of {list(KINDS)}" for n, k in kinds.items() if k not in KINDS]
        if bad:
            raise DriftError("cannot compute reference stats:\n  - " + "\n  - ".join(bad))
        self.kinds, self.bins = dict(kinds), int(bins)
        self._num = {n: {"count": 0, "missing": 0, "n": 0, "mean": 0.0, "m2": 0.0, "lo": math.inf, "hi": -math.inf}
                     for n, k in kinds.items() if k == "numeric"}
        self._cat: dict[str, tuple[Counter, list[int]]] = {n: (Counter(), [0]) for n, k in kinds.items()
                                                           if k == "categorical"}
        self._cuts: dict[str, np.ndarray] = {}
        self._bin_counts: dict[str, np.ndarray] = {}

    def add(self, columns: Mapping[str, Any]) -> None:
        """Pass 1: one batch of every feature's values."""
        for name, acc in self._num.items():
            x = _as_float(columns[name], name)
            nan = np.isnan(x)
            acc["missing"] += int(np.count_nonzero(nan))
            acc["count"] += int(x.size - np.count_nonzero(nan))
            finite = x[np.isfinite(x)]
            if not finite.size:
                continue
            m = finite.size
            with np.errstate(over="ignore", invalid="ignore"):
                mean_b = float(finite.mean())
                m2_b = float(np.sum((finite - mean_b) ** 2))
                n = acc["n"] + m
                delta = mean_b - acc["mean"]
                acc["mean"] += delta * m / n
                acc["m2"] += m2_b + delta * delta * acc["n"] * m / n
            acc["n"] = n
            acc["lo"] = min(acc["lo"], float(finite.min()))
            acc["hi"] = max(acc["hi"], float(finite.max()))
        for name, (counter, missing) in self._cat.items():
            counts, n_missing = _value_counts(columns[name], name)
            counter.update(counts)
            missing[0] += n_missing

    def set_edges(self, sample: Mapping[str, Any]) -> None:
        """The numeric bin edges, from a uniform sample of the rows (after pass 1)."""
        for name, acc in self._num.items():
            x = _as_float(sample[name], name)
            finite = x[np.isfinite(x)]
            if not acc["n"] or not finite.size:
                self._cuts[name] = np.empty(0, dtype=np.float64)
                continue
            cuts = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, self.bins + 1)[1:-1]))
            if cuts[-1] >= acc["hi"]:
                cuts[-1] = np.nextafter(acc["hi"], -np.inf)
                cuts = np.unique(cuts)
            self._cuts[name] = cuts
            self._bin_counts[name] = np.zeros(cuts.size + 1, dtype=np.int64)

    @property
    def needs_bins(self) -> bool:
        """Whether pass 2 (:meth:`add_bins`) has numeric features to count."""
        return any(c.size for c in self._cuts.values())

    def add_bins(self, columns: Mapping[str, Any]) -> None:
        """Pass 2: one batch of the numeric features, counted into the edges' bins."""
        for name, cuts in self._cuts.items():
            if cuts.size:
                x = _as_float(columns[name], name)
                total = int(x.size - np.count_nonzero(np.isnan(x)))
                self._bin_counts[name] += _bin_counts(x, cuts, total)

    def result(self) -> dict:
        """``{"bins", "features"}`` in :func:`reference_stats`' form, plain data."""
        features: dict[str, Any] = {}
        for name, kind in self.kinds.items():
            if kind == "categorical":
                counter, missing = self._cat[name]
                ordered = dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))
                features[name] = {"kind": "categorical", "count": int(sum(ordered.values())),
                                  "missing": int(missing[0]), "counts": {k: int(v) for k, v in ordered.items()}}
                continue
            acc = self._num[name]
            cuts = self._cuts.get(name, np.empty(0, dtype=np.float64))
            counts = self._bin_counts.get(name) if cuts.size else np.array([acc["count"]], dtype=np.int64)
            keep = counts[:-1] > 0
            if acc["count"] and not keep.all():
                cuts, counts = cuts[keep], counts[np.append(keep, True)]
            has = acc["n"] > 0
            features[name] = {
                "kind": "numeric",
                "count": int(acc["count"]),
                "missing": int(acc["missing"]),
                "mean": _finite_or_none(acc["mean"]) if has else None,
                "std": _finite_or_none(math.sqrt(max(acc["m2"], 0.0) / acc["n"])) if has else None,
                "min": acc["lo"] if has else None,
                "max": acc["hi"] if has else None,
                "edges": [float(c) for c in cuts.tolist()],
                "counts": [int(c) for c in counts.tolist()],
            }
        return {"bins": self.bins, "features": features}


def label_shift_counts(reference_counts: Sequence[int], labels: np.ndarray, classes: Sequence,
                       thresholds: DriftThresholds) -> dict:
    """:func:`label_shift` with the reference given as counts per class (``len(classes) + 1``
    ints, the last for unknown labels), for a reference too large to hold as labels."""
    classes = [_plain(c) for c in classes]
    if len(reference_counts) != len(classes) + 1:
        raise DriftError(f"reference_counts: expected {len(classes) + 1} counts (one per class, then unknown), "
                         f"got {len(reference_counts)}")
    index = {c: i for i, c in enumerate(classes)}
    ref = np.asarray(reference_counts, dtype=np.int64)
    return _label_report(ref, _class_counts(labels, index, len(classes), "labels"), classes, thresholds)


def shared_row_mask(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Which rows of ``other`` occur exactly in ``reference`` (two ``(N, ...)`` arrays), as a
    boolean mask: :func:`shared_rows` for a reference that comes in batches (OR the masks)."""
    parts, n_ref, n_other = _parts(reference, other)
    row_bytes = sum(p.dtype.itemsize * p.sides[0].shape[1] for p in parts)
    mask = np.zeros(n_other, dtype=bool)
    if not (n_ref and n_other):
        return mask
    if not row_bytes:
        mask[:] = True
        return mask
    h_ref_rows = _row_hashes(parts, 0, n_ref, row_bytes)
    ref_order = np.argsort(h_ref_rows)
    ref_hashes = h_ref_rows[ref_order]
    h_other = _row_hashes(parts, 1, n_other, row_bytes)
    pos = np.searchsorted(ref_hashes, h_other)
    pos[pos == n_ref] = 0
    candidates = np.flatnonzero(ref_hashes[pos] == h_other)
    if candidates.size:
        eq = _rows_equal(parts, ref_order[pos[candidates]], candidates, row_bytes)
        for i in np.flatnonzero(~eq).tolist():  # a collision: try the other reference rows with that hash
            j, h = int(pos[candidates[i]]) + 1, ref_hashes[pos[candidates[i]]]
            while j < n_ref and ref_hashes[j] == h and not eq[i]:
                eq[i] = bool(_rows_equal(parts, ref_order[j : j + 1], candidates[i : i + 1], row_bytes)[0])
                j += 1
        mask[candidates[eq]] = True
    return mask
