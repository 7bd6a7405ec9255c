"""ONNX Runtime helpers shared by export and serving: sessions, batched runs, latency.

numpy and onnxruntime only: ``keel.serve`` imports this module and must not import torch.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def session(path: str | Path, threads: int = 0, spin: bool = True) -> Any:
    """A CPU InferenceSession (``threads`` 0: ONNX Runtime's default, one intra-op thread per core).

    ``spin=False``: the intra-op and inter-op pools block between calls instead of spinning
    (ONNX Runtime's ``session.*.allow_spinning``): what a server wants, whose calls come seconds or
    microseconds apart; a spinning pool thread burns a core between them.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: no graph-optimizer chatter on stderr
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1  # sequential execution (the default mode): one inter-op thread
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
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
