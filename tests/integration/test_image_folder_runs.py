"""data=image_folder end to end: train on a tiny PNG/JPEG folder (a corrupt file and a grayscale
one among RGB), predict files, a folder and an .npy with the bundle; bad files stop the run before
training, or, found by a worker, fail it without recording the epoch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keel.cli import main as keel
from keel.serve.images import load_image

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230)]


def _folder(root: Path, per_class: int = 24) -> Path:
    """Three classes told apart by colour: RGB PNGs, every 6th a JPEG, one grayscale PNG, one PNG
    cut short."""
    rng = np.random.default_rng(0)
    for k, colour in enumerate(COLOURS):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (14, 14, 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(pixels)
            img.save(root / f"c{k}" / (f"{i}.jpg" if i % 6 == 5 else f"{i}.png"))
    Image.fromarray(np.full((14, 14), 90, np.uint8), mode="L").save(root / "c1" / "gray.png")
    whole = (root / "c2" / "0.png").read_bytes()
    (root / "c2" / "broken.png").write_bytes(whole[: len(whole) // 2])
    return root


def _train(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    cmd = [sys.executable, "train.py", "data=image_folder", f"paths.log_dir={tmp_path / 'out'}",
           "callbacks.progress_bar.refresh_rate=0", "logger=csv", "data.height=12", "data.width=12",
           "data.batch_size=16", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    runs = sorted((tmp_path / "out").rglob("run.json"))
    return proc, runs[-1].parent if runs else tmp_path


def test_train_cnn_then_predict_files_a_folder_and_npy(tmp_path, capsys):
    root = _folder(tmp_path / "img")
    proc, run = _train(tmp_path, f"data.root={root}", "model=cnn", "data.on_violation=drop", "trainer.max_epochs=2",
                       "data.num_workers=2", "optimizer.lr=0.01", "model.net.channels=[8]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "left out 1 file that breaks the contract (decode)" in out
    m = json.loads((run / "metrics.json").read_text())
    assert m["metrics"]["test/acc"] >= 0.9  # colour alone tells the classes apart
    report = json.loads((run / "data" / "contract_report.json").read_text())
    assert report["dropped"]["total"] == 1 and report["class_names"] == ["c0", "c1", "c2"]
    bundle = run / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["data"]["contract"]["shape"] == [3, 12, 12] and manifest["io"]

    capsys.readouterr()
    assert keel(["predict", str(bundle), str(root / "c0" / "1.png")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("row,file,label,class,p_0") and lines[1].startswith("0,1.png,0,0,")
    pred = tmp_path / "pred.csv"
    assert keel(["predict", str(bundle), str(root / "c2"), "--output", str(pred)]) == 2  # broken.png
    assert "decode on broken.png" in capsys.readouterr().err
    assert keel(["predict", str(bundle), str(root / "c2"), "--output", str(pred), "--on-invalid", "skip"]) == 0
    rows = pred.read_text().strip().splitlines()[1:]
    assert len(rows) == 24 and sum(r.split(",")[2] == "2" for r in rows) >= 16  # 2 epochs of a tiny net
    assert "broken.png" in (tmp_path / "pred.invalid.csv").read_text()
    npy = tmp_path / "x.npy"
    np.save(npy, np.stack([load_image(root / "c1" / f"{i}.png", (3, 12, 12)) for i in range(3)]))
    assert keel(["predict", str(bundle), str(npy)]) == 0
    assert [r.split(",")[1] for r in capsys.readouterr().out.strip().splitlines()[1:]] == ["1", "1", "1"]


def test_bad_files_stop_the_run_before_training_naming_every_one(tmp_path):
    root = _folder(tmp_path / "img")
    (root / "c0" / "empty.png").write_bytes(b"")
    proc, run = _train(tmp_path, f"data.root={root}", "model=cnn", "trainer.max_epochs=1")
    assert proc.returncode == 2
    assert "decode on c2/broken.png" in proc.stderr and "empty on c0/empty.png" in proc.stderr
    assert "Fix: replace or remove these files, or leave them out with data.on_violation=drop" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(run.rglob("*.ckpt"))


def test_a_file_broken_past_its_header_fails_the_run_without_recording_the_epoch(tmp_path):
    root = _folder(tmp_path / "img")
    (root / "c2" / "broken.png").unlink()
    whole = (root / "c2" / "1.png").read_bytes()
    (root / "c2" / "cut.png").write_bytes(whole[: len(whole) - 30])  # its header reads
    # headers only, and 2 images a split decoded for the statistics (cut.png is not among them)
    proc, run = _train(tmp_path, f"data.root={root}", "model=cnn", "trainer.max_epochs=2", "data.verify=header",
                       "data.stats_sample=2", "data.num_workers=2", "callbacks=training")
    assert proc.returncode == 2, proc.stderr[-2000:]
    # the worker's error reaches the console as one message naming the file (not "a worker died")
    assert "c2/cut.png: decode: the pixel data does not decode" in proc.stderr
    assert "(read in a DataLoader worker). Fix: replace or remove the file" in proc.stderr
    assert "Traceback" not in proc.stderr and "worker process died" not in proc.stderr
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed"
    assert not list(run.rglob("*.ckpt"))


def test_sigterm_inside_an_epoch_with_workers_resumes_to_the_same_metrics(tmp_path):
    """Augmented, 2 decoding workers, deterministic: killed by SIGTERM inside epoch 1 and resumed,
    the run ends with exactly the metrics of an uninterrupted one."""
    import signal
    import time

    root = _folder(tmp_path / "img", per_class=40)
    (root / "c2" / "broken.png").unlink()
    common = [f"data.root={root}", "model=cnn", "model.net.channels=[8]", "trainer.max_epochs=3", "seed=5",
              "trainer.deterministic=true", "callbacks=training", "data.num_workers=2", "data.batch_size=4",
              "data.augment.crop_scale=[0.6,1.0]", "data.augment.rotate=15", "data.augment.hflip=0.5"]
    whole, run_a = _train(tmp_path / "a", *common)
    assert whole.returncode == 0, whole.stderr[-2000:]

    log = tmp_path / "b.log"
    cmd = [sys.executable, "train.py", "data=image_folder", f"paths.log_dir={tmp_path / 'b' / 'out'}",
           "callbacks.progress_bar.refresh_rate=0", "logger=csv", "data.height=12", "data.width=12", *common]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while "epoch 0/2" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143, log.read_text()[-2000:]
    run_b = next((tmp_path / "b" / "out").rglob("run.json")).parent
    resumed = subprocess.run([*cmd, "ckpt_path=auto", f"run_dir={run_b}"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming inside epoch" in resumed.stdout + resumed.stderr
    a = json.loads((run_a / "metrics.json").read_text())["metrics"]
    b = json.loads((run_b / "metrics.json").read_text())["metrics"]
    assert a == b
