"""Observability in real runs: `debug=profile` traces and summary, TensorBoard views, throughput."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keel.pipeline import train

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _train_py(tmp_path: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", f"paths.log_dir={tmp_path}", "callbacks.progress_bar.refresh_rate=0", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [p for p in (run_dir / "tensorboard").iterdir() if p.is_dir()]  # <run>/tensorboard/<run name>
    acc = EventAccumulator(str(run),
                           size_guidance={"scalars": 0, "images": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    return acc


def _pr_totals(acc, tag: str) -> int:
    """Rows behind a PR curve: TP + FP + TN + FN at the lowest threshold."""
    from tensorboard.util import tensor_util

    (event,) = acc.Tensors(tag)
    data = tensor_util.make_ndarray(event.tensor_proto)  # [TP, FP, TN, FN, precision, recall] x thresholds
    return int(round(data[:4, 0].sum()))


def test_debug_profile_writes_trace_and_summary(tmp_path):
    proc = _train_py(tmp_path, "debug=profile", "logger=tensorboard")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p.parent for p in tmp_path.rglob("metrics.json")]
    assert run.parent == tmp_path / "profile" / "runs"
    prof = run / "profiler"

    traces = sorted(prof.glob("*.pt.trace.json"))
    assert len(traces) == 1 and "training_step" in traces[0].name, sorted(p.name for p in prof.iterdir())
    events = json.loads(traces[0].read_text())["traceEvents"]
    steps = {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert len(steps) == 10  # schedule.active
    assert any(e.get("name", "").endswith(".training_step") for e in events)

    text = (prof / "summary.txt").read_text()
    assert f"trace   : {traces[0].name}" in text
    assert "window  : 10 training steps" in text
    split = text.split("== step time split (host wall time) ==")[1].split("\n\n")[0]
    rows = {}
    for line in split.strip().splitlines()[1:]:
        m = re.fullmatch(r"(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", line.strip())
        assert m, line
        rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    phases = ["forward", "backward", "data loading", "optimizer", "other"]
    assert list(rows) == [*phases, "total"]
    assert sum(rows[p][1] for p in phases) == pytest.approx(100.0, abs=0.3)  # printed to 0.1
    assert sum(rows[p][0] for p in phases) == pytest.approx(rows["total"][0], abs=0.03)
    assert rows["forward"][1] > 0 and rows["backward"][1] > 0 and rows["optimizer"][1] > 0

    ops = text.split("== top operators by self CPU time ==")[1].strip().splitlines()[1:]
    assert len(ops) == 20 and all(re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+\S", op) for op in ops)
    self_ms = [float(op.split()[0]) for op in ops]
    assert self_ms == sorted(self_ms, reverse=True)
    assert any("aten::" in op for op in ops)

    record = json.loads((prof / "summary.json").read_text())
    assert sum(record["phases_pct"].values()) == pytest.approx(100.0)
    assert record["steps"] == 10 and record["trace"] == traces[0].name
    assert (prof / "fit-operators.txt").read_text().startswith("FIT Profiler Report")


def test_tensorboard_views_and_throughput(compose_cfg):
    cfg = compose_cfg("callbacks=training", "logger=tensorboard", "trainer.max_epochs=2",
                      "callbacks.tensorboard_views.histograms=true", "callbacks.early_stopping.patience=100")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    m = json.loads((run / "metrics.json").read_text())
    acc = _events(run)
    tags = acc.Tags()

    # a confusion-matrix image after every validation epoch (not the sanity check), one at test
    val_images = acc.Images("val/confusion_matrix")
    steps_per_epoch = m["global_step"] // 2
    assert [e.step for e in val_images] == [steps_per_epoch, 2 * steps_per_epoch]
    assert len(acc.Images("test/confusion_matrix")) == 1
    assert val_images[0].width > 10 * 12 and val_images[0].height > 10 * 12

    # PR curves: one per digit, over every test row
    classes = [str(c) for c in m["classes"]]
    pr_tags = set(acc.PluginTagToContent("pr_curves"))
    assert pr_tags == {f"test/pr_curve/{c}" for c in classes}
    assert _pr_totals(acc, "test/pr_curve/3") == m["split_sizes"]["test"]

    # misclassified digits: as many as the test confusion matrix has off the diagonal (up to 16)
    cm = np.array(m["confusion_matrix"])
    wrong = int(cm.sum() - np.trace(cm))
    assert wrong > 0, "two epochs should leave some test digits wrong"
    assert "test/misclassified" in tags["images"]
    from tensorboard.util import tensor_util

    (text_event,) = acc.Tensors("test/misclassified/text_summary")
    table = tensor_util.make_ndarray(text_event.tensor_proto).item().decode()
    assert len([r for r in table.splitlines() if re.match(r"\| \d+ \|", r)]) == min(16, wrong)

    # histograms of every parameter and its gradient, each epoch
    assert "weights/net.layers.1.weight" in tags["histograms"] and "grads/net.layers.1.weight" in tags["histograms"]
    assert len(acc.Histograms("grads/net.layers.1.weight")) == 2

    # throughput every epoch, over the same time: samples / steps = train rows per optimizer step
    samples = acc.Scalars("train/samples_per_s")
    steps = acc.Scalars("train/steps_per_s")
    assert [e.step for e in samples] == [steps_per_epoch, 2 * steps_per_epoch]
    for s, t in zip(samples, steps):
        assert s.value > 0 and s.value / t.value == pytest.approx(m["split_sizes"]["train"] / steps_per_epoch, rel=1e-5)
    assert len(acc.Scalars("val/samples_per_s")) == 2
    # ... and not in the run's metrics, which stay identical for identical seeds
    assert not [k for k in m["metrics"] if k.endswith("_per_s")]


def test_views_off_without_tensorboard_and_throughput_in_csv(compose_cfg):
    cfg = compose_cfg("callbacks=training", "logger=csv", "debug=fast")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    assert not (out / "tensorboard").exists()
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/samples_per_s", "train/steps_per_s", "val/samples_per_s"} <= set(header)


def test_views_gather_every_test_row_under_ddp(tmp_path):
    proc = _train_py(tmp_path, "trainer.devices=2", "trainer.max_epochs=1", "callbacks=training", "logger=tensorboard")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p.parent for p in tmp_path.rglob("metrics.json")]
    m = json.loads((run / "metrics.json").read_text())
    assert m["world_size"] == 2
    acc = _events(run)
    # each process saw half of the test rows; the curves cover both halves exactly once
    assert _pr_totals(acc, "test/pr_curve/0") == m["split_sizes"]["test"]
    assert len(acc.Images("val/confusion_matrix")) == 1
    samples, steps = acc.Scalars("train/samples_per_s"), acc.Scalars("train/steps_per_s")
    # the job's rows: each process trains on ceil(train / 2) rows (padded shards) in the same steps
    shard = -(-m["split_sizes"]["train"] // 2)
    assert samples[0].value / steps[0].value == pytest.approx(2 * shard / m["global_step"], rel=1e-5)
