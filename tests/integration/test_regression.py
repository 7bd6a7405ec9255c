"""Regression through the task seam: diabetes end to end (train, resume, export parity, int8
budget, predict), a float target inferred from a CSV, an ambiguous target refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _train_py(tmp_path: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", f"paths.log_dir={tmp_path}", "callbacks.progress_bar.refresh_rate=0",
           *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _keel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keel.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metrics.json"))


def _diabetes_frame() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    return load_diabetes(as_frame=True).frame  # 10 float features + "target" (whole numbers 25..346)


def test_diabetes_end_to_end_train_resume_export_int8_predict(tmp_path):
    proc = _train_py(tmp_path, "data=diabetes", "trainer.max_epochs=3", "callbacks.early_stopping.patience=100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = _run_dirs(tmp_path)
    log = (run / "train.log").read_text() if (run / "train.log").exists() else proc.stdout + proc.stderr
    assert "task: regression (declared by the data contract" in log
    m = json.loads((run / "metrics.json").read_text())
    assert m["task"] == "regression"
    metrics = m["metrics"]
    assert {"test/rmse", "test/mae", "test/r2", "test/loss", "val/rmse_best", "val/r2_best"} <= set(metrics)
    assert not any(k.endswith("/acc") for k in metrics)  # no classification metric anywhere
    assert m["objective"] == metrics["val/rmse_best"]
    residuals = m["residuals"]
    assert residuals["rows"] == m["split_sizes"]["test"]
    assert residuals["rmse"] == pytest.approx(metrics["test/rmse"], rel=1e-4)

    # the bundle: parity by absolute/relative difference in the target's units, int8 by rmse budget
    manifest = json.loads((run / "bundle" / "manifest.json").read_text())
    assert manifest["task"] == "regression" and manifest["parity"]["ok"]
    # permutation importance by the task's metric: rmse rises when a column is shuffled, reported
    # sign-flipped so that the most important column is first and positive
    importance = json.loads((run / "explain" / "importance.json").read_text())
    assert importance["metric"] == "rmse" and importance["higher_is_better"] is False
    assert manifest["importance"] == importance and len(importance["features"]) == 10
    assert importance["features"][0]["mean"] > 0 and importance["baseline"] == pytest.approx(metrics["test/rmse"], rel=1e-3)
    assert manifest["parity"]["scale"] == pytest.approx(manifest["target"]["std"])
    assert manifest["io"]["outputs"][0]["name"] == "prediction"
    assert manifest["metrics"]["fp32"]["test_rmse"] == pytest.approx(metrics["test/rmse"], rel=1e-3)
    quant = manifest["quantization"]
    assert quant["metric"] == "rmse" and quant["budget"] == 0.01
    assert quant["accepted"] == (quant["change"] <= 0.01) == (manifest["models"]["int8"] is not None)
    assert _keel("bundle", "verify", str(run / "bundle")).returncode == 0

    # predict: a `prediction` column in the target's units, equal to the stored samples
    samples = pd.read_csv(run / "bundle" / "samples" / "input.csv")
    samples.to_csv(tmp_path / "rows.csv", index=False)
    out = _keel("predict", str(run / "bundle"), str(tmp_path / "rows.csv"))
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(__import__("io").StringIO(out.stdout))
    assert list(table.columns) == ["row", "prediction"]
    stored = np.load(run / "bundle" / "samples" / "prediction.npy")
    np.testing.assert_allclose(table["prediction"].to_numpy(), stored, rtol=1e-5, atol=1e-4)
    assert 0 < table["prediction"].mean() < 400  # the target's units (25..346), not standardized values

    # resume with ckpt_path=auto: two more epochs continue from the last checkpoint's step
    steps = m["global_step"]
    more = _train_py(tmp_path, "ckpt_path=auto", f"run_dir={run}", "trainer.max_epochs=5")
    assert more.returncode == 0, more.stderr[-3000:]
    m2 = json.loads((run / "metrics.json").read_text())
    assert m2["task"] == "regression" and m2["global_step"] == steps * 5 // 3
    assert m2["metrics"]["val/rmse_best"] <= metrics["val/rmse_best"] + 1e-6  # best-so-far survives the resume


def test_a_float_target_in_a_csv_is_inferred_as_regression_and_said_once(tmp_path):
    """The issue's case: diabetes as a CSV with `data=csv data.target=target` was a 214-class
    classifier; it is a regression now, and the log says so in one line."""
    df = _diabetes_frame()
    df.to_csv(tmp_path / "diabetes.csv", index=False)
    proc = _train_py(tmp_path / "logs", "data=csv", f"data.path={tmp_path / 'diabetes.csv'}", "data.target=target",
                     "trainer.max_epochs=2", "callbacks=training", "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = _run_dirs(tmp_path / "logs")
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if "task: regression (inferred:" in line]
    assert len(lines) == 1, out[-3000:]
    assert "task=classification to choose otherwise" in lines[0]
    m = json.loads((run / "metrics.json").read_text())
    assert m["task"] == "regression" and "test/rmse" in m["metrics"] and "test/acc" not in m["metrics"]


def test_an_ambiguous_integer_target_is_refused_with_how_to_choose(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300), "y": rng.integers(0, 30, 300)})
    df.to_csv(tmp_path / "t.csv", index=False)
    proc = _train_py(tmp_path / "logs", "data=csv", f"data.path={tmp_path / 't.csv'}", "data.target=y")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr + proc.stdout
    assert "Fix: task=classification or task=regression" in err
    assert "Traceback" not in err
    assert not _run_dirs(tmp_path / "logs")  # nothing trained
    # choosing resolves it
    ok = _train_py(tmp_path / "logs", "data=csv", f"data.path={tmp_path / 't.csv'}", "data.target=y", "task=regression",
                   "trainer.max_epochs=1", "callbacks=training", "logger=none")
    assert ok.returncode == 0, ok.stderr[-3000:]
    (run,) = _run_dirs(tmp_path / "logs")
    assert json.loads((run / "metrics.json").read_text())["task"] == "regression"


def test_regression_refuses_classification_options_before_training(tmp_path):
    proc = _train_py(tmp_path, "data=diabetes", "model.loss.label_smoothing=0.1", "monitor.metric=val/acc",
                     "monitor.mode=max")
    assert proc.returncode == 2
    err = proc.stderr + proc.stdout
    assert "model.loss.label_smoothing=0.1: label smoothing applies to classification, not regression" in err
    assert "monitor.metric='val/acc': expected auto or a metric that regression logs" in err
    assert "2 problems" in err
