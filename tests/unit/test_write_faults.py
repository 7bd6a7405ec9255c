"""Faults at the file and process level: a kill or a full disk mid-write, resumable loader
positions, SLURM requeue, a run directory two commands want at once."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from keel.callbacks.preemption import _requeue_slurm_job
from keel.checkpoints.write import AtomicCheckpointIO
from keel.data.batches import IndexBatchSampler, ResumableLoader
from keel.errors import DiskFullError
from keel.export.bundle import staged
from keel.atomic import write_atomic, write_json_atomic
from keel.run.resume import find_resume_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _loader(n: int = 50, batch: int = 8, seed: int = 3) -> ResumableLoader:
    return ResumableLoader(TensorDataset(torch.arange(n)), sampler=IndexBatchSampler(n, batch, shuffle=True, seed=seed),
                           batch_size=None)


def test_resumable_loader_continues_an_epoch_with_the_batches_that_follow():
    whole = _loader()
    whole.sampler.set_epoch(2)
    epoch = [b[0].tolist() for b in whole]
    assert len(epoch) == 7 and whole.state_dict() == {"epoch": 2, "batches_done": 7}

    first = _loader()
    first.sampler.set_epoch(2)
    it = iter(first)
    done = [next(it)[0].tolist() for _ in range(3)]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches_done": 3} and done == epoch[:3]

    resumed = _loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    assert [b[0].tolist() for b in resumed] == epoch[3:]
    resumed.sampler.set_epoch(3)  # the next epoch is whole again
    assert len(list(resumed)) == 7


def test_resumable_loader_state_of_a_finished_epoch_starts_the_next_one_whole():
    loader = _loader()
    loader.load_state_dict({"epoch": 2, "batches_done": 7})
    loader.sampler.set_epoch(3)
    assert len(list(loader)) == 7


def test_write_atomic_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    write_atomic(target, lambda f: f.write(b"old complete checkpoint"), mode="wb")

    def half_then_full(f):
        f.write(b"x" * 1000)
        _enospc()

    with pytest.raises(DiskFullError) as info:
        write_atomic(target, half_then_full, mode="wb")
    msg = str(info.value)
    assert f"no space left while writing {target}" in msg and "The previous last.ckpt is intact." in msg
    assert "MiB free on" in msg and "Fix: free disk space" in msg and "ckpt_path=auto" in msg
    assert target.read_bytes() == b"old complete checkpoint"
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_other_os_errors_are_not_reported_as_a_full_disk(tmp_path):
    def denied(f):
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        write_atomic(tmp_path / "a.json", denied)


def test_checkpoint_write_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, path)
    monkeypatch.setattr(torch, "save", _enospc)
    with pytest.raises(DiskFullError, match="The previous last.ckpt is intact"):
        io.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert find_resume_checkpoint(tmp_path.parent / tmp_path.name) is None  # not in a checkpoints/ dir
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_bundle_write_on_a_full_disk_keeps_the_previous_bundle(tmp_path):
    bundle = tmp_path / "bundle"
    with staged(bundle) as d:
        (d / "model.onnx").write_bytes(b"v1 model")
        (d / "manifest.json").write_text('{"version": 1}')
    with pytest.raises(DiskFullError) as info, staged(bundle) as d:
        (d / "model.onnx").write_bytes(b"v2 mod")
        _enospc()
    assert f"The previous bundle {bundle} is intact." in str(info.value)
    assert (bundle / "model.onnx").read_bytes() == b"v1 model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # the staging directory is gone


def test_json_record_on_a_full_disk_with_no_previous_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(DiskFullError, match=r"No run.json was written; the files beside it are untouched"):
        write_json_atomic(tmp_path / "run.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


SLOW_WRITER = textwrap.dedent("""
    import sys, time, torch
    from keel.checkpoints.write import AtomicCheckpointIO
    real_save = torch.save
    def slow_save(obj, f):  # torch.save into the temp file, one small piece at a time
        import io
        buf = io.BytesIO(); real_save(obj, buf); data = buf.getvalue()
        for i in range(0, len(data), 4096):
            f.write(data[i:i + 4096]); f.flush(); time.sleep(0.01)
    torch.save = slow_save
    AtomicCheckpointIO().save_checkpoint({"epoch": 2, "w": torch.zeros(200_000)}, sys.argv[1])
""")


@pytest.mark.integration  # the child imports Lightning: seconds
def test_sigkill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    last = ckpt_dir / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1, "w": torch.ones(200_000), "hyper_parameters": {"net": {}},
                                          "keel": {"contract": {"name": "t"}}}, last)
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(last)], cwd=ROOT)
    tmp = ckpt_dir / f".last.ckpt.{child.pid}.tmp"
    deadline = time.monotonic() + 60
    while not (tmp.exists() and tmp.stat().st_size > 50_000):
        assert child.poll() is None and time.monotonic() < deadline, "the writer ended before it could be killed"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL

    assert tmp.exists()  # the torn write stayed in its temp file...
    assert torch.load(last, weights_only=True)["epoch"] == 1  # ...and the real name holds the whole old one
    assert find_resume_checkpoint(tmp_path).path == last
    assert not tmp.exists()  # the dead writer's temp file is cleaned up when the run resumes


def test_requeue_calls_scontrol_for_the_job_or_array_task(tmp_path, monkeypatch, caplog):
    calls = tmp_path / "calls"
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    with caplog.at_level("WARNING", logger="keel"):
        _requeue_slurm_job()
        monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
        _requeue_slurm_job()
    assert calls.read_text().splitlines() == ["requeue 4242", "requeue 77_3"]
    assert "SLURM job 4242 requeued" in caplog.text


def test_requeue_without_slurm_does_nothing_and_without_scontrol_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    _requeue_slurm_job()
    assert not caplog.records
    monkeypatch.setenv("SLURM_JOB_ID", "5")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level("WARNING", logger="keel"):
        _requeue_slurm_job()
    assert "SLURM job 5: scontrol not found, not requeued" in caplog.text


def test_a_run_dir_locked_by_another_process_is_refused(compose_cfg, tmp_path):
    from keel.pipeline import train
    from keel.run.record import RunStateError

    cfg = compose_cfg("debug=fast", "logger=none")
    run = Path(cfg.paths.output_dir)
    run.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys, time
        f = open({str(run / '.keel.lock')!r}, "a+"); fcntl.lockf(f, fcntl.LOCK_EX)
        print("locked", flush=True); time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunStateError, match=r"is in use: another process holds its lock"):
            train(cfg)
        assert not (run / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


@pytest.mark.parametrize("error", [ConnectionResetError(104, "Connection reset by peer"), EOFError()])
def test_a_worker_dying_mid_handover_is_reported_as_a_dead_worker(tmp_path, error):
    from keel.run.lifecycle import WorkerDiedError
    from keel.run.lifecycle import explain_failure as _explain_failure

    # the error as it surfaces: raised while torch's DataLoader receives a batch
    where = {}
    exec(compile("def _try_get_data(e):\n    raise e\n", "/x/torch/utils/data/dataloader.py", "exec"), where)
    try:
        where["_try_get_data"](error)
    except type(error) as raised:
        explained = _explain_failure(raised, tmp_path)
    assert isinstance(explained, WorkerDiedError)
    assert f"{type(error).__name__} (" in str(explained) and "while receiving a batch from a worker" in str(explained)
    assert "Newest checkpoint: none (no checkpoint written yet)" in str(explained)
    assert _explain_failure(ConnectionResetError(104, "elsewhere"), tmp_path) is None  # not from a DataLoader
