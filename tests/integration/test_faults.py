"""Faults injected into real runs: stop signals, a full disk, a dead DataLoader worker, a NaN at
step N, two commands at once. Each checks what the user gets (exit status, message, run.json)
and that what survived is usable: the run continues with ``ckpt_path=auto``.

Signals are sent by the run itself at a chosen global step (through a patched callback hook),
so the tests do not depend on timing; test_lifecycle.py sends them from outside."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from keel.callbacks.nan_guard import NanGuard, NonFiniteError
from keel.callbacks.preemption import Interrupted
from keel.errors import DiskFullError
from keel.pipeline import train
from keel.run.lifecycle import WorkerDiedError

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# 3 epochs of 20 batches; deterministic so that a resumed run must match an uninterrupted one
BASE = ("seed=3", "trainer.deterministic=true", "trainer.max_epochs=3", "logger=none", "callbacks=training",
        "callbacks.progress_bar.refresh_rate=0")
OUTCOME = ("metrics", "objective", "epochs_trained", "global_step", "confusion_matrix")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _at_step(monkeypatch, step: int, action) -> None:
    """Run ``action(trainer, pl_module, batch)`` at the end of training batch ``step`` (1-based global step)."""
    original = NanGuard.on_train_batch_end

    def hook(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == step:
            action(trainer, pl_module, batch)
        return original(self, trainer, pl_module, outputs, batch, batch_idx)

    monkeypatch.setattr(NanGuard, "on_train_batch_end", hook)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every interrupted one must end like."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from keel.config import register_resolvers

    register_resolvers()
    out = tmp_path_factory.mktemp("reference")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(BASE))
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.log_dir = str(out / "run"), str(out / "logs")
    train(cfg)
    return _json(out / "run" / "metrics.json")


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_stop_signal_mid_epoch_saves_a_checkpoint_and_resume_ends_like_an_uninterrupted_run(
        compose_cfg, monkeypatch, reference, sig):
    _at_step(monkeypatch, 27, lambda *_: os.kill(os.getpid(), sig))  # epoch 1, batch 7 of 20
    before = signal.getsignal(sig)
    cfg = compose_cfg(*BASE)
    run = Path(cfg.paths.output_dir)
    with pytest.raises(Interrupted) as info:
        train(cfg)
    assert info.value.code == 128 + sig
    name = signal.Signals(sig).name
    last = run / "checkpoints" / "last.ckpt"
    assert str(info.value) == (f"stopped by {name} at epoch 1, batch 7 (global step 27); checkpoint saved: {last}; "
                               f"continue it with `python train.py ckpt_path=auto run_dir={run}`")
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 27 and ckpt["keel_preempted"]["batches_done"] == 7
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches_done": 7}]
    record = _json(run / "run.json")
    assert record["status"] == "interrupted" and record["error"]["message"] == str(info.value)
    assert not (run / "metrics.json").exists()
    assert signal.getsignal(sig) == before  # the run's handler is gone again

    monkeypatch.undo()
    train(compose_cfg(*BASE, "ckpt_path=auto"))
    got = _json(run / "metrics.json")
    assert {k: got[k] for k in OUTCOME} == {k: reference[k] for k in OUTCOME}  # bit-identical
    assert [a["status"] for a in _json(run / "run.json")["attempts"]] == ["interrupted", "finished"]


def test_stop_signal_after_training_stops_at_once_and_resume_finishes_the_run(compose_cfg, monkeypatch, reference):
    def signal_during_export(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal should have stopped the run")

    import keel.callbacks.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "export_checkpoint", signal_during_export)
    cfg = compose_cfg(*BASE, "callbacks=default", "callbacks.progress_bar.refresh_rate=0")
    run = Path(cfg.paths.output_dir)
    with pytest.raises(Interrupted) as info:
        train(cfg)
    assert info.value.code == 128 + signal.SIGTERM
    assert str(info.value) == "stopped by SIGTERM; continue it with ckpt_path=auto"
    assert _json(run / "run.json")["status"] == "interrupted" and not (run / "bundle").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2  # every epoch is saved

    monkeypatch.undo()
    train(compose_cfg(*BASE, "callbacks=default", "callbacks.progress_bar.refresh_rate=0", "ckpt_path=auto"))
    got = _json(run / "metrics.json")
    assert got["global_step"] == reference["global_step"] and (run / "bundle" / "manifest.json").is_file()
    assert _json(run / "run.json")["status"] == "finished"


def test_disk_full_during_a_checkpoint_write_keeps_the_last_one_and_the_run_continues(compose_cfg, monkeypatch):
    import keel.checkpoints.write as checkpoint_io

    real_save = torch.save
    saves = []

    def save_until_full(obj, f):
        saves.append(obj["epoch"])
        if obj["epoch"] >= 1:  # the second epoch's checkpoint meets a full disk
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint_io.torch, "save", save_until_full)
    cfg = compose_cfg(*BASE)
    run = Path(cfg.paths.output_dir)
    with pytest.raises(DiskFullError) as info:
        train(cfg)
    msg = str(info.value)
    assert msg.startswith(f"no space left while writing {run / 'checkpoints'}")
    assert "was written; the files beside it are untouched" in msg and "ckpt_path=auto" in msg
    record = _json(run / "run.json")
    assert record["status"] == "failed" and record["error"]["type"] == "DiskFullError"
    ckpts = run / "checkpoints"
    assert all(torch.load(p, weights_only=True)["epoch"] == 0 for p in ckpts.glob("*.ckpt"))  # whole, epoch 0
    assert not [p for p in ckpts.iterdir() if p.name.endswith(".tmp")]

    monkeypatch.setattr(checkpoint_io.torch, "save", real_save)
    train(compose_cfg(*BASE, "ckpt_path=auto"))
    m = _json(run / "metrics.json")
    assert m["epochs_trained"] == 3 and m["resumed_from"].endswith(".ckpt")


def test_disk_full_during_a_bundle_export_keeps_the_previous_bundle(tmp_path, monkeypatch):
    from keel.cli import main as keel_main

    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "train.py", *BASE, "trainer.max_epochs=1", "callbacks=default",
                           "callbacks.progress_bar.refresh_rate=0", f"run_dir={run}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    bundle = run / "bundle"
    before = {p.name: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}

    full = subprocess.run([sys.executable, "-c", (
        "import errno, onnx, runpy, sys\n"
        "def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "onnx.save_model = onnx.save = full\n"
        f"sys.argv = ['export.py', 'ckpt_path={run}/checkpoints/last.ckpt', 'paths.log_dir={tmp_path}']\n"
        "runpy.run_path('export.py', run_name='__main__')\n")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert full.returncode == 2, (full.stdout[-2000:], full.stderr[-3000:])
    assert f"The previous bundle {bundle} is intact." in full.stderr and "Traceback" not in full.stderr
    assert {p.name: p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before
    assert not [p for p in run.iterdir() if p.name.startswith(".bundle")]
    assert keel_main(["bundle", "verify", str(bundle)]) == 0


def test_a_dataloader_worker_that_dies_is_reported_and_the_run_continues(compose_cfg, monkeypatch):
    def kill_a_worker(trainer, *_):
        workers = trainer.train_dataloader._iterator._workers  # persistent workers of this epoch
        os.kill(workers[0].pid, signal.SIGKILL)

    _at_step(monkeypatch, 25, kill_a_worker)
    cfg = compose_cfg(*BASE, "data.num_workers=2")
    run = Path(cfg.paths.output_dir)
    with pytest.raises(WorkerDiedError) as info:
        train(cfg)
    msg = str(info.value)
    # torch reports the death itself, or the main process loses the connection the worker was sending on
    assert msg.startswith("a DataLoader worker process died: ")
    assert "DataLoader worker (pid" in msg or "while receiving a batch from a worker" in msg
    assert f"Newest checkpoint: {run / 'checkpoints'}" in msg and "lower data.num_workers" in msg
    assert _json(run / "run.json")["error"]["type"] == "WorkerDiedError"

    monkeypatch.undo()
    train(compose_cfg(*BASE, "data.num_workers=0", "ckpt_path=auto"))
    m = _json(run / "metrics.json")
    assert m["epochs_trained"] == 3 and m["resumed_from"].endswith(".ckpt")


def test_a_nan_at_step_n_names_it_and_the_last_good_checkpoint_resumes(compose_cfg, monkeypatch):
    from keel.models import TaskModule as Classifier

    original = Classifier.training_step

    def nan_at_step_45(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step == 45 else loss

    monkeypatch.setattr(Classifier, "training_step", nan_at_step_45)
    cfg = compose_cfg(*BASE)
    run = Path(cfg.paths.output_dir)
    with pytest.raises(NonFiniteError) as info:
        train(cfg)
    last = run / "checkpoints" / "last.ckpt"
    assert f"non-finite loss at global step 45 (epoch 2, batch 5); last good checkpoint: {last}" in str(info.value)
    assert torch.load(last, weights_only=True)["global_step"] == 40

    monkeypatch.undo()
    train(compose_cfg(*BASE, "ckpt_path=auto"))
    assert _json(run / "metrics.json")["global_step"] == 60


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_runs_started_together_never_share_a_directory(tmp_path):
    quick = ("debug=fast", "logger=none", "callbacks=none", f"paths.log_dir={tmp_path}")
    # two runs on the same output root at the same moment: two run directories
    both = [_popen(*quick) for _ in range(2)]
    # two commands naming the same run directory at the same moment: one runs, one is refused
    same = [_popen(*quick, f"run_dir={tmp_path / 'shared'}") for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in both + same]
    assert [r[0] for r in results[:2]] == [0, 0], results[0][2][-2000:] + results[1][2][-2000:]
    runs = sorted((tmp_path / "debug" / "runs").iterdir())
    assert len(runs) == 2 and all(_json(r / "run.json")["status"] == "finished" for r in runs)
    assert {_json(r / "run.json")["host"]["pid"] for r in runs} == {p.pid for p in both}

    codes = sorted(r[0] for r in results[2:])
    refused = next(r for r in results[2:] if r[0] != 0)
    assert codes == [0, 2], [r[2][-1500:] for r in results[2:]]
    assert "is in use" in refused[2] and "Traceback" not in refused[2]
    record = _json(tmp_path / "shared" / "run.json")
    assert record["status"] == "finished" and len(record["attempts"]) == 1


def test_sweeps_started_together_never_share_a_directory(tmp_path):
    sweeps = [_popen("-m", "debug=fast", "logger=none", "callbacks=none", "seed=1,2", f"paths.log_dir={tmp_path}")
              for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in sweeps]
    assert [r[0] for r in results] == [0, 0], [r[2][-2000:] for r in results]
    dirs = sorted((tmp_path / "debug" / "multiruns").iterdir())
    assert len(dirs) == 2
    for d in dirs:
        jobs = sorted(p.name for p in d.iterdir() if p.is_dir() and p.name.isdigit())
        assert jobs == ["0", "1"] and all(_json(d / j / "run.json")["status"] == "finished" for j in jobs)
