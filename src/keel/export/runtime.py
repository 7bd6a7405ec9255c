"""ONNX Runtime helpers shared by export and serving: sessions, batched runs, latency.

numpy and onnxruntime only: ``keel.serve`` imports this module and must not import torch.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def session(path: str | Path, threads: int = 0) -> Any:
    """A CPU InferenceSession (``threads`` 0: ONNX Runtime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: no graph-optimizer chatter on stderr
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run(sess: Any, x: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, ...]:
    """Every output of the session (in the graph's order: the task's outputs, e.g. logits and
    probabilities, or the prediction) for every row of ``x``, in batches."""
    name = sess.get_inputs()[0].name
    parts: list[list[np.ndarray]] = [[] for _ in sess.get_outputs()]
    for start in range(0, len(x), batch_size):
        got = sess.run(None, {name: np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32)})
        for kept, value in zip(parts, got):
            kept.append(value)
    return tuple(np.concatenate(p) for p in parts)


def latency(sess: Any, x: np.ndarray, batch: int, repeats: int = 50) -> float:
    """Median seconds of one ``sess.run`` on ``batch`` rows of ``x`` (tiled when x is smaller)."""
    if len(x) < batch:
        x = np.concatenate([x] * (batch // max(len(x), 1) + 1))
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x[:batch], dtype=np.float32)}
    for _ in range(5):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times)
