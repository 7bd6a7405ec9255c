"""Scale-out: multi-node DDP through a real launcher, and FSDP where CUDA GPUs are visible.

Multi-node: torchrun starts 2 "nodes" x 1 process on this machine. Each node is its own
``python -m torch.distributed.run`` (c10d rendezvous on 127.0.0.1) running ``train.py``
unchanged, as on two hosts. What each worker really did is recorded by a small
``sitecustomize`` that only this test puts on ``PYTHONPATH`` (keel has no test hooks): the rows
its training sampler drew each epoch, and its test metrics after ``Trainer.test``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# Loaded by every process that has this directory on PYTHONPATH; acts only in torchrun workers.
_RECORDER = '''
import json, os

_out = os.environ.get("KEEL_TEST_RECORD")
if _out and "TORCHELASTIC_RUN_ID" in os.environ:
    import lightning.pytorch as pl
    import torch

    from keel.data.batches import IndexBatchSampler

    _file = os.path.join(_out, f"rank{os.environ['RANK']}.jsonl")

    def _record(kind, **payload):
        with open(_file, "a") as f:
            f.write(json.dumps({"kind": kind, **payload}) + "\\n")

    _iter = IndexBatchSampler.__iter__

    def _recorded_iter(self):
        batches = list(_iter(self))
        if self.pad:  # training shards are the padded ones
            _record("train", epoch=self.epoch, n=self.n, rank=self.rank, world_size=self.world_size,
                    rows=torch.cat(batches).tolist())
        yield from batches

    IndexBatchSampler.__iter__ = _recorded_iter
    _test = pl.Trainer.test

    def _recorded_test(self, *args, **kwargs):
        out = _test(self, *args, **kwargs)
        _record("test", global_rank=self.global_rank, world_size=self.world_size,
                environment=type(self.strategy.cluster_environment).__name__,
                metrics={k: float(v) for k, v in self.callback_metrics.items() if k.startswith("test/")},
                confusion=self.lightning_module.confusion.get("test"))
        return out

    pl.Trainer.test = _recorded_test
'''


def _free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now; skips the test when none can be bound."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    except OSError as e:
        pytest.skip(f"cannot bind a TCP port on 127.0.0.1 for torchrun's rendezvous: {e}")


def _records(directory: Path) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for path in sorted(directory.glob("rank*.jsonl")):
        out[int(path.stem.removeprefix("rank"))] = [json.loads(line) for line in path.read_text().splitlines()]
    return out


def test_torchrun_two_nodes_one_run(tmp_path, tensorboard_run):
    out, hook, record = tmp_path / "out", tmp_path / "hook", tmp_path / "record"
    hook.mkdir()
    record.mkdir()
    (hook / "sitecustomize.py").write_text(_RECORDER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p),
        "KEEL_TEST_RECORD": str(record),
        "OMP_NUM_THREADS": "1",  # two "nodes" share this machine's cores
    }
    # The same command on every node; c10d hands out node ranks in order of arrival.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", f"--rdzv-id=keel-{uuid.uuid4().hex[:8]}",
           "train.py", f"paths.log_dir={out}", "trainer.num_nodes=2", "trainer.devices=1", "trainer.accelerator=cpu",
           "trainer.max_epochs=2", "callbacks.progress_bar.refresh_rate=0"]
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        logs = [node.communicate(timeout=240)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-4000:]

    # one run directory, one record, one bundle, one TensorBoard writer
    runs = list((out / "train" / "runs").iterdir())
    assert len(runs) == 1, f"one run directory expected, found {[r.name for r in runs]}"
    run = runs[0]
    assert [p.parent for p in out.rglob("metrics.json")] == [run]
    assert [p.parent.parent for p in out.rglob("manifest.json")] == [run]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert sorted(p.name for p in (run / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    writers = {p.name.split(".")[-2] for p in tensorboard_run(run).glob("events.out.tfevents.*")}
    assert len(writers) == 1, f"more than one process wrote TensorBoard events: {writers}"
    m = json.loads((run / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["bundle"]["parity"]["ok"]
    assert sum(map(sum, m["confusion_matrix"])) == m["split_sizes"]["test"]  # every test row once, both shards

    records = _records(record)
    assert sorted(records) == [0, 1], f"records from ranks {sorted(records)}"
    # both ranks ran under torchrun's environment (not as two separate single-process runs)
    tests = {rank: [r for r in rs if r["kind"] == "test"] for rank, rs in records.items()}
    for rank, (t,) in tests.items():
        assert (t["global_rank"], t["world_size"], t["environment"]) == (rank, 2, "TorchElasticEnvironment")
    # disjoint training shards: each epoch the two ranks split the train rows between them
    n = m["split_sizes"]["train"]
    shard = math.ceil(n / 2)
    for epoch in range(2):
        rows = {rank: next(r["rows"] for r in rs if r["kind"] == "train" and r["epoch"] == epoch)
                for rank, rs in records.items()}
        assert len(rows[0]) == len(rows[1]) == shard
        assert set(rows[0]) | set(rows[1]) == set(range(n))
        # only the padding that evens out an odd split is drawn twice
        assert len(set(rows[0]) & set(rows[1])) == 2 * shard - n
    # ... as each rank tells its own console; the run's log holds rank 0's lines only
    console, run_log = "\n".join(logs), (run / "train.log").read_text()
    for rank in (0, 1):
        assert f"rank {rank} of 2: train shard of {shard} rows of {n} " in console
    # Lightning's own INFO lines stay off the console (keel.run.console), in rank 0's log
    assert "Initializing distributed" not in console
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in run_log and "GLOBAL_RANK: 1" not in run_log
    # metrics reduced across ranks: the same on both, and what rank 0 recorded
    assert tests[0][0]["metrics"] == tests[1][0]["metrics"]
    assert tests[0][0]["confusion"] == tests[1][0]["confusion"] == m["confusion_matrix"]
    assert tests[0][0]["metrics"] == {k: v for k, v in m["metrics"].items() if k.startswith("test/")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's FSDP needs CUDA GPUs (it does not run on CPU)")
def test_fsdp_trains_exports_and_resumes(tmp_path):
    """trainer=fsdp on every visible GPU: a bundle from the gathered weights, one-file checkpoints
    that load with weights_only=True, and ckpt_path=auto continuing the run."""
    base = [sys.executable, "train.py", f"paths.log_dir={tmp_path}", "callbacks.progress_bar.refresh_rate=0"]
    first = subprocess.run([*base, "trainer=fsdp", "trainer.max_epochs=2"], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-4000:]
    (run,) = list((tmp_path / "train" / "runs").iterdir())
    m = json.loads((run / "metrics.json").read_text())
    assert m["world_size"] == torch.cuda.device_count() and m["metrics"]["test/acc"] >= 0.9
    assert m["bundle"]["parity"]["ok"]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    assert "net.layers.1.weight" in state and not any("_fsdp" in k for k in state)  # plain names, full tensors

    resumed = subprocess.run([*base, "ckpt_path=auto", f"run_dir={run}", "trainer.max_epochs=3"], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["epochs_trained"] == 3 and m["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
