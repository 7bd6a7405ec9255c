"""`keel serve BUNDLE --workers 2`: /metrics counts every request once, whichever worker answers the
scrape (prometheus-client's multiprocess mode), and a killed worker's live gauges leave the view.

A real uvicorn server on a loopback port (``test_serve.Server``), a bundle from a one-epoch run.
Load is bounded: at most 200 requests of 3 rows.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_serve import Server, _frame, _train

pytestmark = pytest.mark.integration
ROUND = 40  # requests per round, sent by 8 threads at once


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("bc"), "data=breast_cancer", "trainer.max_epochs=1")


def _by_pid(m: dict, name: str = "keel_drift_window_rows") -> dict[int, float]:
    return {int(dict(labels)["pid"]): v for (n, labels), v in m.items() if n == name}


def _wait(what: str, check, server: Server, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except ConnectionError:  # no worker has the socket open yet
            got = None
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} after {timeout:g} s:\n{server.text()}"
        time.sleep(0.1)


def _send(server: Server, n: int, rows: list[dict]) -> None:
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for _ in range(k):
            status = server.json("POST", "/predict", {"rows": rows})[0]
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=worker, args=(n // 8,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert statuses == [200] * n


def test_two_workers_count_every_request_once_whichever_answers_the_scrape(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the server makes its metrics directory
    server = Server(bundle, tmp_path, "--workers", "2", "--drift-interval", "0.1")
    try:
        # both workers up: each shows its drift window (a live gauge, one series per worker pid)
        pids = _wait("two workers", lambda: len(p := set(_by_pid(server.metrics()))) == 2 and p, server)
        (metrics_dir,) = tmp_path.glob("keel-serve-metrics-*")
        rows = _frame(3).to_dict("records")
        before = server.metrics()
        sent = 0
        for _ in range(5):  # until both workers have answered some (the kernel picks the worker)
            _send(server, ROUND, rows)
            sent += ROUND

            def all_rows() -> dict[int, float] | None:
                w = _by_pid(server.metrics())
                return w if sum(w.values()) == 3 * sent else None

            windows = _wait("every row in a drift window", all_rows, server, timeout=10)
            if all(v > 0 for v in windows.values()):
                break
        assert all(v > 0 for v in windows.values()), f"one worker answered all {sent} requests: {windows}"

        def delta(m: dict, name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return m.get(key, 0.0) - before.get(key, 0.0)

        for _ in range(2):  # two scrapes, whichever worker answers each: the same whole-server counts
            m = server.metrics()
            assert delta(m, "keel_requests_total", endpoint="/predict", status="200") == sent
            assert delta(m, "keel_request_seconds_count", endpoint="/predict") == sent
            assert delta(m, "keel_rows_predicted_total") == 3 * sent == delta(m, "keel_batch_rows_sum")
            assert m[("keel_predict_in_flight", ())] == 0  # livesum over the workers: one series
            assert set(_by_pid(m, "keel_drift_psi")) == pids  # per worker, as its window says
            assert ("keel_requests_created", (("endpoint", "/predict"), ("status", "200"))) not in m

        # a worker killed (no shutdown): uvicorn starts another; the dead one's live gauges are
        # dropped by the new worker, its counts stay in the totals
        dead = min(pids)
        os.kill(dead, signal.SIGKILL)

        def replaced() -> set[int] | None:
            p = set(_by_pid(server.metrics()))
            return p if len(p) == 2 and dead not in p else None

        now = _wait("a new worker instead of the killed one", replaced, server)
        assert now - pids and f"Child process [{dead}] died" in server.text()
        m = server.metrics()
        assert delta(m, "keel_requests_total", endpoint="/predict", status="200") == sent
        assert metrics_dir.is_dir()
    finally:
        rc = server.stop()
    assert rc == 0, server.text()
    assert not metrics_dir.exists()  # removed when the server stops
    assert server.text().count("keel serve: stopped") == 2
