"""Contracted data end to end: own CSV files, breast cancer, drop mode, reports, drift from checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from keel.cli import main as keel

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _train(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path | None]:
    cmd = [sys.executable, "train.py", f"paths.log_dir={tmp_path / 'out'}", "callbacks.progress_bar.refresh_rate=0",
           *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    runs = sorted((tmp_path / "out").rglob("metrics.json"))
    return proc, runs[-1].parent if runs else None


def _people(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.uniform(18, 90, n).round(1)
    color = rng.choice(["red", "green", "blue"], n)
    label = np.where((age > 50) ^ (color == "red"), "yes", "no")
    return pd.DataFrame({"age": age, "color": color, "visits": rng.integers(0, 30, n), "label": label})


def test_own_csv_with_an_inferred_then_pinned_contract(tmp_path, capsys):
    csv = tmp_path / "people.csv"
    _people(600, 0).to_csv(csv, index=False)
    assert keel(["contract", "infer", str(csv), "--target", "label", "--name", "people"]) == 0
    # pinned as the README says (conf/data/contract/people.yaml), in a config dir of the user's
    # on Hydra's search path: nothing is written into the repository's conf/
    contract_dir = tmp_path / "conf" / "data" / "contract"
    contract_dir.mkdir(parents=True)
    (contract_dir / "people.yaml").write_text(capsys.readouterr().out)
    proc, run = _train(tmp_path, "data=csv", f"data.path={csv}", "data.target=label", "data/contract=people",
                       f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "trainer.max_epochs=15", "logger=csv",
                       "callbacks=training")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["metrics"]["test/acc"] > 0.9  # a learnable rule on age x color
    assert yaml.safe_load((run / "data" / "contract.yaml").read_text())["name"] == "people"
    ckpt = torch.load(m["best_checkpoint"], weights_only=True, map_location="cpu")
    assert ckpt["keel"]["contract"]["columns"]["color"]["categories"] == ["blue", "green", "red"]
    assert set(ckpt["keel"]["reference"]["features"]) == {"age", "color", "visits"}

    # the checkpoint's reference statistics judge new files (a scheduled job's exit status)
    same, shifted = tmp_path / "same.csv", tmp_path / "shifted.csv"
    _people(600, 1).to_csv(same, index=False)
    drifted = _people(600, 2)
    drifted["age"] = drifted["age"] * 0.3 + 10
    drifted.to_csv(shifted, index=False)
    assert keel(["drift", m["best_checkpoint"], str(same)]) == 0
    assert keel(["drift", m["best_checkpoint"], str(shifted)]) == 1


def test_drop_mode_writes_the_full_report(tmp_path):
    df = _people(400, 0)
    df.loc[[10, 20], "color"] = "purple"
    df.loc[30, "label"] = None
    csv = tmp_path / "dirty.csv"
    df.to_csv(csv, index=False)
    clean = _people(400, 0)
    contract = {"kind": "table", "name": "people", "target": "label", "classes": ["no", "yes"],
                "columns": {"age": {"dtype": "float64", "min": 0, "max": 120}, "visits": {"dtype": "int64"},
                            "color": {"dtype": "category", "categories": ["red", "green", "blue"]}}}
    assert len(clean) == 400
    spec = tmp_path / "people.yaml"
    spec.write_text(yaml.safe_dump(contract))
    proc, _ = _train(tmp_path, "data=csv", f"data.path={csv}", "data.target=label", f"data.contract={spec}",
                     "debug=fast", "logger=none", "callbacks=training")
    assert proc.returncode == 2 and "categories on color: 2 of" in proc.stderr

    proc, run = _train(tmp_path, "data=csv", f"data.path={csv}", "data.target=label", f"data.contract={spec}",
                       "data.on_violation=drop", "debug=fast", "logger=none", "callbacks=training")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data.on_violation=drop: dropped" in proc.stdout + proc.stderr
    report = json.loads((run / "data" / "contract_report.json").read_text())
    assert report["dropped"]["total"] == 3
    assert sorted(r for s in report["dropped"]["splits"].values() for r in s["rows"]) == [10, 20, 30]
    assert sum(report["split_sizes"].values()) == 397


def test_breast_cancer_reports_auroc_and_drift_in_tensorboard(tmp_path, tensorboard_run):
    proc, run = _train(tmp_path, "data=breast_cancer")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    assert m["test/acc"] >= 0.93 and m["test/auroc"] >= 0.97 and m["test/recall"] >= 0.9
    drift = json.loads((run / "data" / "drift_report.json").read_text())
    assert set(drift["splits"]) == {"val", "test"}
    assert drift["splits"]["test"]["leakage"]["count"] == 0
    assert "mean radius" in drift["splits"]["val"]["features"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(tensorboard_run(run)), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"val/drift_psi_max", "test/drift_label_js", "test/drift_features_alert", "test/auroc"} <= tags
    # per-feature values as one table per split and one histogram, never a scalar card each
    assert {t.split("/")[0] for t in tags} <= {"train", "val", "test"}, sorted(tags)
    assert len([t for t in tags if "drift" in t]) <= 8
    table = tensor_util.make_ndarray(acc.Tensors("val/drift/text_summary")[0].tensor_proto).item().decode()
    assert "| mean radius | numeric | PSI |" in table and "noise bound" in table
    assert "val/drift_feature_psi" in acc.Tags()["histograms"]
    report = tensor_util.make_ndarray(acc.Tensors("data/report/text_summary")[0].tensor_proto).item().decode()
    assert "test: 0 rows also in train" in report
