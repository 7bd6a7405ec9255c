"""A default run as a person sees it: the console (keel's lines only, one per epoch, the early
stop said), train.log (everything), and TensorBoard read through its own HTTP server on loopback
(the groups the Scalars page opens on, no per-feature cards, a readable run name, a curated
HParams table)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# keel's INFO lines: "HH:MM:SS message" (keel.run.console.ConsoleFormatter); other loggers'
# lines carry "LEVEL [logger]" after the time
KEEL_LINE = re.compile(r"^\d\d:\d\d:\d\d (?![A-Z]+ \[)")
SUMMARY_LINE = re.compile(r"^(keel: .+|  [a-z0-9 ]{1,14}: .+|)$")


def _train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    # no refresh_rate override: the default bar, which hides itself when stderr is not a terminal
    cmd = [sys.executable, "train.py", f"paths.log_dir={tmp_path}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _not_keels(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if not KEEL_LINE.match(ln) and not SUMMARY_LINE.match(ln)]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default job (digits, mlp, export + int8), with early stopping reached quickly."""
    tmp = tmp_path_factory.mktemp("console")
    proc = _train(tmp, "trainer.max_epochs=30", "callbacks.early_stopping.patience=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p.parent for p in tmp.rglob("metrics.json")]
    return proc, run


def test_console_holds_keels_lines_one_per_epoch_and_the_stop(default_run):
    proc, run = default_run
    console = proc.stdout + proc.stderr
    others = _not_keels(console)
    assert len(others) <= 3, "lines keel did not write:\n" + "\n".join(others)
    epochs = [ln for ln in proc.stdout.splitlines() if re.match(r"^\d\d:\d\d:\d\d epoch \d+/29  train/loss ", ln)]
    m = json.loads((run / "metrics.json").read_text())
    assert len(epochs) == m["epochs_trained"] >= 3  # one line per epoch trained
    assert all(re.search(r"val/acc \d\.\d{4} \((best|best \d\.\d{4} at epoch \d+)\)  lr [\d.e-]+  [\d.]+ s$", ln)
               for ln in epochs), epochs
    assert m["stopped_early"], "patience=2 over 30 epochs should stop early on digits"
    stop = [ln for ln in proc.stdout.splitlines() if " early stopping after epoch " in ln]
    assert len(stop) == 1 and "val/acc did not improve for 2 validations; best " in stop[0], stop
    assert "Quantization parameters" not in console and "onnx_ir" not in console and "LeafSpec" not in console
    assert "| Name " not in console  # Lightning's model summary: train.log only


def test_train_log_keeps_the_epochs_and_the_libraries_lines(default_run):
    proc, run = default_run
    log = (run / "train.log").read_text()
    assert len(re.findall(r"\]\[keel\.callbacks\.epoch_summary\]\[INFO\] - epoch \d+/29 ", log)) >= 3
    assert "early stopping after epoch" in log
    assert "[lightning.pytorch.utilities.rank_zero][INFO] - GPU available" in log  # kept, off the console
    assert "Total params" in log  # the model summary
    assert "Quantization parameters" in log or "onnx" in log.lower()


def test_console_log_all_shows_the_libraries_too(tmp_path):
    proc = _train(tmp_path, "trainer.max_epochs=1", "callbacks=training", "logger=none", "console_log=all")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "INFO [lightning.pytorch.utilities.rank_zero] GPU available" in proc.stdout


def test_last_checkpoint_is_recorded_when_the_best_is_the_first_epoch(tmp_path):
    proc = _train(tmp_path, "trainer.max_epochs=1", "callbacks=training", "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p.parent for p in tmp_path.rglob("metrics.json")]
    m = json.loads((run / "metrics.json").read_text())
    assert Path(m["best_checkpoint"]).name == "epoch000.ckpt"
    assert m["last_checkpoint"] == str(run / "checkpoints" / "last.ckpt") and Path(m["last_checkpoint"]).is_file()
    assert f"last ckpt     : {run / 'checkpoints' / 'last.ckpt'}" in proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def tensorboard_server(default_run):
    """``tensorboard --logdir <run>/tensorboard`` as the summary prints it, on loopback."""
    proc, run = default_run
    command = next(ln for ln in proc.stdout.splitlines() if "tensorboard --logdir" in ln).split(": ", 1)[1]
    logdir = command.split("--logdir ", 1)[1].strip()
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(base + "/data/plugin/scalars/tags"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise AssertionError("TensorBoard did not come up")
            time.sleep(0.5)
        yield base, run
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_tensorboard_opens_on_train_val_test_with_a_readable_run(tensorboard_server):
    base, run = tensorboard_server
    runs = _get(base + "/data/plugin/scalars/tags")
    (name, tags), = runs.items()
    assert name != "." and name.startswith(run.name) and "digits-mlp" in name, name
    groups = {t.split("/")[0] for t in tags}
    assert groups == {"train", "val", "test"}, sorted(tags)  # the page's groups, sorted: test, train, val
    assert len(tags) <= 40 and not any(t.startswith(("drift_features/", "data/", "hparams/")) for t in tags)
    assert {"train/loss", "val/acc", "val/acc_best", "test/acc", "train/lr/all", "val/drift_psi_max"} <= set(tags)
    # per-feature drift as one table per split and one histogram, not 128 scalar cards
    texts = _get(base + "/data/plugin/text/tags")[name]
    assert {"val/drift/text_summary", "test/drift/text_summary", "data/report/text_summary"} <= set(texts)
    table = _get(base + "/data/plugin/text/text?" + urllib.parse.urlencode(
        {"run": name, "tag": "val/drift/text_summary"}))[0]["text"]
    assert table.count("<tr>") >= 30 and "noise bound" in table
    assert "val/drift_feature_psi" in _get(base + "/data/plugin/histograms/tags")[name]


def test_tensorboard_hparams_shows_the_curated_set_and_final_metrics(tensorboard_server):
    base, run = tensorboard_server
    request = urllib.parse.quote(json.dumps({"experimentName": ""}))
    experiment = _get(base + f"/data/plugin/hparams/experiment?request={request}")
    params = [h["name"] for h in experiment["hparamInfos"]]
    assert {"data", "model", "optimizer", "optimizer.lr", "data.batch_size", "seed"} <= set(params)
    assert "callbacks.early_stopping.patience" in params  # overridden on the command line
    assert len(params) <= 20 and not any("_target_" in p for p in params), params
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"test/acc", "val/acc_best"} <= metrics and all(t.startswith(("test/", "val/")) for t in metrics)
