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
