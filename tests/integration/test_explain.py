"""Explanations end to end: a table run's permutation importance reaches the run directory, the
bundle manifest, TensorBoard and the console, and ranks a planted column first; an image run logs
attribution overlays; `keel explain` redoes both from a run directory; sweeps skip them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _train_py(tmp_path: Path, *overrides: str, timeout: int = 300, multirun: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", *(["-m"] if multirun else []), f"paths.log_dir={tmp_path}", "callbacks.progress_bar.refresh_rate=0",
           *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _keel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keel.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def _run_dir(root: Path) -> Path:
    (run,) = sorted(p.parent for p in root.rglob("metrics.json"))
    return run


def _images(tb_run: Path) -> dict[str, tuple[int, int]]:
    """Image tags of a TensorBoard run -> (width, height) of their last image."""
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    acc = EventAccumulator(str(tb_run), size_guidance={IMAGES: 0})
    acc.Reload()
    return {tag: (acc.Images(tag)[-1].width, acc.Images(tag)[-1].height) for tag in acc.Tags()["images"]}


def _planted_csv(path: Path, n: int = 900, seed: int = 0) -> None:
    """Six numeric columns; the class is decided by `signal` (and weakly by `hint`); the rest is noise."""
    rng = np.random.default_rng(seed)
    cols = {name: rng.normal(size=n) for name in ("noise_a", "hint", "noise_b", "signal", "noise_c", "noise_d")}
    y = (cols["signal"] + 0.3 * cols["hint"] + 0.1 * rng.normal(size=n) > 0).astype(int)
    lines = [",".join([*cols, "label"])]
    lines += [",".join([*(f"{cols[c][i]:.5f}" for c in cols), str(y[i])]) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def test_table_importance_in_run_dir_bundle_tensorboard_console_and_keel_explain(tmp_path, tensorboard_run):
    csv = tmp_path / "planted.csv"
    _planted_csv(csv)
    proc = _train_py(tmp_path, "data=csv", f"data.path={csv}", "data.target=label", "trainer.max_epochs=15",
                     "callbacks.early_stopping.patience=100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _run_dir(tmp_path)
    report = json.loads((run / "explain" / "importance.json").read_text())
    assert report["method"] == "permutation" and report["metric"] == "acc" and report["split"] == "test"
    assert report["repeats"] == 5 and report["rows"] == json.loads((run / "metrics.json").read_text())["split_sizes"]["test"]
    names = [f["name"] for f in report["features"]]
    assert names[0] == "signal" and sorted(names) == sorted(["noise_a", "hint", "noise_b", "signal", "noise_c", "noise_d"])
    assert [f["rank"] for f in report["features"]] == list(range(1, 7))
    top = report["features"][0]
    assert top["mean"] > 0.2 and top["mean"] > 5 * max(f["mean"] for f in report["features"] if f["name"].startswith("noise"))
    assert (run / "explain" / "importance.png").stat().st_size > 1000

    # the bundle carries the same report, and still verifies (hashes and stored samples)
    manifest = json.loads((run / "bundle" / "manifest.json").read_text())
    assert manifest["importance"] == report
    assert _keel("bundle", "verify", str(run / "bundle")).returncode == 0

    # printed at the end of the run, and a bar chart in TensorBoard's Images tab
    out = proc.stdout + proc.stderr
    assert "permutation feature importance" in out and "1. signal" in out
    images = _images(tensorboard_run(run))
    assert "test/feature_importance" in images and min(images["test/feature_importance"]) > 200

    # keel explain on the run directory: printed, written, and the bundle manifest updated
    again = _keel("explain", str(run), "--repeats", "2", "--top", "3", "--seed", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1. signal" in again.stdout and "4. " not in again.stdout
    assert "bundle manifest updated" in again.stdout
    redone = json.loads((run / "explain" / "importance.json").read_text())
    assert redone["repeats"] == 2 and redone["seed"] == 1 and redone["features"][0]["name"] == "signal"
    assert json.loads((run / "bundle" / "manifest.json").read_text())["importance"] == redone
    assert _keel("bundle", "verify", str(run / "bundle")).returncode == 0


def test_image_run_logs_overlays_and_keel_explain_writes_pngs(tmp_path, tensorboard_run):
    from PIL import Image

    proc = _train_py(tmp_path, "model=cnn", "model.net.channels=[8,16]", "trainer.max_epochs=2",
                     "callbacks.explain.images=6", "callbacks.explain.ig_steps=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _run_dir(tmp_path)
    with Image.open(run / "explain" / "explanations.png") as grid:
        size, mode = grid.size, grid.mode
    # one row per image: the input, then three overlays
    assert size[0] > size[1] / 6 * 3 and mode == "RGB"
    images = _images(tensorboard_run(run))
    assert images["test/explanations"] == size
    out = proc.stdout + proc.stderr
    assert "saliency, integrated_gradients, grad_cam maps of 6 test images" in out
    assert "Grad-CAM on net.features." in out
    assert "importance" not in json.loads((run / "bundle" / "manifest.json").read_text())

    again = _keel("explain", str(run), "--images", "4", "--methods", "saliency,grad_cam", "--out", str(tmp_path / "x"))
    assert again.returncode == 0, again.stderr[-3000:]
    pngs = sorted((tmp_path / "x" / "images").glob("*.png"))
    assert len(pngs) == 8 and {p.stem.rsplit("_", 1)[-1] for p in pngs} == {"saliency", "cam"}
    maps = np.load(tmp_path / "x" / "maps.npz")
    assert set(maps.files) >= {"saliency", "grad_cam", "inputs", "true", "predicted"}
    assert maps["saliency"].shape == maps["grad_cam"].shape == (4, 8, 8)  # the images' height and width
    assert maps["inputs"].shape == (4, 1, 8, 8)
    assert 0.0 <= maps["grad_cam"].min() and maps["grad_cam"].max() <= 1.0
    assert len(set(maps["true"].tolist())) == 4  # spread over the classes


def test_mlp_on_images_explains_without_grad_cam_and_sweeps_skip(tmp_path):
    proc = _train_py(tmp_path, "trainer.max_epochs=1", "seed=1,2", "callbacks.explain.images=2", multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.rglob("metrics.json"))
    assert len(runs) == 2 and not any((r / "explain").exists() for r in runs)

    proc = _keel("explain", str(runs[0]), "--images", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "grad_cam: the net has no convolution" in proc.stdout
    assert sorted(p.stem.split("_", 2)[-1] for p in (runs[0] / "explain" / "images").glob("*.png")) == [
        "integrated_gradients", "integrated_gradients", "saliency", "saliency"]
