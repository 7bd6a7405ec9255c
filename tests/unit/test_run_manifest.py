"""The run record (run.json), auto-resume's pieces, RNG state in checkpoints, atomic writes, replay."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from keel.callbacks.rng_state import capture_rng_state, restore_rng_state
from keel.checkpoints.write import AtomicCheckpointIO
from keel.atomic import write_json_atomic
from keel.provenance import data_fingerprint, git_info
from keel.run.record import RunRecord as RunManifest
from keel.run.record import read_record as read_manifest
from keel.run.record import run_status
from keel.run.resume import config_differences, find_resume_checkpoint, merge_overrides
from keel.replay import ReplayError, add_replay_parser, compare_metrics, plan_replay, replay_overrides

ROOT = Path(__file__).resolve().parents[2]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------- atomic JSON
def test_write_json_atomic_replaces_whole_file_and_keeps_old_on_failure(tmp_path):
    path = tmp_path / "run.json"
    write_json_atomic(path, {"status": "running"})
    write_json_atomic(path, {"status": "finished", "metrics": {"val/acc": 0.5}})
    assert json.loads(path.read_text()) == {"status": "finished", "metrics": {"val/acc": 0.5}}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"status": object()})  # fails while serializing
    assert json.loads(path.read_text())["status"] == "finished"
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- the record
def test_manifest_lifecycle_start_end_and_resumed_attempts(tmp_path):
    run = tmp_path / "run"
    m = RunManifest(run)
    m.start(config={"seed": 3, "trainer": {"max_epochs": 2}}, overrides=["seed=3"], seed=3, resumed_from=None,
            argv=["train.py", "seed=3"], cwd=ROOT)
    rec = read_manifest(run)
    assert rec["status"] == "running" and rec["ended_at"] is None
    assert rec["command"] == ["train.py", "seed=3"] and rec["overrides"] == ["seed=3"] and rec["seed"] == 3
    assert rec["config"]["trainer"]["max_epochs"] == 2
    assert rec["packages"]["torch"] == torch.__version__ and rec["packages"]["python"]
    assert rec["host"]["pid"] == os.getpid() and rec["host"]["hostname"]
    assert set(rec["git"]) >= {"commit", "dirty", "diff", "diff_truncated"}
    m.update(data={"kind": "arrays", "sha256": "ab"})
    m.end("finished", wall_time_s=1.5, metrics={"val/acc": 0.9}, optimized_metric="val/acc", objective=0.9)
    rec = read_manifest(run)
    assert rec["status"] == "finished" and rec["metrics"] == {"val/acc": 0.9} and rec["objective"] == 0.9
    assert rec["ended_at"] >= rec["started_at"] and rec["data"]["sha256"] == "ab"
    first_start = rec["started_at"]

    # a later start (a resume) keeps the history; an attempt that never ended is marked killed
    again = RunManifest(run)
    again.start(config={}, overrides=[], seed=3, resumed_from="x.ckpt")
    again.start(config={}, overrides=[], seed=3, resumed_from="y.ckpt")
    again.end("failed", wall_time_s=0.1, error=ValueError("loss exploded"))
    rec = read_manifest(run)
    assert rec["started_at"] == first_start and rec["data"]["sha256"] == "ab"
    assert [a["status"] for a in rec["attempts"]] == ["finished", "killed", "failed"]
    assert rec["error"] == {"type": "ValueError", "message": "loss exploded"}
    assert run_status(run)[0] == "failed"
    with pytest.raises(ValueError, match="status='done'"):
        again.end("done", wall_time_s=0)


def test_run_status_of_an_older_run_with_only_metrics_json(tmp_path):
    assert run_status(tmp_path) == (None, None)
    (tmp_path / "metrics.json").write_text(json.dumps({"metrics": {"val/acc": 0.7}, "objective": 0.7}))
    status, rec = run_status(tmp_path)
    assert status == "finished" and rec["metrics"] == {"val/acc": 0.7}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_git_info_commit_dirty_diff_and_cap(tmp_path):
    assert git_info(tmp_path)["commit"] is None  # not a repository
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "first")
    clean = git_info(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False and clean["diff"] == ""
    (tmp_path / "a.txt").write_text("two\n" * 100)
    (tmp_path / "new.txt").write_text("x")
    dirty = git_info(tmp_path)
    assert dirty["dirty"] is True and "+two" in dirty["diff"] and dirty["untracked"] == ["new.txt"]
    cut = git_info(tmp_path, diff_cap=64)
    assert cut["diff_truncated"] is True and len(cut["diff"]) <= 64 and cut["diff_bytes"] > 64


class _ArrayData:
    contract = SimpleNamespace(fingerprint=lambda: "c0ffee")
    source = "embedded"

    def __init__(self, x: np.ndarray):
        self.x = x

    def split_arrays(self, split):
        return self.x, np.arange(len(self.x))

    def split_sizes(self):
        return {"train": len(self.x), "val": len(self.x), "test": len(self.x)}


def test_data_fingerprint_embedded_arrays_and_files(tmp_path):
    x = np.ones((4, 2), dtype=np.float32)
    a = data_fingerprint(_ArrayData(x))
    assert a["kind"] == "arrays" and a["contract"] == "c0ffee" and a["split_sizes"]["train"] == 4
    assert data_fingerprint(_ArrayData(x.copy()))["sha256"] == a["sha256"]
    x2 = x.copy()
    x2[0, 0] = 2
    assert data_fingerprint(_ArrayData(x2))["sha256"] != a["sha256"]

    table = tmp_path / "t.csv"
    table.write_text("a,label\n1,0\n")
    by_path = SimpleNamespace(contract=None, path=str(table))
    f = data_fingerprint(by_path)
    assert f["kind"] == "files" and list(f["files"]) == [str(table.resolve())]
    assert f["files"][str(table.resolve())]["bytes"] == table.stat().st_size
    table.write_text("a,label\n2,0\n")
    assert data_fingerprint(by_path)["sha256"] != f["sha256"]

    idx = {name: tmp_path / name for name in ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    for i, p in enumerate(idx.values()):
        p.write_bytes(bytes([i]) * 10)
    mnist_like = SimpleNamespace(contract=None, files=lambda: idx)
    assert len(data_fingerprint(mnist_like)["files"]) == 4


def test_data_fingerprint_of_real_table_module(tmp_path):
    from keel.data import TableDataModule

    csv = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    csv.write_text("a,label\n" + "".join(f"{rng.normal():.4f},{i % 2}\n" for i in range(60)))
    dm = TableDataModule(path=str(csv), target="label", contract=None)
    dm.setup()
    f = data_fingerprint(dm)
    assert f["kind"] == "files" and f["contract"] == dm.contract.fingerprint()
    import hashlib

    assert f["files"][str(csv.resolve())]["sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- resuming
def _ckpt(path: Path, epoch: int, mtime: int) -> None:
    torch.save({"epoch": epoch, "global_step": epoch * 10, "state_dict": {"w": torch.ones(3)},
                "hyper_parameters": {"net": {}}, "keel": {"contract": {"name": "t"}}}, path)
    os.utime(path, (mtime, mtime))


def test_find_resume_checkpoint_skips_truncated_newest_with_warning(tmp_path, caplog):
    assert find_resume_checkpoint(tmp_path) is None  # no checkpoints/ at all
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    assert find_resume_checkpoint(tmp_path) is None
    _ckpt(ckpts / "epoch001.ckpt", 1, 1_000)
    _ckpt(ckpts / "epoch003.ckpt", 3, 2_000)
    _ckpt(ckpts / "last.ckpt", 4, 3_000)
    found = find_resume_checkpoint(tmp_path)
    assert found.path == ckpts / "last.ckpt" and found.global_step == 40
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])  # torn by a kill
    os.utime(ckpts / "last.ckpt", (3_000, 3_000))
    (ckpts / ".last.ckpt.123.tmp").write_bytes(data)  # a temp file is never a candidate
    with caplog.at_level(logging.WARNING, logger="keel"):
        assert find_resume_checkpoint(tmp_path).path == ckpts / "epoch003.ckpt"
    assert any("skipping" in r.message and "last.ckpt" in r.message and "truncated" in r.message for r in caplog.records)


def test_merge_overrides_keeps_the_run_and_applies_the_new_ones():
    stored = ["seed=3", "model=cnn", "+callbacks.x._target_=a.B", "trainer.max_epochs=6", "run_dir=/old", "ckpt_path=auto"]
    current = ["ckpt_path=auto", "run_dir=/runs/r", "trainer.max_epochs=9", "optimizer=sgd"]
    assert merge_overrides(stored, current) == [
        "seed=3", "model=cnn", "+callbacks.x._target_=a.B", "trainer.max_epochs=9", "run_dir=/runs/r", "ckpt_path=auto",
        "optimizer=sgd",
    ]
    # resume keys come from the command line only
    assert merge_overrides(["seed=1", "ckpt_path=/x.ckpt", "run_dir=/a"], ["seed=2"]) == ["seed=2"]


def test_config_differences_ignores_and_normalizes():
    old = {"seed": 1, "paths": {"output_dir": "/a"}, "cb": {"dirpath": "/a/checkpoints"}, "ckpt_path": None}
    new = {"seed": 2, "paths": {"output_dir": "/b"}, "cb": {"dirpath": "/b/checkpoints"}, "ckpt_path": "x", "extra": {}}
    diffs = config_differences(old, new, ignore=("paths", "ckpt_path"), replace={"/a": "<run>", "/b": "<run>"})
    assert diffs == ["extra: '<absent>' -> {}", "seed: 1 -> 2"]


# ---------------------------------------------------------------------------- RNG state
def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_roundtrips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's state
    state = capture_rng_state()
    expected = _draws()
    torch.save({"callbacks": {"RngState": state}}, tmp_path / "c.ckpt")
    loaded = torch.load(tmp_path / "c.ckpt", weights_only=True)["callbacks"]["RngState"]
    _draws()
    _draws()  # the generators moved on
    restore_rng_state(loaded)
    assert _draws() == expected
    assert isinstance(loaded["numpy"]["keys"], torch.Tensor) and isinstance(loaded["python"]["state"], list)


# ---------------------------------------------------------------------------- atomic checkpoints
def test_atomic_checkpoint_io_keeps_previous_file_when_a_save_dies(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.arange(4)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1

    real_save = torch.save

    def dies_half_way(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped in the middle of writing

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "w": torch.arange(4)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the old one, whole
    assert _leftovers(path.parent) == []


# ---------------------------------------------------------------------------- the pipeline's run-dir rules
def _finished_record(cfg, output: Path, metrics: dict) -> None:
    from omegaconf import OmegaConf

    output.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    write_json_atomic(output / "run.json", {"status": "finished", "config": config, "metrics": metrics,
                                            "started_at": "2026-01-01T00:00:00+00:00", "host": {}})


def test_auto_resume_of_a_finished_run_trains_nothing_and_returns_its_objective(compose_cfg, capsys):
    from keel.pipeline import train

    cfg = compose_cfg("ckpt_path=auto", "trainer.max_epochs=3")
    out = Path(cfg.paths.output_dir)
    cfg_same = compose_cfg("trainer.max_epochs=3")
    cfg_same.run_dir = str(out)
    _finished_record(cfg_same, out, {"val/acc_best": 0.93, "test/acc": 0.91})
    assert train(cfg) == 0.93
    shown = capsys.readouterr().out
    assert "run already finished (ckpt_path=auto)" in shown and "test/acc=0.9100" in shown
    assert not (out / "checkpoints").exists() and not (out / "metrics.json").exists()


def test_a_run_recorded_before_train_metrics_is_still_finished(compose_cfg, capsys):
    """Its recorded config has no model.train_metrics: only logging differs, so it is not continued."""
    from omegaconf import open_dict

    from keel.pipeline import train

    cfg = compose_cfg("ckpt_path=auto", "trainer.max_epochs=3")
    out = Path(cfg.paths.output_dir)
    older = compose_cfg("trainer.max_epochs=3", "model.train_metrics=all")
    older.run_dir = str(out)
    with open_dict(older):
        del older.model["train_metrics"]
    _finished_record(older, out, {"val/acc_best": 0.93, "test/acc": 0.91})
    assert train(cfg) == 0.93
    assert "run already finished (ckpt_path=auto)" in capsys.readouterr().out
    assert not (out / "checkpoints").exists()


def test_a_trial_stopped_by_its_pruner_is_recorded_as_pruned_not_failed(compose_cfg, monkeypatch):
    import optuna

    from keel.callbacks import NanGuard
    from keel.pipeline import train

    def prune(self, trainer, *args):
        if trainer.global_step == 2:
            raise optuna.TrialPruned("trial 3 pruned at epoch 0 (val/acc=0.1)")

    monkeypatch.setattr(NanGuard, "on_train_batch_end", prune)
    cfg = compose_cfg("trainer.max_epochs=2", "callbacks=training", "logger=none")
    with pytest.raises(optuna.TrialPruned):
        train(cfg)
    record = json.loads((Path(cfg.paths.output_dir) / "run.json").read_text())
    assert record["status"] == "pruned" and record["attempts"][-1]["status"] == "pruned"
    assert record["error"] == {"type": "TrialPruned", "message": "trial 3 pruned at epoch 0 (val/acc=0.1)"}


def test_a_job_submitit_starts_again_continues_its_run(compose_cfg, monkeypatch):
    """hydra-submitit-launcher requeues a preempted job with the same overrides in the same job
    directory: the job continues from its last checkpoint instead of being refused."""
    from keel.pipeline import train
    from keel.run.record import RunStateError

    base = ("trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
            "callbacks=training", "logger=none", "callbacks.progress_bar.refresh_rate=0")
    first = compose_cfg("trainer.max_epochs=1", *base)
    train(first)
    run = Path(first.paths.output_dir)
    record = json.loads((run / "run.json").read_text())
    write_json_atomic(run / "run.json", {**record, "status": "interrupted"})  # as a preempted job leaves it
    with pytest.raises(RunStateError, match="already holds a run"):  # a plain second command: refused
        train(compose_cfg("trainer.max_epochs=2", *base))
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    train(compose_cfg("trainer.max_epochs=2", *base))
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["attempts"][-1]["resumed_from"].endswith("last.ckpt")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_a_run_dir_holding_a_run_is_refused_without_ckpt_path(compose_cfg):
    from keel.pipeline import train
    from keel.run.record import RunStateError

    cfg = compose_cfg()
    out = Path(cfg.paths.output_dir)
    _finished_record(cfg, out, {})
    with pytest.raises(RunStateError, match="already holds a run .*Fix: add ckpt_path=auto"):
        train(cfg)


def test_a_run_dir_in_use_by_a_live_process_is_refused(compose_cfg):
    import socket

    from keel.pipeline import train
    from keel.run.record import RunStateError

    cfg = compose_cfg("ckpt_path=auto")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True)
    write_json_atomic(out / "run.json", {"status": "running", "host": {"hostname": socket.gethostname(),
                                                                       "pid": os.getppid()}})
    with pytest.raises(RunStateError, match=f"is in use: process {os.getppid()}"):
        train(cfg)


# ---------------------------------------------------------------------------- replay
def test_compare_metrics_tolerance_nan_and_missing():
    same = compare_metrics({"a": 0.5, "n": float("nan")}, {"a": 0.5 + 5e-7, "n": float("nan")}, 1e-6)
    assert same.ok and same.max_diff == pytest.approx(5e-7)
    off = compare_metrics({"a": 0.5, "b": 1.0}, {"a": 0.52, "c": 1.0}, 1e-6)
    assert not off.ok and [m.name for m in off.failing] == ["a", "b", "c"]
    with pytest.raises(ReplayError, match="tolerance"):
        compare_metrics({}, {}, -1)


def test_replay_overrides_drop_what_continued_the_run(tmp_path):
    run = tmp_path / "run"
    other = tmp_path / "other" / "x.ckpt"
    overrides = ["seed=3", "ckpt_path=auto", f"run_dir={run}", f"hydra.run.dir={run}", "model=cnn"]
    assert replay_overrides(overrides, run) == ["seed=3", "model=cnn"]
    assert replay_overrides([f"ckpt_path={run}/checkpoints/last.ckpt"], run) == []
    assert replay_overrides([f"ckpt_path={other}"], run) == [f"ckpt_path={other}"]


def test_replay_of_a_run_recorded_before_train_metrics_logs_what_it_logged(tmp_path):
    """Such runs logged all six training metrics; the default is now loss and acc."""
    run = tmp_path / "run"
    run.mkdir()
    old = {"train/loss": 0.1, "train/acc": 0.9, "train/f1": 0.9, "train/auroc": 0.99, "val/acc": 0.9}
    record = {"status": "finished", "metrics": old, "overrides": ["seed=3"], "command": ["train.py", "seed=3"],
              "cwd": str(ROOT), "config": {"seed": 3, "model": {"compile": False}}}
    write_json_atomic(run / "run.json", record)
    assert "++model.train_metrics=[loss,acc,f1,auroc]" in plan_replay(run).command
    record["config"]["model"]["train_metrics"] = ["loss", "acc"]  # a run that had the setting: nothing pinned
    write_json_atomic(run / "run.json", record)
    assert not any("train_metrics" in a for a in plan_replay(run).command)
    record["config"]["model"].pop("train_metrics")
    record["overrides"] = ["seed=3", "model.train_metrics=all"]  # set on its command line: kept as it was
    write_json_atomic(run / "run.json", record)
    assert [a for a in plan_replay(run).command if "train_metrics" in a] == ["model.train_metrics=all"]


def _recorded_run(tmp_path: Path, metrics: dict, status: str = "finished") -> Path:
    run = tmp_path / "run"
    run.mkdir()
    write_json_atomic(run / "run.json", {"status": status, "metrics": metrics, "overrides": ["seed=3"],
                                         "command": ["train.py", "seed=3"], "cwd": str(ROOT), "config": {"seed": 3}})
    return run


def _keel(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="keel")
    add_replay_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.mark.parametrize("replayed,code,shown", [
    ({"val/acc": 0.9, "test/acc": 0.8}, 0, "result    : MATCH"),
    ({"val/acc": 0.9, "test/acc": 0.81}, 1, "test/acc  0.8 -> 0.81"),
])
def test_keel_replay_exit_status_by_metric_comparison(tmp_path, monkeypatch, capsys, replayed, code, shown):
    import keel.replay as replay_mod

    run = _recorded_run(tmp_path, {"val/acc": 0.9, "test/acc": 0.8})
    seen = {}

    def fake_train(command, cwd, log_path):
        seen.update(command=command, cwd=cwd)
        new_dir = Path(command[-1].split("=", 1)[1])
        new_dir.mkdir(parents=True, exist_ok=True)
        (new_dir / "metrics.json").write_text(json.dumps({"metrics": replayed}))
        return 0

    monkeypatch.setattr(replay_mod, "_run_train", fake_train)
    assert _keel("replay", str(run), "--output-dir", str(tmp_path / "again")) == code
    out = capsys.readouterr().out
    assert shown in out
    assert seen["command"][:3] == [sys.executable, str(ROOT / "train.py"), "seed=3"]
    assert seen["command"][-1] == f"run_dir={tmp_path / 'again'}" and seen["cwd"] == ROOT


def test_keel_replay_errors_exit_2(tmp_path, monkeypatch, capsys):
    import keel.replay as replay_mod

    assert _keel("replay", str(tmp_path / "nope")) == 2
    assert "no such run directory" in capsys.readouterr().err
    run = _recorded_run(tmp_path, {}, status="running")
    assert _keel("replay", str(run)) == 2
    assert "did not finish (status 'running')" in capsys.readouterr().err
    write_json_atomic(run / "run.json", {"status": "finished", "metrics": {}, "overrides": None, "command": ["pytest"]})
    with pytest.raises(ReplayError, match="no command-line overrides"):
        plan_replay(run)
    write_json_atomic(run / "run.json", {"status": "finished", "metrics": {"a": 1.0}, "overrides": ["seed=1"],
                                         "command": ["train.py"], "cwd": str(ROOT)})
    monkeypatch.setattr(replay_mod, "_run_train", lambda command, cwd, log_path: 3)
    assert _keel("replay", str(run)) == 2
    assert "the replay failed (exit status 3)" in capsys.readouterr().err
