"""What ``keel serve`` exposes on ``GET /metrics`` (Prometheus text format, prometheus-client),
and the live drift of the rows it serves.

Metrics (one registry per app, so several apps in one process do not share counts; with
``--workers N`` (N > 1) prometheus-client's multiprocess mode instead, see below):

- ``keel_requests_total{endpoint,status}``, ``keel_request_seconds{endpoint}`` (whole request),
  ``keel_predict_in_flight``
- ``keel_model_seconds`` (one ONNX Runtime call), ``keel_batch_rows``, ``keel_batch_requests``
- ``keel_rows_predicted_total``, ``keel_contract_rejections_total{rule,column}`` (failing rows
  per violated rule, as the 422 report counts them; rows skipped with ``on_invalid=skip``
  count too)
- classification: ``keel_predictions_total{label}``; regression: ``keel_prediction`` (histogram
  over the training target's range); the task decides (``Task.serve_summary``)
- drift, per reference feature: ``keel_drift_psi``, ``keel_drift_js``, ``keel_drift_p_adjusted``
  (NaN until the window can be compared), ``keel_drift_testable`` (0: too few rows in the
  window for the noise test; such a feature never alerts), ``keel_drift_alert`` (1 in alert),
  ``keel_drift_state`` (state set: ok, warn, alert, untestable, empty); and
  ``keel_drift_window_rows``, ``keel_drift_alerts``; the bundle's levels
  ``keel_drift_threshold{statistic,level}`` (psi/js, warn/alert: what a dashboard draws the
  gauges against; a feature alerts at the alert level only when the noise test agrees).

Drift: a sliding window of the last ``window`` served rows (rows the contract accepted, the rows
the model saw), compared with the bundle's reference statistics by
:func:`keel.data.drift.compare` (the code of ``keel drift``, with the bundle's thresholds from its
config ``data.drift``), so the same rows give the same PSI as ``keel drift BUNDLE rows.csv``.
A feature entering or leaving ``alert`` is logged (logger ``keel.serve``, WARNING / INFO).

Several workers (``--workers N``): every worker writes its values to files in
``$PROMETHEUS_MULTIPROC_DIR`` (a fresh directory the parent makes before the workers start, see
``keel.serve.server.serve``) and ``GET /metrics``, whichever worker answers it, merges them with
prometheus-client's ``MultiProcessCollector``: counters and histograms are summed over the
workers (dead ones included, so no count goes backwards when a worker is replaced); there is no
``_created`` sample. Gauges say how they merge (``GAUGE_MODES``):

- ``keel_predict_in_flight``: ``livesum``, requests in flight on the whole server.
- drift (``keel_drift_*``): ``liveall``, one series per live worker with a ``pid`` label. Each
  worker compares its own window (the rows it served: a sample of the traffic) and alerts on its
  own; a sum or a max merged here would be a number no worker computed (a max over a NaN is
  whatever file came first), so the series are kept apart and the dashboard and the alert rules
  aggregate with ``max by (feature)`` (PromQL's ``max`` skips NaN): a feature is in alert when any
  worker's window says so, which with one worker is that worker's answer.

A worker that stops marks its live gauges dead (``mark_process_dead``); a worker that was killed
is marked by the next worker that starts (its pid no longer runs).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger("keel.serve")

ENDPOINTS = ("/predict", "/health", "/ready", "/info", "/metrics")
DRIFT_STATES = ("ok", "warn", "alert", "untestable", "empty")
# latency buckets (seconds): 0.25 ms .. 10 s
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's switch to multiprocess mode
# how each gauge merges over worker processes in multiprocess mode (see the module docstring)
GAUGE_MODES = {"keel_predict_in_flight": "livesum", **{f"keel_drift_{g}": "liveall" for g in (
    "psi", "js", "p_adjusted", "testable", "alert", "state", "window_rows", "alerts")},
    "keel_drift_threshold": "livemax"}  # the same bundle in every worker: one value


def drift_thresholds(manifest: Mapping[str, Any]) -> Any:
    """The bundle's drift thresholds: its config's ``data.drift`` (without ``enabled``), as the
    run used them; defaults for keys it lacks (older bundles have no ``alpha``)."""
    from keel.data.drift import DriftThresholds

    drift = ((manifest.get("config") or {}).get("data") or {}).get("drift")
    if not isinstance(drift, Mapping):
        return DriftThresholds()
    return DriftThresholds.from_dict({k: v for k, v in drift.items() if k != "enabled"})


def drift_columns(bundle: Any, data: Any, x: np.ndarray, kept: np.ndarray) -> dict[str, np.ndarray]:
    """The drift columns of the rows ``kept`` (row ids into ``data``) as ``keel drift`` builds
    them from a file: tables from the raw values (``table_drift_columns``; for the pandas-free
    CSV table the same numbers and strings), tensors from the model input ``x`` (those rows)."""
    from keel.data.drift import tensor_drift_columns
    from keel.serve.table import CsvTable

    if not bundle.is_table:
        return tensor_drift_columns(x)
    contract = bundle.contract
    if isinstance(data, CsvTable):
        out: dict[str, np.ndarray] = {}
        for c in contract.columns:
            if c.numeric:
                out[c.name] = data.numeric[c.name][kept].astype(np.float64)
            else:
                values = data.text[c.name]
                out[c.name] = np.array([values[i] for i in kept.tolist()], dtype=object)
        return out
    from keel.data.table_io import table_drift_columns

    return table_drift_columns(data.iloc[kept].reset_index(drop=True), contract)[0]


def tensor_drift_matrix(x: np.ndarray) -> np.ndarray:
    """:func:`keel.data.drift.tensor_drift_columns` of ``x`` as one ``(N, features)`` float64
    matrix, columns in that function's order (the same values: every value of each flattened
    sample, or the per-channel summaries), built without a dict of one-row columns."""
    from keel.data.drift import MAX_DRIFT_FEATURES, tensor_drift_columns

    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(len(x), -1)
    if flat.shape[1] <= MAX_DRIFT_FEATURES:
        return flat
    return np.column_stack(list(tensor_drift_columns(x).values()))


def tensor_drift_names(shape: tuple[int, ...]) -> list[str]:
    """The feature names of :func:`tensor_drift_matrix`'s columns for samples of ``shape``."""
    from keel.data.drift import tensor_drift_columns

    return list(tensor_drift_columns(np.zeros((1, *shape), dtype=np.float64)))


class DriftWindow:
    """The last ``size`` served rows' drift columns and their comparison with ``reference``.

    A preallocated ring buffer: the numeric features as one ``(size, features)`` float64 matrix
    (values converted as :func:`keel.data.drift.compare` converts them), the others as object
    arrays; adding rows writes them over the oldest ones, and a comparison reads the buffer
    oldest row first, so it sees the same values in the same order as ``keel drift`` on those
    rows (the same numbers, exactly).

    Thread-safe: rows are added from the event loop, :meth:`update` may run in a thread.
    """

    def __init__(self, reference: Mapping[str, Any], thresholds: Any, size: int = 1000) -> None:
        if not isinstance(size, int) or size < 1:
            from keel.errors import KeelError

            raise KeelError(f"drift window {size!r}: expected a number of rows >= 1, e.g. 1000")
        self.reference, self.thresholds, self.size = reference, thresholds, size
        self.features = list(reference["features"])
        kinds = {f: (reference["features"][f] or {}).get("kind") for f in self.features}
        # numeric features in one matrix; every other kind kept as given (compare names a bad kind)
        self.numeric = [f for f in self.features if kinds[f] == "numeric"]
        self.other = [f for f in self.features if kinds[f] != "numeric"]
        self._num = np.zeros((size, len(self.numeric)), dtype=np.float64)
        self._other = {f: np.empty(size, dtype=object) for f in self.other}
        self._next = 0  # slot of the next row
        self._held = 0  # rows in the buffer (<= size)
        self._lock = threading.Lock()
        self._dirty = False
        self.result: dict[str, Any] | None = None
        self.alerting: set[str] = set()

    @property
    def rows(self) -> int:
        """Rows in the window (at most ``size``)."""
        return self._held

    def add(self, columns: Mapping[str, np.ndarray]) -> None:
        """Append rows (feature -> 1-D column, equal lengths); the oldest beyond ``size`` go.

        Raises:
            DriftError: a numeric feature's column that is not numbers (as ``keel drift`` says).
        """
        from keel.data.drift import _as_float

        n = len(next(iter(columns.values()))) if columns else 0
        if not n:
            return
        keep = min(n, self.size)
        num = np.empty((keep, len(self.numeric)), dtype=np.float64)
        for j, f in enumerate(self.numeric):
            col = columns[f]
            if not (isinstance(col, np.ndarray) and col.dtype == np.float64 and col.ndim == 1):
                col = _as_float(col, f)  # what compare does to it
            num[:, j] = col[n - keep:]
        other = {f: np.asarray(columns[f])[n - keep:] for f in self.other}
        self._write(num, other, keep)

    def add_matrix(self, num: np.ndarray) -> None:
        """Append rows given as one ``(N, features)`` matrix whose columns are :attr:`numeric`
        in order (a window with numeric features only: tensor bundles, see
        :func:`tensor_drift_matrix`); the oldest beyond ``size`` go."""
        if self.other or num.ndim != 2 or num.shape[1] != len(self.numeric):
            raise ValueError(f"add_matrix: expected (N, {len(self.numeric)}) for a numeric-only window, got "
                             f"{num.shape} ({len(self.other)} other features)")
        n = len(num)
        if n:
            keep = min(n, self.size)
            self._write(num[n - keep:], {}, keep)

    def _write(self, num: np.ndarray, other: Mapping[str, np.ndarray], n: int) -> None:
        with self._lock:
            at = self._next
            first = min(n, self.size - at)  # up to the buffer's end, the rest from its start
            self._num[at:at + first] = num[:first]
            self._num[:n - first] = num[first:]
            for f, values in other.items():
                buf = self._other[f]
                buf[at:at + first] = values[:first]
                buf[:n - first] = values[first:]
            self._next = (at + n) % self.size
            self._held = min(self.size, self._held + n)
            self._dirty = True

    def window(self) -> dict[str, np.ndarray]:
        """The window's columns, oldest row first: the last ``size`` rows (at most)."""
        with self._lock:
            held, at = self._held, self._next
            if not held:
                return {}

            def ordered(buf: np.ndarray) -> np.ndarray:
                return buf[:held].copy() if held < self.size else np.concatenate((buf[at:], buf[:at]))

            num = np.ascontiguousarray(ordered(self._num).T)  # a contiguous row per feature
            other = {f: ordered(buf) for f, buf in self._other.items()}
        cols = {f: num[j] for j, f in enumerate(self.numeric)}
        cols.update(other)
        return {f: cols[f] for f in self.features}

    def update(self) -> tuple[list[str], list[str]] | None:
        """Compare the window with the reference when rows came since the last time.

        Returns ``(entered, left)``: features that entered / left ``alert`` (None: nothing new).
        """
        from keel.data.drift import compare

        with self._lock:
            if not self._dirty:
                return None
            self._dirty = False
        columns = self.window()
        if not columns:
            return None
        result = compare(self.reference, columns, self.thresholds)
        now = {name for name, f in result["features"].items() if f["status"] == "alert"}
        entered, left = sorted(now - self.alerting), sorted(self.alerting - now)
        self.result, self.alerting = result, now
        return entered, left

    @staticmethod
    def state(feature: Mapping[str, Any] | None) -> str:
        """ok / warn / alert, or untestable (values on both sides, too few for the noise test,
        so no alert), or empty (no comparison yet)."""
        if feature is None:
            return "empty"
        if feature["status"] != "ok":
            return feature["status"]
        return "ok" if feature["testable"] else "untestable"


def _nan(v: Any) -> float:
    return math.nan if v is None else float(v)


def forget_dead_workers(path: str) -> list[int]:
    """Mark dead (``mark_process_dead``) every process whose live gauges are in the multiprocess
    directory ``path`` but that no longer runs (a worker killed without its shutdown); returns
    their pids. The live gauges of a stopped worker would otherwise stay in every scrape."""
    from prometheus_client import multiprocess

    dead = set()
    for f in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        m = re.search(r"_(\d+)\.db$", f)
        if m is None:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(pid)
        except PermissionError:  # it runs, as someone else
            pass
    for pid in sorted(dead):
        multiprocess.mark_process_dead(pid, path)
    return sorted(dead)


class ServeMetrics:
    """Every metric of one app, in its own prometheus-client registry.

    Args:
        task: the bundle's task (``serve_summary`` says how predictions are counted).
        manifest: the bundle's manifest.
        drift: the app's :class:`DriftWindow`, or None (no reference statistics).
        multiprocess_dir: the directory of prometheus-client's multiprocess mode (``--workers N``;
            ``$PROMETHEUS_MULTIPROC_DIR``, which must be set before prometheus-client is first
            imported in the process): :meth:`render` then merges every worker's values. None: this
            app's values alone.
    """

    def __init__(self, task: Any, manifest: Mapping[str, Any], drift: DriftWindow | None,
                 multiprocess_dir: str | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        def gauge(name: str, doc: str, labels: tuple[str, ...] = (), **kw: Any) -> Any:
            return Gauge(name, doc, labels, multiprocess_mode=GAUGE_MODES[name], **kw)

        if multiprocess_dir is not None:
            from prometheus_client import values

            if values.ValueClass is values.MutexValue:
                from keel.errors import KeelError

                raise KeelError(f"metrics in {multiprocess_dir}: prometheus-client was imported before "
                                f"${MULTIPROC_ENV} was set, so this process keeps its values in memory. Fix: set "
                                f"{MULTIPROC_ENV} before the process starts")
            forget_dead_workers(multiprocess_dir)
        self.multiprocess_dir = multiprocess_dir
        self.registry = r = CollectorRegistry()
        self.requests = Counter("keel_requests", "HTTP requests by endpoint and status code",
                                ("endpoint", "status"), registry=r)
        self.in_flight = gauge("keel_predict_in_flight", "POST /predict requests being answered", registry=r)
        self.request_seconds = Histogram("keel_request_seconds", "Whole-request latency (seconds)", ("endpoint",),
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.model_seconds = Histogram("keel_model_seconds", "One ONNX Runtime call (seconds)",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("keel_batch_rows", "Rows per ONNX Runtime call", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.batch_requests = Histogram("keel_batch_requests", "Requests merged into one ONNX Runtime call",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.rows_predicted = Counter("keel_rows_predicted", "Rows predicted", registry=r)
        self.rejections = Counter("keel_contract_rejections", "Rows failing a contract rule, by rule and column",
                                  ("rule", "column"), registry=r)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}  # (endpoint, status) -> its series
        self._labels: dict[Any, Any] = {}  # predicted label -> its keel_predictions series
        self.summary = task.serve_summary(dict(manifest))
        if self.summary["kind"] == "counts":
            self.predictions = Counter("keel_predictions", "Predicted classes", ("label",), registry=r)
            for v in self.summary["values"]:
                self.predictions.labels(str(v))
        else:
            buckets = sorted(set(self.summary["buckets"]))
            self.predictions = Histogram("keel_prediction", "Predicted values (the target's units)",
                                         buckets=buckets, registry=r)
        self.drift = drift
        self._drift_lock = threading.Lock()  # one comparison at a time: alert changes are logged once
        labels = ("feature",)
        self.drift_psi = gauge("keel_drift_psi", "PSI of the drift window against the bundle's reference", labels,
                               registry=r)
        self.drift_js = gauge("keel_drift_js", "Jensen-Shannon divergence (base 2) of the drift window", labels,
                              registry=r)
        self.drift_p = gauge("keel_drift_p_adjusted", "Benjamini-Hochberg adjusted p-value of the noise test",
                             labels, registry=r)
        self.drift_testable = gauge("keel_drift_testable",
                                    "1 when the window has enough rows for the noise test (0: never alerts)",
                                    labels, registry=r)
        self.drift_alert = gauge("keel_drift_alert", "1 while the feature is in alert", labels, registry=r)
        # A state set written as gauges (one series per state, 1 for the current one): what an Enum
        # exposes in the Prometheus text format, and Enum does not work in multiprocess mode.
        self.drift_state = gauge("keel_drift_state", f"Drift state of the feature ({', '.join(DRIFT_STATES)})",
                                 (*labels, "keel_drift_state"), registry=r)
        self.drift_rows = gauge("keel_drift_window_rows", "Rows in the drift window", registry=r)
        self.drift_alerts = gauge("keel_drift_alerts", "Features in alert", registry=r)
        self.drift_threshold = gauge("keel_drift_threshold", "The bundle's drift levels (a feature alerts at the "
                                     "alert level when the noise test agrees)", ("statistic", "level"), registry=r)
        if drift is not None:
            for stat in ("psi", "js"):
                for level in ("warn", "alert"):
                    self.drift_threshold.labels(stat, level).set(getattr(drift.thresholds, f"{stat}_{level}"))
            self.drift_rows.set(0)
            self.drift_alerts.set(0)
            for f in drift.features:
                for g in (self.drift_psi, self.drift_js, self.drift_p):
                    g.labels(f).set(math.nan)
                self.drift_testable.labels(f).set(0)
                self.drift_alert.labels(f).set(0)
                self._state(f, "empty")

    def _state(self, feature: str, state: str) -> None:
        for s in DRIFT_STATES:
            self.drift_state.labels(feature, s).set(1 if s == state else 0)

    # ------------------------------------------------------------------ recording
    def request(self, endpoint: str, status: int, seconds: float) -> None:
        name = endpoint if endpoint in ENDPOINTS else "other"  # bounded label values
        key = (name, status)
        children = self._children.get(key)
        if children is None:  # labels() looks the child up under a lock: once per (endpoint, status)
            children = self._children[key] = (self.requests.labels(name, str(status)),
                                               self.request_seconds.labels(name))
        children[0].inc()
        children[1].observe(seconds)

    def batch(self, rows: int, requests: int, seconds: float) -> None:
        self.model_seconds.observe(seconds)
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def rejected(self, reports: Any) -> None:
        for report in reports:
            for v in report.violations:
                self.rejections.labels(v.rule, v.feature).inc(max(int(v.failing), 1))

    def predicted(self, records: list[dict[str, Any]]) -> None:
        self.rows_predicted.inc(len(records))
        key = self.summary["key"]
        if self.summary["kind"] == "counts":
            for r in records:
                label = r[key]
                child = self._labels.get(label)
                if child is None:
                    child = self._labels[label] = self.predictions.labels(str(label))
                child.inc()
        else:
            for r in records:
                self.predictions.observe(float(r[key]))

    def update_drift(self) -> None:
        """Compare the drift window (when new rows came) and set the gauges; log alert changes."""
        if self.drift is None:
            return
        with self._drift_lock:
            self._update_drift()

    def _update_drift(self) -> None:
        changed = self.drift.update()
        self.drift_rows.set(min(self.drift.rows, self.drift.size))
        if changed is None or self.drift.result is None:
            return
        result = self.drift.result
        for name, f in result["features"].items():
            self.drift_psi.labels(name).set(_nan(f["psi"]))
            self.drift_js.labels(name).set(_nan(f["js"]))
            self.drift_p.labels(name).set(_nan(f["p_adjusted"]))
            self.drift_testable.labels(name).set(1 if f["testable"] else 0)
            self.drift_alert.labels(name).set(1 if f["status"] == "alert" else 0)
            self._state(name, DriftWindow.state(f))
        self.drift_alerts.set(len(self.drift.alerting))
        entered, left = changed
        rows = result["summary"]["rows"]
        for name in entered:
            f = result["features"][name]
            log.warning("drift: feature %r entered alert (psi %s, js %s, p_adjusted %s, window %d rows)",
                        name, _fmt(f["psi"]), _fmt(f["js"]), _fmt(f["p_adjusted"]), rows)
        for name in left:
            f = result["features"][name]
            log.info("drift: feature %r left alert (psi %s, state %s, window %d rows)",
                     name, _fmt(f["psi"]), DriftWindow.state(f), rows)

    def render(self) -> bytes:
        """The Prometheus text of this app's metrics (multiprocess mode: every worker's, merged)."""
        from prometheus_client import CollectorRegistry, generate_latest

        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()  # a fresh one per scrape, as prometheus-client's docs do
        MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged)

    def close(self) -> None:
        """A worker stopping: its live gauges leave the merged view (its counts stay)."""
        if self.multiprocess_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.4g}"


__all__ = ["DRIFT_STATES", "GAUGE_MODES", "MULTIPROC_ENV", "DriftWindow", "ServeMetrics", "drift_columns",
           "drift_thresholds", "forget_dead_workers", "tensor_drift_matrix", "tensor_drift_names"]
