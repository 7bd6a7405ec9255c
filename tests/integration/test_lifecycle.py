"""A run's life: killed and resumed (ckpt_path=auto), its record (run.json), replay, NaN stop, debug presets."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from keel.pipeline import train

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
QUIET = ["logger=none", "callbacks=training", "callbacks.progress_bar.refresh_rate=0"]
# What a run computed (not when or where): must be identical between an interrupted and an uninterrupted run.
OUTCOME = ("metrics", "objective", "epochs_trained", "global_step", "confusion_matrix", "stopped_early")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _train_py(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _kill_inside_epoch(cmd: list[str], epoch: int, sig: int = signal.SIGKILL, timeout: float = 300) -> int:
    """Start ``cmd``, send it ``sig`` once its progress bar shows it inside ``epoch`` (10-90% done)
    and return its exit status. The bar (refresh_rate=1: every batch drawn) is the
    run's own account of where it is."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            chunk = proc.stdout.read1(4096)
            if not chunk:
                break
            seen += chunk
            bars = re.findall(rb"Epoch (\d+):\s+(\d+)%", seen[-4000:])
            if bars and int(bars[-1][0]) >= epoch and 10 <= int(bars[-1][1]) < 90:
                proc.send_signal(sig)
                proc.stdout.read()  # until it exits
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
    assert b"Trainer.fit` stopped: `max_epochs" not in seen, "the run ended on its own before the signal"
    return proc.returncode


def test_sigkill_mid_epoch_then_auto_resume_ends_like_an_uninterrupted_run(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "ref"
    common = ["seed=3", "trainer.deterministic=true", "trainer.max_epochs=6", "logger=none", "callbacks=training",
              f"paths.log_dir={tmp_path}"]
    reference = subprocess.Popen([sys.executable, "train.py", *common, "callbacks.progress_bar.refresh_rate=0",
                                  f"run_dir={ref}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    status = _kill_inside_epoch([sys.executable, "train.py", *common, "callbacks.progress_bar.refresh_rate=1",
                                 "callbacks.progress_bar.only_on_terminal=false",
                                 f"run_dir={run}"], epoch=3)
    assert status == -signal.SIGKILL

    # killed inside epoch >= 3: a whole checkpoint of a finished epoch >= 2, no final record
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert 2 <= last["epoch"] < 5 and "RngState" in last["callbacks"]
    assert not (run / "metrics.json").exists() and _json(run / "run.json")["status"] == "running"
    assert not list((run / "checkpoints").glob(".*.tmp"))

    # resumed with nothing but ckpt_path=auto and the directory: the run's own overrides are reused
    resumed = _train_py("ckpt_path=auto", f"run_dir={run}", "callbacks.progress_bar.refresh_rate=0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from  : {run}/checkpoints/last.ckpt" in resumed.stdout
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]

    got, want = _json(run / "metrics.json"), _json(ref / "metrics.json")
    assert {k: got[k] for k in OUTCOME} == {k: want[k] for k in OUTCOME}  # bit-identical, every metric
    record = _json(run / "run.json")
    assert record["status"] == "finished" and record["metrics"] == got["metrics"]
    assert [a["status"] for a in record["attempts"]] == ["killed", "finished"]
    assert record["attempts"][1]["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert record["seed"] == 3 and record["config"]["trainer"]["max_epochs"] == 6
    assert "ckpt_path=auto" in record["overrides"] and "seed=3" in record["overrides"]
    assert (run / ".hydra" / "overrides.yaml").read_text().count("seed=3") == 1
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 5  # written every epoch

    # finished: asked again, nothing is trained and the objective is reported
    before = (run / "metrics.json").stat().st_mtime_ns
    again = _train_py("ckpt_path=auto", f"run_dir={run}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "run already finished (ckpt_path=auto): nothing to train" in again.stdout
    assert f"objective     : val/acc_best={want['objective']:.4f}" in again.stdout
    assert (run / "metrics.json").stat().st_mtime_ns == before
    # ...and a new run is not started on top of it
    clash = _train_py(f"run_dir={run}")
    assert clash.returncode == 2 and "already holds a run (status 'finished'" in clash.stderr
    assert "seed=3" in (run / ".hydra" / "overrides.yaml").read_text()  # the run's record, not the refused command's


def test_sigterm_records_an_interrupted_run_and_exits_non_zero(tmp_path):
    run = tmp_path / "run"
    status = _kill_inside_epoch([sys.executable, "train.py", *QUIET[:2], "callbacks.progress_bar.refresh_rate=1",
                                 "callbacks.progress_bar.only_on_terminal=false",
                                 "trainer.max_epochs=5", f"run_dir={run}"], epoch=1, sig=signal.SIGTERM)
    assert status == 128 + signal.SIGTERM
    record = _json(run / "run.json")
    assert record["status"] == "interrupted" and record["ended_at"]
    last = run / "checkpoints" / "last.ckpt"
    assert re.fullmatch(rf"stopped by SIGTERM at epoch 1, batch \d+ \(global step \d+\); checkpoint saved: {last}; "
                        rf"continue it with `python train.py ckpt_path=auto run_dir={run}`", record["error"]["message"])
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] == 1 and 0 < saved["keel_preempted"]["batches_done"] < 20


def test_auto_resume_skips_a_torn_checkpoint_and_continues_the_same_tensorboard_run(compose_cfg, caplog,
                                                                                     tensorboard_run):
    """A finished run extended by more epochs, after its last.ckpt got truncated."""
    first = compose_cfg("debug=limit", "trainer.max_epochs=2", "callbacks=training", "logger=tensorboard",
                        "callbacks.progress_bar.refresh_rate=0", "monitor.metric=val/loss", "monitor.mode=min")
    train(first)
    out = Path(first.paths.output_dir)
    ckpts = out / "checkpoints"
    best = _json(out / "metrics.json")["best_checkpoint"]
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 3])
    os.utime(ckpts / "last.ckpt")  # the newest file, and broken

    more = compose_cfg("debug=limit", "trainer.max_epochs=4", "callbacks=training", "logger=tensorboard",
                       "callbacks.progress_bar.refresh_rate=0", "monitor.metric=val/loss", "monitor.mode=min",
                       "ckpt_path=auto")
    with caplog.at_level(logging.INFO, logger="keel"):
        train(more)
    assert any(r.levelno == logging.WARNING and f"skipping {ckpts / 'last.ckpt'}" in r.message for r in caplog.records)
    m = _json(out / "metrics.json")
    assert m["resumed_from"] == best and m["epochs_trained"] == 4 and m["global_step"] == 40
    assert [a["status"] for a in _json(out / "run.json")["attempts"]] == ["finished", "finished"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert [p.name for p in out.iterdir() if p.name.startswith("tensorboard")] == ["tensorboard"]
    assert len(list(tensorboard_run(out).glob("events.out.tfevents.*"))) >= 2  # one TensorBoard run, two writers
    acc = EventAccumulator(str(tensorboard_run(out)), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("val/loss")]
    assert steps == sorted(set(steps)) and len(steps) == 4, steps  # every epoch once, in order


def test_nan_loss_stops_the_run_naming_the_step(tmp_path):
    run = tmp_path / "run"
    proc = _train_py("optimizer.lr=1e30", "seed=0", *QUIET, f"run_dir={run}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.search(r"^error: non-finite loss at global step \d+ \(epoch 0, batch \d+\); last good checkpoint: none "
                     r"\(no checkpoint written yet\)\. The loss was nan", proc.stderr, re.M), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    record = _json(run / "run.json")
    assert record["status"] == "failed" and record["error"]["type"] == "NonFiniteError"
    assert record["error"]["message"] in proc.stderr and not (run / "metrics.json").exists()


def test_keel_replay_reproduces_a_run(tmp_path, capsys):
    import argparse

    from keel.replay import add_replay_parser

    run = tmp_path / "run"
    proc = _train_py("debug=limit", "seed=5", "trainer.deterministic=true", *QUIET, f"run_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _json(run / "run.json")
    assert record["data"]["kind"] == "arrays" and record["data"]["contract"] == _json(run / "metrics.json")[
        "contract_fingerprint"]
    assert record["git"]["commit"] and record["command"][0] == "train.py"

    parser = argparse.ArgumentParser(prog="keel")
    add_replay_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["replay", str(run), "--tolerance", "0"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "result    : MATCH" in out and "data      : same as the run" in out and "config    : same resolved config" in out
    (replayed,) = (run / "replays").iterdir()
    assert _json(replayed / "metrics.json")["metrics"] == record["metrics"]


def _train_watching(cfg) -> list[tuple[list[int], bool]]:
    """Train an in-process run; return, per training batch, its labels and whether autograd
    anomaly detection was on."""
    import lightning as L

    seen: list[tuple[list[int], bool]] = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((batch[1].tolist(), torch.is_anomaly_enabled()))

    from keel import fit

    original = fit.instantiate_group

    def with_spy(group, what, kwargs_for=None):
        out = original(group, what, kwargs_for)
        return out + [Spy()] if what == "callbacks" else out

    fit.instantiate_group = with_spy
    try:
        train(cfg)
    finally:
        fit.instantiate_group = original
    return seen


def test_debug_overfit_memorizes_the_same_few_batches(compose_cfg):
    cfg = compose_cfg("debug=overfit", "logger=none", "callbacks=training")
    seen = [labels for labels, _ in _train_watching(cfg)]
    m = _json(Path(cfg.paths.output_dir) / "metrics.json")
    assert m["metrics"]["train/acc"] >= 0.99 and m["objective"] == m["metrics"]["train/acc"]
    assert m["global_step"] == 4 * m["epochs_trained"] and m["epochs_trained"] >= 20
    assert seen[:4] * (len(seen) // 4) == seen  # the same 4 batches, in the same order, every epoch


def test_debug_limit_is_a_short_real_run(compose_cfg):
    cfg = compose_cfg("debug=limit", "logger=none", "callbacks=training")
    seen = _train_watching(cfg)
    out = Path(cfg.paths.output_dir)
    m = _json(out / "metrics.json")
    assert m["global_step"] == 30 and m["epochs_trained"] == 3 and cfg.task_name == "debug"
    assert len(seen) == 30 and not any(anomaly for _, anomaly in seen)
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def test_debug_anomaly_trains_with_autograd_anomaly_detection(compose_cfg):
    cfg = compose_cfg("debug=anomaly", "logger=none", "callbacks=training", "trainer.max_epochs=1",
                      "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2")
    seen = _train_watching(cfg)
    assert len(seen) == 3 and all(anomaly for _, anomaly in seen)
    assert not torch.is_anomaly_enabled()  # only while training
