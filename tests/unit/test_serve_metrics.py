"""keel.serve.metrics: the drift window (same numbers as keel drift) and the Prometheus metrics."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keel.data.contract import ContractReport, Violation
from keel.data.drift import DriftThresholds, compare, reference_stats
from keel.serve.metrics import DriftWindow, ServeMetrics, drift_thresholds
from keel.tasks import get_task

RNG = np.random.default_rng(0)
REF_COLS = {"a": RNG.normal(size=2000), "b": RNG.choice(["x", "y", "z"], size=2000).astype(object)}
REFERENCE = reference_stats(REF_COLS, {"a": "numeric", "b": "categorical"})
MANIFEST = {"class_names": ["no", "yes"], "config": {"data": {"drift": {"enabled": True, "psi_alert": 0.3}}}}


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _batch(n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    return {"a": RNG.normal(size=n) + shift, "b": RNG.choice(["x", "y", "z"], size=n).astype(object)}


def test_the_window_keeps_the_last_rows_and_compares_them_as_keel_drift_does():
    w = DriftWindow(REFERENCE, DriftThresholds(), size=500)
    batches = [_batch(n) for n in (120, 300, 90, 200)]
    for b in batches:
        w.add(b)
    rows = {k: np.concatenate([b[k] for b in batches])[-500:] for k in ("a", "b")}
    got = w.window()
    np.testing.assert_array_equal(got["a"], rows["a"])
    assert list(got["b"]) == list(rows["b"])
    assert w.update() == ([], []) and w.update() is None  # nothing new the second time
    assert w.result == compare(REFERENCE, rows, DriftThresholds())


def test_the_ring_buffer_wraps_keeps_order_and_matches_keel_drift_exactly():
    w = DriftWindow(REFERENCE, DriftThresholds(), size=300)
    batches = [_batch(n) for n in (1, 250, 7, 1, 120, 1, 500, 33)]  # wraps several times; one batch > size
    seen = []
    for b in batches:
        w.add(b)
        seen.append(b)
        rows = {k: np.concatenate([x[k] for x in seen])[-300:] for k in ("a", "b")}
        got = w.window()
        np.testing.assert_array_equal(got["a"], rows["a"])
        assert list(got["b"]) == list(rows["b"]) and w.rows == len(rows["a"])
    w.update()
    assert w.result == compare(REFERENCE, rows, DriftThresholds())  # equal numbers, not approximately


def test_tensor_rows_added_as_a_matrix_equal_the_column_path():
    from keel.data.drift import tensor_drift_columns
    from keel.serve.metrics import tensor_drift_matrix, tensor_drift_names

    x = RNG.normal(size=(700, 1, 4, 4)).astype(np.float32)
    ref = reference_stats(tensor_drift_columns(x[:400]), {n: "numeric" for n in tensor_drift_names((1, 4, 4))})
    by_matrix, by_columns = DriftWindow(ref, DriftThresholds(), 250), DriftWindow(ref, DriftThresholds(), 250)
    for a, b in ((0, 1), (1, 200), (200, 201), (201, 650), (650, 700)):
        by_matrix.add_matrix(tensor_drift_matrix(x[a:b]))
        by_columns.add(tensor_drift_columns(x[a:b]))
    whole = tensor_drift_columns(x[-250:])
    for name, col in by_matrix.window().items():
        np.testing.assert_array_equal(col, whole[name])
    by_matrix.update(), by_columns.update()
    assert by_matrix.result == by_columns.result == compare(ref, whole, DriftThresholds())
    with pytest.raises(ValueError, match="add_matrix"):
        DriftWindow(REFERENCE, DriftThresholds()).add_matrix(np.zeros((1, 2)))


def test_shifted_rows_enter_alert_and_leave_it_with_log_lines(caplog):
    drift = DriftWindow(REFERENCE, drift_thresholds(MANIFEST), size=400)
    assert drift.thresholds.psi_alert == 0.3
    m = ServeMetrics(get_task("classification"), MANIFEST, drift)
    caplog.set_level(logging.INFO, logger="keel.serve")
    drift.add(_batch(400, shift=3.0))
    m.update_drift()
    s = _samples(m.render().decode())
    assert s[("keel_drift_alert", (("feature", "a"),))] == 1 and s[("keel_drift_alert", (("feature", "b"),))] == 0
    assert s[("keel_drift_psi", (("feature", "a"),))] > 1 and s[("keel_drift_alerts", ())] == 1
    assert s[("keel_drift_state", (("feature", "a"), ("keel_drift_state", "alert")))] == 1
    assert "drift: feature 'a' entered alert (psi " in caplog.text and "window 400 rows" in caplog.text
    drift.add(_batch(400))
    m.update_drift()
    s = _samples(m.render().decode())
    assert s[("keel_drift_alert", (("feature", "a"),))] == 0 and s[("keel_drift_alerts", ())] == 0
    assert "drift: feature 'a' left alert" in caplog.text


def test_a_window_too_small_for_the_noise_test_says_so_and_does_not_alert():
    drift = DriftWindow(REFERENCE, DriftThresholds(), size=1000)
    m = ServeMetrics(get_task("classification"), MANIFEST, drift)
    s = _samples(m.render().decode())  # nothing served yet
    assert math.isnan(s[("keel_drift_psi", (("feature", "a"),))])
    assert s[("keel_drift_state", (("feature", "a"), ("keel_drift_state", "empty")))] == 1
    drift.add(_batch(6, shift=50.0))  # far off, but 6 rows: untestable
    m.update_drift()
    s = _samples(m.render().decode())
    assert s[("keel_drift_psi", (("feature", "a"),))] > 1
    assert s[("keel_drift_testable", (("feature", "a"),))] == 0 and s[("keel_drift_alert", (("feature", "a"),))] == 0
    assert s[("keel_drift_state", (("feature", "a"), ("keel_drift_state", "untestable")))] == 1
    assert s[("keel_drift_window_rows", ())] == 6


def test_counters_after_known_events():
    m = ServeMetrics(get_task("classification"), MANIFEST, None)
    m.request("/predict", 200, 0.01)
    m.request("/predict", 422, 0.002)
    m.request("/nope", 404, 0.001)
    m.batch(5, 2, 0.0004)
    m.predicted([{"label": "yes"}, {"label": "yes"}, {"label": "no"}])
    report = ContractReport("t", "request.json", 4, (
        Violation("range", "age", 2, 4, rows=np.array([0, 1])), Violation("missing-columns", "color", 4, 4)))
    m.rejected([report])
    s = _samples(m.render().decode())
    assert s[("keel_requests_total", (("endpoint", "/predict"), ("status", "200")))] == 1
    assert s[("keel_requests_total", (("endpoint", "/predict"), ("status", "422")))] == 1
    assert s[("keel_requests_total", (("endpoint", "other"), ("status", "404")))] == 1
    assert s[("keel_request_seconds_count", (("endpoint", "/predict"),))] == 2
    assert s[("keel_batch_rows_sum", ())] == 5 and s[("keel_batch_requests_sum", ())] == 2
    assert s[("keel_model_seconds_count", ())] == 1 and s[("keel_rows_predicted_total", ())] == 3
    assert s[("keel_predictions_total", (("label", "yes"),))] == 2 and s[("keel_predictions_total", (("label", "no"),))] == 1
    assert s[("keel_contract_rejections_total", (("column", "age"), ("rule", "range")))] == 2
    assert s[("keel_contract_rejections_total", (("column", "color"), ("rule", "missing-columns")))] == 4


def test_regression_predictions_go_to_a_histogram_over_the_target_range():
    manifest = {"target": {"name": "y", "range": None, "mean": 5.0, "std": 1.0, "min": 0.0, "max": 10.0}}
    assert get_task("regression").serve_summary(manifest)["buckets"] == pytest.approx([float(i) for i in range(11)])
    m = ServeMetrics(get_task("regression"), manifest, None)
    m.predicted([{"prediction": 0.5}, {"prediction": 7.2}, {"prediction": 99.0}])
    s = _samples(m.render().decode())
    assert s[("keel_prediction_bucket", (("le", "1.0"),))] == 1
    assert s[("keel_prediction_bucket", (("le", "8.0"),))] == 2 and s[("keel_prediction_count", ())] == 3


def test_the_bundle_drift_levels_are_exported_for_dashboards():
    m = ServeMetrics(get_task("classification"), MANIFEST, DriftWindow(REFERENCE, drift_thresholds(MANIFEST)))
    s = _samples(m.render().decode())
    assert s[("keel_drift_threshold", (("level", "alert"), ("statistic", "psi")))] == 0.3  # the bundle's
    assert s[("keel_drift_threshold", (("level", "warn"), ("statistic", "js")))] == DriftThresholds().js_warn
    assert not any(k[0] == "keel_drift_threshold" for k in _samples(ServeMetrics(
        get_task("classification"), MANIFEST, None).render().decode()))  # no reference: no levels


# ------------------------------------------------------------------ several workers (multiprocess mode)

# Three workers in one interpreter (fork: prometheus-client's files are named by pid): one stops
# (its shutdown marks it dead), one dies without that, the last answers the scrape.
_WORKERS = """
import json, os, sys
import numpy as np
from keel.data.drift import reference_stats
from keel.serve.metrics import DriftWindow, ServeMetrics, drift_thresholds
from keel.tasks import get_task

def worker(n, shift, render=False, close=False):
    ref = reference_stats({"a": np.random.default_rng(0).normal(size=500)}, {"a": "numeric"})
    manifest = {"class_names": ["no", "yes"]}
    drift = DriftWindow(ref, drift_thresholds(manifest), size=100)
    m = ServeMetrics(get_task("classification"), manifest, drift, os.environ["PROMETHEUS_MULTIPROC_DIR"])
    for _ in range(n):
        m.request("/predict", 200, 0.01)
    m.predicted([{"label": "yes"}] * n)
    drift.add({"a": np.random.default_rng(1).normal(size=100) + shift})
    m.update_drift()
    if close:
        m.close()
    return m.render().decode() if render else None

pids = []
for n, shift, close in ((3, 0.0, True), (4, 5.0, False)):
    pid = os.fork()
    if pid == 0:
        worker(n, shift, close=close)
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    pids.append(pid)
print(json.dumps({"stopped": pids[0], "killed": pids[1], "me": os.getpid(), "text": worker(5, 0.0, render=True)}))
"""


def test_several_workers_sum_counts_and_keep_one_drift_series_per_live_worker(tmp_path):
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _WORKERS], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    stopped, killed, me = out["stopped"], out["killed"], out["me"]
    s = _samples(out["text"])
    assert s[("keel_requests_total", (("endpoint", "/predict"), ("status", "200")))] == 12  # every worker's
    assert s[("keel_predictions_total", (("label", "yes"),))] == 12
    assert s[("keel_request_seconds_count", (("endpoint", "/predict"),))] == 12
    psi = {dict(k[1])["pid"]: v for k, v in s.items() if k[0] == "keel_drift_psi"}
    assert set(psi) == {str(me)}  # the stopped one marked itself dead, the killed one was marked by this one
    assert psi[str(me)] < 0.25
    assert s[("keel_drift_state", (("feature", "a"), ("keel_drift_state", "ok"), ("pid", str(me))))] == 1
    assert s[("keel_drift_threshold", (("level", "alert"), ("statistic", "psi")))] == 0.25  # one series
    assert s[("keel_predict_in_flight", ())] == 0
    assert not any(k[0].endswith("_created") for k in s)
    assert {stopped, killed, me} == {int(p.stem.rsplit("_", 1)[1]) for p in tmp_path.glob("counter_*.db")}


def test_forget_dead_workers_drops_live_gauges_of_processes_that_are_gone(tmp_path):
    import os
    import subprocess
    import sys

    from keel.serve.metrics import forget_dead_workers

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    me = os.getpid()
    for name in (f"gauge_liveall_{gone}.db", f"gauge_livesum_{gone}.db", f"counter_{gone}.db",
                 f"gauge_liveall_{me}.db"):
        (tmp_path / name).write_bytes(b"")
    assert forget_dead_workers(str(tmp_path)) == [int(gone)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"counter_{gone}.db", f"gauge_liveall_{me}.db"]


def test_multiprocess_metrics_need_the_directory_set_before_prometheus_client_is_imported(tmp_path):
    from keel.errors import KeelError

    with pytest.raises(KeelError, match=r"prometheus-client was imported before \$PROMETHEUS_MULTIPROC_DIR was set"):
        ServeMetrics(get_task("classification"), MANIFEST, None, str(tmp_path))
