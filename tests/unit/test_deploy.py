"""deploy/: the Grafana dashboard and the Prometheus config name only metrics ``keel serve`` exports.

What the server exports is read from ``GET /metrics`` of the real app (in-process, toy bundles
from ``test_serve_info``: a classification one sent valid and contract-breaking rows, a
regression one), parsed with prometheus-client's parser: the sample names a PromQL selector
matches (``keel_requests_total``, ``keel_request_seconds_bucket``, ...), so a counter named
without ``_total`` or a histogram without its suffix counts as missing, as it would in Prometheus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_serve_info import InProcess, rows, toy_bundle

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "keel-serve.json"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself for every target

# PromQL words that are not metric names: keywords and grouping/matching modifiers (functions and
# aggregations are told apart by the "(" after them)
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
             "unless", "atan2", "inf", "nan"}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana's ``label_values(metric, label)``) selects.

    Raises:
        ValueError: unbalanced brackets or quotes (not an expression this can read).
    """
    text = _STRING.sub('""', expr)
    if re.search(r"[\"'`]", text.replace('""', "")):
        raise ValueError(f"unbalanced quotes in {expr!r}")
    for open_, close in ("()", "{}", "[]"):
        if text.count(open_) != text.count(close):
            raise ValueError(f"unbalanced {open_}{close} in {expr!r}")
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # range and subquery windows
    text = re.sub(r"\boffset\s+-?[\w$]+", " ", text)
    text = _GROUPING.sub(" ", text)  # by (le), on (feature): label names
    text = re.sub(r"label_values\s*\(\s*([A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)", r" \1 ", text)
    names = set()
    for m in _IDENT.finditer(text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in _KEYWORDS or name.startswith("$"):
            continue
        names.add(name)
    return names


def unknown_metrics(exprs: dict[str, str], exported: set[str]) -> dict[str, set[str]]:
    """``where -> names`` of the metrics each expression names that are not ``exported``."""
    out = {}
    for where, expr in exprs.items():
        missing = metric_names(expr) - exported - PROMETHEUS_OWN
        if missing:
            out[where] = missing
    return out


def dashboard_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    out = {}
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            out[f"panel {panel['title']!r} {t['refId']}"] = t["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            out[f"variable {var['name']}"] = query["query"] if isinstance(query, dict) else query
    return out


def alert_exprs(doc: dict[str, Any]) -> dict[str, str]:
    return {f"alert {r['alert']}": r["expr"] for g in doc["groups"] for r in g["rules"]}


def _sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    """Every sample name GET /metrics of the real app shows, for both tasks, after traffic that
    fills each labelled metric (a prediction, a 422, a drift comparison)."""
    root = tmp_path_factory.mktemp("deploy")
    names = set()
    with InProcess(toy_bundle(root / "cls"), drift_window=50) as server:
        assert server.json("POST", "/predict", {"rows": rows(40)})[0] == 200
        bad = [dict(r, smoothness=500.0) for r in rows(2)]  # the contract's max is 100
        status, report = server.json("POST", "/predict", {"rows": bad})
        assert status == 422 and report["violations"][0]["rule"] == "range"
        status, text = server.call("GET", "/metrics")
        assert status == 200
        names |= _sample_names(text.decode())
    with InProcess(toy_bundle(root / "reg", regression=True)) as server:
        assert server.json("POST", "/predict", {"rows": rows(5)})[0] == 200
        names |= _sample_names(server.call("GET", "/metrics")[1].decode())
    return names


def test_the_server_export_is_read_as_prometheus_sees_it(exported):
    # the fixture's own sanity: suffixed names as exposed, the plain family names of counters not
    assert {"keel_requests_total", "keel_request_seconds_bucket", "keel_contract_rejections_total",
            "keel_predictions_total", "keel_prediction_bucket", "keel_drift_psi", "keel_drift_state",
            "keel_drift_threshold"} <= exported
    assert "keel_requests" not in exported and "keel_request_seconds" not in exported


def test_metric_names_are_read_out_of_promql():
    expr = ('histogram_quantile(0.99, sum by (instance, le) (rate(keel_request_seconds_bucket{endpoint="/predict",'
            ' instance=~"$instance"}[$__rate_interval]))) > 0.5')
    assert metric_names(expr) == {"keel_request_seconds_bucket"}
    assert metric_names('count(max by (feature) (keel_drift_alert) == 1) or vector(0)') == {"keel_drift_alert"}
    assert metric_names("max by (feature) (keel_drift_psi) and on (feature) (keel_drift_alert offset 5m == 1)") == {
        "keel_drift_psi", "keel_drift_alert"}
    assert metric_names("label_values(keel_requests_total, instance)") == {"keel_requests_total"}
    assert metric_names('sum(rate(a_total[5m])) / sum(rate(b_total{x="by (y)"}[1m]))') == {"a_total", "b_total"}
    with pytest.raises(ValueError, match="unbalanced"):
        metric_names("sum(rate(keel_requests_total[5m])")


def test_every_dashboard_and_alert_expression_names_an_exported_metric(exported):
    exprs = {**dashboard_exprs(json.loads(DASHBOARD.read_text())), **alert_exprs(yaml.safe_load(ALERTS.read_text()))}
    assert len(exprs) > 25
    assert unknown_metrics(exprs, exported) == {}


def test_a_metric_the_server_does_not_export_is_caught(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    target = dashboard["panels"][1]["targets"][0]
    target["expr"] = target["expr"].replace("keel_requests_total", "keel_requests")  # a counter without _total
    bad = unknown_metrics(dashboard_exprs(dashboard), exported)
    assert bad == {f"panel {dashboard['panels'][1]['title']!r} A": {"keel_requests"}}
    assert unknown_metrics({"x": "histogram_quantile(0.5, rate(keel_model_seconds[5m]))",
                            "y": "keel_drift_psi_total + keel_drift_jss"}, exported) == {
        "x": {"keel_model_seconds"}, "y": {"keel_drift_psi_total", "keel_drift_jss"}}


def test_the_dashboard_is_importable_and_covers_what_serve_exports():
    d = json.loads(DASHBOARD.read_text())
    assert d["title"] and d["uid"] == "keel-serve" and isinstance(d["schemaVersion"], int)
    assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"] and d["__inputs"][0]["pluginId"] == "prometheus"
    (ds_var,) = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert ds_var["name"] == "DS_PROMETHEUS" and ds_var["query"] == "prometheus"  # provisioned files resolve it too
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in d["panels"] if p["type"] != "row"]
    for p in graphs:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
    named = set().union(*(metric_names(e) for e in dashboard_exprs(d).values()))
    assert {"keel_requests_total", "keel_request_seconds_bucket", "keel_model_seconds_bucket",
            "keel_batch_rows_bucket", "keel_rows_predicted_total", "keel_contract_rejections_total",
            "keel_predictions_total", "keel_prediction_bucket", "keel_drift_psi", "keel_drift_js",
            "keel_drift_alert", "keel_drift_threshold"} <= named
    quantiles = {float(q) for e in dashboard_exprs(d).values() for q in re.findall(r"histogram_quantile\(([\d.]+)", e)}
    assert quantiles == {0.5, 0.9, 0.99}


def test_the_prometheus_config_scrapes_metrics_every_15s_and_loads_the_alerts():
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "keel-serve"]
    assert job.get("metrics_path", "/metrics") == "/metrics" and job["scrape_interval"] == "15s"
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == ["127.0.0.1:8000"]
    assert "--workers" in PROMETHEUS.read_text()  # the comment on several workers
    assert cfg["rule_files"] == ["alerts.yml"] and (PROMETHEUS.parent / "alerts.yml").is_file()
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"KeelServeFeatureDrift", "KeelServeErrorRate", "KeelServePredictLatencyP99"}
    for r in rules:
        assert r["expr"].strip() and re.fullmatch(r"\d+[smh]", r["for"]) and r["labels"]["severity"], r["alert"]
    assert 'up{job="keel-serve"}' in alert_exprs({"groups": [{"rules": rules}]})["alert KeelServeDown"]
