"""Sequences end to end: digits as 8 rows of 8 features with an LSTM, and windows of a time series
with a GRU, each trained by train.py, exported (parity-gated, dynamic batch), quantized where ONNX
Runtime can, and served by `keel predict`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from keel.export.quantize import float32_ops

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _train_py(tmp_path: Path, *overrides: str) -> Path:
    cmd = [sys.executable, "train.py", f"paths.log_dir={tmp_path}", "callbacks.progress_bar.refresh_rate=0",
           "logger=none", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # no Python warning: the exporter's GRU/LSTM tracing warnings are filtered (keel.export.onnx)
    assert "Warning: " not in proc.stderr, proc.stderr[-3000:]
    (run,) = sorted(p.parent for p in tmp_path.rglob("metrics.json"))
    return run


def _predict(bundle: Path, inputs: Path) -> pd.DataFrame:
    proc = subprocess.run([sys.executable, "-m", "keel.cli", "predict", str(bundle), str(inputs)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return pd.read_csv(io.StringIO(proc.stdout))


def _dynamic_batch(bundle: Path, shape: list[int]) -> None:
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", *shape]
    for n in (1, 5):
        outputs = sess.run(None, {"input": np.zeros((n, *shape), np.float32)})
        assert all(len(o) == n for o in outputs)


def test_digits_as_sequences_with_an_lstm_train_export_int8_and_predict(tmp_path):
    run = _train_py(tmp_path, "data=digits_seq", "model=rnn", "model.net.cell=lstm", "model.net.hidden_size=48",
                    "trainer.max_epochs=8", "callbacks.early_stopping.patience=100")
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["test/acc"] > 0.8  # 8 epochs; ~0.97 with the default 40 (README: Sequences)
    manifest = json.loads((run / "bundle" / "manifest.json").read_text())
    assert manifest["data"]["contract"]["shape"] == [8, 8]
    assert manifest["parity"]["ok"] and manifest["parity"]["max_abs_diff"] < 1e-4
    assert manifest["metrics"]["fp32"]["test_acc"] == pytest.approx(metrics["test/acc"], abs=1e-3)
    _dynamic_batch(run / "bundle", [8, 8])
    quant = manifest["quantization"]
    assert quant["mode"] == "dynamic"
    if quant["accepted"]:  # ONNX Runtime runs the LSTM itself in int8
        int8 = run / "bundle" / "model.int8.onnx"
        assert "DynamicQuantizeLSTM" in {n.op_type for n in onnx.load(str(int8)).graph.node}
        assert float32_ops(int8) == {} == quant["float32_ops"]
    else:
        assert "max_accuracy_drop" in quant["reason"]
    from keel.serve.bundle import load_bundle  # in-process (the windows test runs `keel predict`)

    samples = np.load(run / "bundle" / "samples" / "input.npy")
    _, probabilities = load_bundle(run / "bundle").predict(samples)
    np.testing.assert_allclose(probabilities, np.load(run / "bundle" / "samples" / "probabilities.npy"), atol=1e-6)


def test_windows_of_a_series_with_a_gru_beat_the_naive_baselines(tmp_path):
    t = np.arange(900)
    rng = np.random.default_rng(0)
    value = np.sin(2 * np.pi * t / 40) + 0.5 * np.sin(2 * np.pi * t / 11) + 0.1 * rng.normal(size=t.size)
    pd.DataFrame({"value": value}).to_csv(tmp_path / "series.csv", index=False)
    run = _train_py(tmp_path, "data=csv_windows", f"data.path={tmp_path / 'series.csv'}", "data.target=value",
                    "data.window=24", "model=rnn", "trainer.max_epochs=12", "callbacks.early_stopping.patience=100")
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    report = json.loads((run / "data" / "contract_report.json").read_text())
    base = report["baselines"]["test"]
    assert report["windows"]["window"] == 24 and report["contract"]["shape"] == [24, 1]
    assert metrics["test/rmse"] < base["last_value_rmse"] < base["train_mean_rmse"]
    manifest = json.loads((run / "bundle" / "manifest.json").read_text())
    assert manifest["task"] == "regression" and manifest["parity"]["ok"]
    _dynamic_batch(run / "bundle", [24, 1])
    if manifest["models"]["int8"]:  # the head is int8; the GRU stays float32 and the file says why
        notes = float32_ops(run / "bundle" / "model.int8.onnx")
        assert "no int8 GRU kernel" in notes["GRU"] and "model.net.cell=lstm" in notes["GRU"]
        assert manifest["quantization"]["float32_ops"] == notes  # ... and so does the manifest
    table = _predict(run / "bundle", run / "bundle" / "samples" / "input.npy")
    np.testing.assert_allclose(table["prediction"].to_numpy(), np.load(run / "bundle" / "samples" / "prediction.npy"),
                               rtol=1e-5, atol=1e-5)
