"""`keel serve BUNDLE`: a real uvicorn server on a loopback port, torch and Lightning unimportable.

Bundles come from tiny training runs (as in test_bundle.py). Loads are bounded: a few hundred rows.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


def _train(root: Path, *overrides: str) -> Path:
    proc = subprocess.run([sys.executable, "train.py", f"paths.log_dir={root}", "callbacks.progress_bar.refresh_rate=0",
                           "logger=none", *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted(root.rglob("metrics.json"))[-1].parent / "bundle"


@pytest.fixture(scope="module")
def table_bundle(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("bc"), "data=breast_cancer", "trainer.max_epochs=3")


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("digits"), "trainer.max_epochs=2")


class Server:
    """`python -m keel.cli serve` in a subprocess on 127.0.0.1 (port 0: the one uvicorn logs)."""

    def __init__(self, bundle: Path, tmp: Path, *flags: str) -> None:
        blocker = tmp / "block"
        blocker.mkdir(exist_ok=True)
        for name in ("torch", "lightning"):
            (blocker / f"{name}.py").write_text(f"raise ImportError('{name} is not importable here')\n")
        self.log = tmp / f"serve-{time.monotonic_ns()}.log"
        env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{SRC}"}
        self._out = self.log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "keel.cli", "serve", str(bundle), "--port", "0", *flags],
                                     cwd=tmp, env=env, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", self.text())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"keel serve did not start:\n{self.text()}")

    def text(self) -> str:
        return self.log.read_text()

    def call(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers={**({"Content-Type": ctype} if ctype else {}),
                                                          **(headers or {})})
            resp = conn.getresponse()
            return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    def json(self, method: str, path: str, doc=None, **kw) -> tuple[int, dict]:
        body = None if doc is None else json.dumps(doc).encode()
        status, data, _ = self.call(method, path, body, "application/json" if body is not None else None, **kw)
        return status, json.loads(data)

    def metrics(self) -> dict[tuple[str, tuple], float]:
        status, data, headers = self.call("GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        out = {}
        for family in text_string_to_metric_families(data.decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def table_server(table_bundle, tmp_path_factory):
    server = Server(table_bundle, tmp_path_factory.mktemp("srv"), "--drift-window", "300", "--max-body-bytes",
                    "300000", "--drift-interval", "0.2")
    yield server
    assert server.stop() == 0, server.text()


def _frame(n: int = 20) -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).iloc[:n]


def _keel(*args: str) -> int:
    from keel.cli import main

    return main(list(args))


def _violation_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("    - ")]


def test_health_ready_info(table_server, table_bundle):
    assert table_server.json("GET", "/health") == (200, {"status": "alive"})
    status, ready = table_server.json("GET", "/ready")
    manifest = json.loads((table_bundle / "manifest.json").read_text())
    import hashlib

    bundle_id = hashlib.sha256((table_bundle / "manifest.json").read_bytes()).hexdigest()
    assert status == 200 and ready["ready"] is True and ready["bundle_id"] == bundle_id and ready["model"] == "fp32"
    status, info = table_server.json("GET", "/info")
    assert status == 200 and info["bundle_id"] == bundle_id and info["task"] == "classification"
    assert info["contract"] == manifest["data"]["contract"] and info["class_names"] == ["malignant", "benign"]
    assert info["metrics"] == manifest["metrics"] and info["packages"]["onnxruntime"]
    assert info["drift"]["window_rows"] == 300 and info["drift"]["thresholds"]["psi_alert"] == 0.25
    assert table_server.call("GET", "/nope")[0] == 404 and table_server.call("GET", "/predict")[0] == 405


def test_predict_json_rows_and_csv_as_keel_predict_does(table_server, table_bundle, tmp_path):
    frame = _frame(12)
    frame.to_csv(tmp_path / "x.csv", index=False)
    assert _keel("predict", str(table_bundle), str(tmp_path / "x.csv"), "--output", str(tmp_path / "p.json")) == 0
    expected = json.loads((tmp_path / "p.json").read_text())
    status, got = table_server.json("POST", "/predict", {"rows": frame.to_dict("records")})
    assert status == 200, got
    assert got["rows"] == 12 and got["model"] == "fp32" and len(got["bundle_id"]) == 64
    for a, b in zip(got["predictions"], expected):
        assert a["row"] == b["row"] and a["label"] == b["label"] and a["class"] == b["class"]
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
    status, data, _ = table_server.call("POST", "/predict", (tmp_path / "x.csv").read_bytes(), "text/csv")
    assert status == 200 and json.loads(data)["predictions"] == got["predictions"]
    frame.to_parquet(tmp_path / "x.parquet", index=False)
    status, data, _ = table_server.call("POST", "/predict", (tmp_path / "x.parquet").read_bytes(),
                                        "application/vnd.apache.parquet")
    assert status == 200 and json.loads(data)["predictions"] == got["predictions"]
    # ?keep carries an ID (JSON rows), as --keep does
    rows = [{"id": f"r{i}", **r} for i, r in enumerate(frame.iloc[:2].to_dict("records"))]
    status, kept = table_server.json("POST", "/predict?keep=id", {"rows": rows})
    assert status == 200 and [p["id"] for p in kept["predictions"]] == ["r0", "r1"]


def test_a_bad_request_gets_422_with_the_report_of_keel_predict_and_no_prediction(table_server, table_bundle,
                                                                                   tmp_path, capsys):
    bad = _frame(10)
    bad.loc[3, "mean area"] = -5.0
    bad.loc[7, "mean texture"] = np.nan
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert _keel("predict", str(table_bundle), str(tmp_path / "bad.csv")) == 2
    cli = capsys.readouterr().err
    status, data, _ = table_server.call("POST", "/predict", (tmp_path / "bad.csv").read_bytes(), "text/csv")
    report = json.loads(data)
    assert status == 422 and "predictions" not in report and report["error"] == "contract_violation"
    assert _violation_lines(report["message"]) == _violation_lines(cli) and len(_violation_lines(cli)) == 2
    by_rule = {(v["rule"], v["column"]): v["rows"] for v in report["violations"]}
    assert by_rule == {("nullable", "mean texture"): [7], ("range", "mean area"): [3]}
    assert "?on_invalid=skip" in report["message"]
    # JSON rows: the same violations (the DataFrame path)
    status, j = table_server.json("POST", "/predict", {"rows": json.loads(bad.to_json(orient="records"))})
    assert status == 422 and [v["describe"] for v in j["violations"]] == [v["describe"] for v in report["violations"]]
    # a missing column: file-level, 422 even with skip
    status, j = table_server.json("POST", "/predict?on_invalid=skip", {"rows": [{"mean radius": 10.0}]})
    assert status == 422 and j["violations"][0]["rule"] == "missing-columns" and j["violations"][0]["rows"] is None


def test_skip_answers_the_valid_rows_and_lists_the_rejected(table_server, table_bundle, tmp_path):
    bad = _frame(10)
    bad.loc[3, "mean area"] = -5.0
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert _keel("predict", str(table_bundle), str(tmp_path / "bad.csv"), "--on-invalid", "skip", "--output",
                 str(tmp_path / "p.json")) == 0
    status, data, _ = table_server.call("POST", "/predict?on_invalid=skip", (tmp_path / "bad.csv").read_bytes(),
                                        "text/csv")
    got = json.loads(data)
    assert status == 200 and got["rejected"] == [{"row": 3, "violations": ["range on mean area"]}]
    assert [p["row"] for p in got["predictions"]] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert [p["label"] for p in got["predictions"]] == [p["label"] for p in json.loads((tmp_path / "p.json").read_text())]


def test_malformed_and_oversized_bodies(table_server):
    assert table_server.call("POST", "/predict", b"{nope", "application/json")[0] == 400
    assert table_server.call("POST", "/predict", b"a,b\n1,2\n", "text/plain")[0] == 415
    status, j = table_server.json("POST", "/predict?on_invalid=maybe", {"rows": [{"a": 1}]})
    assert status == 400 and "on_invalid='maybe'" in j["message"]
    # declared too large: refused before the body is read
    conn = http.client.HTTPConnection("127.0.0.1", table_server.port, timeout=10)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "text/csv")
    conn.putheader("Content-Length", str(10 << 20))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and b"limit of 300000 bytes" in resp.read()
    conn.close()
    # too large without a length (chunked): refused once the limit is passed
    conn = http.client.HTTPConnection("127.0.0.1", table_server.port, timeout=10)
    conn.request("POST", "/predict", body=iter([b"x" * 200_000, b"y" * 200_000]),  # no length: sent chunked
                 headers={"Content-Type": "text/csv"})
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"] == "body_too_large"
    conn.close()


def test_metrics_count_known_requests(table_server):
    before = table_server.metrics()
    rows = _frame(8).to_dict("records")
    assert table_server.json("POST", "/predict", {"rows": rows[:5]})[0] == 200
    assert table_server.json("POST", "/predict", {"rows": rows[5:]})[0] == 200
    bad = [dict(rows[0], **{"mean area": -1.0})]
    assert table_server.json("POST", "/predict", {"rows": bad})[0] == 422
    after = table_server.metrics()

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("keel_requests_total", endpoint="/predict", status="200") == 2
    assert delta("keel_requests_total", endpoint="/predict", status="422") == 1
    assert delta("keel_requests_total", endpoint="/metrics", status="200") == 1  # the first scrape
    assert delta("keel_request_seconds_count", endpoint="/predict") == 3
    assert delta("keel_rows_predicted_total") == 8 and delta("keel_batch_rows_sum") == 8
    assert delta("keel_model_seconds_count") == delta("keel_batch_rows_count") >= 1
    assert delta("keel_contract_rejections_total", rule="range", column="mean area") == 1
    assert delta("keel_predictions_total", label="malignant") + delta("keel_predictions_total", label="benign") == 8


def test_drift_gauges_move_into_alert_after_shifted_rows(table_server, table_bundle, tmp_path):
    from keel.data.drift import DriftThresholds, compare
    from keel.data.table_io import read_table, table_drift_columns

    shifted = _frame(300).copy()
    shifted["mean radius"] = shifted["mean radius"] + 12.0  # inside the contract's range, far from training
    shifted.to_csv(tmp_path / "shifted.csv", index=False)
    status, data, _ = table_server.call("POST", "/predict", (tmp_path / "shifted.csv").read_bytes(), "text/csv")
    assert status == 200
    m = table_server.metrics()
    feature = (("feature", "mean radius"),)
    assert m[("keel_drift_window_rows", ())] == 300
    assert m[("keel_drift_alert", feature)] == 1 and m[("keel_drift_testable", feature)] == 1
    assert m[("keel_drift_state", (*feature, ("keel_drift_state", "alert")))] == 1
    # the same numbers as keel drift on the same rows (its code, the bundle's reference and thresholds)
    manifest = json.loads((table_bundle / "manifest.json").read_text())
    from keel.data.contract import contract_from_dict

    contract = contract_from_dict(manifest["data"]["contract"])
    contract_cols, _ = table_drift_columns(read_table(tmp_path / "shifted.csv"), contract)
    thresholds = DriftThresholds.from_dict({k: v for k, v in manifest["config"]["data"]["drift"].items()
                                            if k != "enabled"})
    expected = compare(manifest["data"]["reference"], contract_cols, thresholds)
    for name, f in expected["features"].items():
        assert m[("keel_drift_psi", (("feature", name),))] == pytest.approx(f["psi"], rel=1e-12), name
        assert m[("keel_drift_alert", (("feature", name),))] == (f["status"] == "alert")
    deadline = time.monotonic() + 5
    while "entered alert" not in table_server.text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "drift: feature 'mean radius' entered alert (psi " in table_server.text()


def test_concurrent_requests_share_model_calls_and_get_their_own_answers(table_server):
    rows = _frame(16).to_dict("records")
    before = table_server.metrics()
    results: dict[int, dict] = {}

    def one(i: int) -> None:
        results[i] = table_server.json("POST", "/predict", {"rows": [rows[i]]})[1]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    status, whole = table_server.json("POST", "/predict", {"rows": rows})
    for i in range(16):
        assert results[i]["predictions"][0]["probabilities"] == pytest.approx(
            whole["predictions"][i]["probabilities"], abs=1e-6)
    after = table_server.metrics()
    calls = after[("keel_batch_rows_count", ())] - before[("keel_batch_rows_count", ())]
    assert after[("keel_batch_rows_sum", ())] - before[("keel_batch_rows_sum", ())] == 32
    assert calls <= 17  # 16 single-row requests + the whole: merged when they met in a window


class _Partial:
    """A POST /predict sent over a raw socket in two parts: the headers and part of the body now
    (the server is reading it: a request on its way), the rest when :meth:`finish` is called."""

    def __init__(self, port: int, doc: dict) -> None:
        self.body = json.dumps(doc).encode()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n").encode()
        self.sock.sendall(head + self.body[:5])

    def finish(self) -> tuple[int, dict]:
        self.sock.sendall(self.body[5:])
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        self.sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)


def _wait_in_flight(server: Server, n: int) -> None:
    deadline = time.monotonic() + 10
    while server.metrics()[("keel_predict_in_flight", ())] < n:
        assert time.monotonic() < deadline, f"fewer than {n} requests in flight after 10 s"
        time.sleep(0.02)


def test_a_lone_request_runs_at_once_and_a_call_waits_for_one_being_read_then_sigterm_finishes_them(
        table_bundle, tmp_path):
    server = Server(table_bundle, tmp_path, "--batch-window-ms", "2000")
    rows = _frame(6).to_dict("records")
    whole = server.json("POST", "/predict", {"rows": rows})[1]["predictions"]
    t = time.monotonic()
    status, got = server.json("POST", "/predict", {"rows": rows[:1]})
    assert status == 200 and time.monotonic() - t < 1.5  # nothing else on its way: no 2 s wait
    before = server.metrics()

    # a request whose body is still arriving: the next call waits for it (at most the window) and shares it
    partial = _Partial(server.port, {"rows": [rows[1]]})
    _wait_in_flight(server, 1)
    answers: dict[str, tuple] = {}
    waiting = threading.Thread(target=lambda: answers.setdefault("b", server.json("POST", "/predict",
                                                                                  {"rows": [rows[2]]})))
    waiting.start()
    _wait_in_flight(server, 2)
    time.sleep(0.2)
    assert waiting.is_alive()  # waiting in the window for the request being read
    answers["a"] = partial.finish()
    waiting.join(timeout=20)
    after = server.metrics()
    assert after[("keel_batch_requests_count", ())] - before[("keel_batch_requests_count", ())] == 1  # one call
    assert after[("keel_batch_requests_sum", ())] - before[("keel_batch_requests_sum", ())] == 2
    for key, i in (("a", 1), ("b", 2)):  # each caller got its own row's answer
        status, got = answers[key]
        assert status == 200 and got["predictions"][0]["probabilities"] == pytest.approx(whole[i]["probabilities"])

    # SIGTERM while one request is being read and another waits for it in the window: both answered
    partial = _Partial(server.port, {"rows": [rows[3]]})
    _wait_in_flight(server, 1)
    answers.clear()
    waiting = threading.Thread(target=lambda: answers.setdefault("b", server.json("POST", "/predict",
                                                                                  {"rows": [rows[4]]})))
    waiting.start()
    _wait_in_flight(server, 2)
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:  # new connections are refused once uvicorn sees the signal (it looks every 0.1 s)
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "still accepting connections 5 s after SIGTERM"
        time.sleep(0.05)
    assert waiting.is_alive()  # the request in flight was still waiting when new ones were refused
    status, got = partial.finish()
    waiting.join(timeout=20)
    assert status == 200 and got["predictions"][0]["probabilities"] == pytest.approx(whole[3]["probabilities"])
    status, got = answers["b"]
    assert status == 200 and got["predictions"][0]["probabilities"] == pytest.approx(whole[4]["probabilities"])
    assert server.proc.wait(timeout=20) == 0, server.text()
    server.stop()


def test_tensor_bundle_json_inputs_npy_upload_and_int8(digits_bundle, tmp_path, capsys):
    from sklearn.datasets import load_digits

    x = load_digits().data[:6].reshape(-1, 1, 8, 8).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert _keel("predict", str(digits_bundle), str(tmp_path / "x.npy"), "--int8", "--output",
                 str(tmp_path / "p.json")) == 0
    expected = json.loads((tmp_path / "p.json").read_text())
    server = Server(digits_bundle, tmp_path, "--int8")
    try:
        status, got = server.json("POST", "/predict", {"inputs": x.tolist()})
        assert status == 200 and got["model"] == "int8"
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in expected]
        buf = io.BytesIO()
        np.save(buf, x)
        status, data, _ = server.call("POST", "/predict", buf.getvalue(), "application/x-npy")
        assert status == 200 and json.loads(data)["predictions"] == got["predictions"]
        bad = x.copy()
        bad[2, 0, 0, 0] = 99.0
        np.save(tmp_path / "bad.npy", bad)
        assert _keel("predict", str(digits_bundle), str(tmp_path / "bad.npy")) == 2
        cli = capsys.readouterr().err
        status, j = server.json("POST", "/predict", {"inputs": bad.tolist()})
        assert status == 422 and _violation_lines(j["message"]) == _violation_lines(cli)
        assert j["violations"][0]["rule"] == "range" and j["violations"][0]["rows"] == [2]
        status, j = server.json("POST", "/predict", {"rows": [{"x": 1}]})
        assert status == 400 and "\"rows\" is for table bundles" in j["message"]
        m = server.metrics()
        assert m[("keel_drift_window_rows", ())] == 12 and ("keel_drift_psi", (("feature", "x63"),)) in m
        assert not math.isnan(m[("keel_drift_psi", (("feature", "x10"),))])
    finally:
        assert server.stop() == 0, server.text()


def test_a_regression_bundle_answers_predictions_and_fills_the_histogram(tmp_path):
    from sklearn.datasets import load_diabetes

    bundle = _train(tmp_path / "run", "data=diabetes", "trainer.max_epochs=2")
    frame = load_diabetes(as_frame=True).frame.iloc[:10]
    frame.to_csv(tmp_path / "x.csv", index=False)  # the target column is left out, as keel predict does
    assert _keel("predict", str(bundle), str(tmp_path / "x.csv"), "--output", str(tmp_path / "p.json")) == 0
    expected = [p["prediction"] for p in json.loads((tmp_path / "p.json").read_text())]
    server = Server(bundle, tmp_path)
    try:
        status, got = server.json("POST", "/predict", {"rows": frame.to_dict("records")})
        assert status == 200 and got["task"] == "regression"
        assert [p["prediction"] for p in got["predictions"]] == pytest.approx(expected, rel=1e-6)
        m = server.metrics()
        assert m[("keel_prediction_count", ())] == 10 and m[("keel_prediction_sum", ())] == pytest.approx(sum(expected))
        status, info = server.json("GET", "/info")
        assert info["target"]["name"] == "target" and "classes" not in info
    finally:
        assert server.stop() == 0, server.text()


def test_two_workers_serve_the_bundle_and_stop_on_sigterm(digits_bundle, tmp_path):
    from sklearn.datasets import load_digits

    x = load_digits().data[:3].reshape(-1, 1, 8, 8).astype(np.float32)
    server = Server(digits_bundle, tmp_path, "--workers", "2")
    try:
        deadline = time.monotonic() + 30
        while True:  # the parent binds the socket; a worker answers once it has loaded the bundle
            try:
                if server.call("GET", "/ready")[0] == 200:
                    break
            except ConnectionError:
                pass
            assert time.monotonic() < deadline, server.text()
            time.sleep(0.1)
        for _ in range(4):
            status, got = server.json("POST", "/predict", {"inputs": x.tolist()})
            assert status == 200 and got["rows"] == 3
    finally:
        assert server.stop() == 0, server.text()
    assert server.text().count("keel serve: stopped") == 2
