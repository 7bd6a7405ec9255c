"""Which process is rank 0, one run directory for every rank, threads per process (keel.distributed)."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from keel import distributed
from keel.errors import KeelError

_LAUNCHER_ENV = ("TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "WORLD_SIZE",
                 "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT",
                 "OMP_NUM_THREADS")


@pytest.fixture
def env(monkeypatch):
    """A process outside any launcher; ``env(KEY=value, ...)`` sets the launcher's variables."""
    for key in _LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(distributed, "_FROM_RANK_ZERO", {})

    def _set(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)

    return _set


@pytest.mark.parametrize("values,zero", [
    ({}, True),                                                       # a lone process
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, False),                   # Lightning's DDP child
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),                   # another node, Lightning's launcher
    ({"SLURM_PROCID": "3"}, False),                                   # an srun task
    ({"SLURM_PROCID": "0"}, True),
    # torchrun assigns node ranks at rendezvous: its RANK decides, whatever the shell exported
    ({"TORCHELASTIC_RUN_ID": "j", "RANK": "0", "LOCAL_RANK": "0", "SLURM_PROCID": "1", "NODE_RANK": "1"}, True),
    ({"TORCHELASTIC_RUN_ID": "j", "RANK": "1", "LOCAL_RANK": "0", "SLURM_PROCID": "0"}, False),
])
def test_is_rank_zero(env, values, zero):
    env(**values)
    assert distributed.is_rank_zero() is zero


def test_rank_zero_value_is_the_local_value_outside_torchrun(env):
    assert distributed.rank_zero_value("run_dir", "a") == "a"
    env(TORCHELASTIC_RUN_ID="j", RANK="0", WORLD_SIZE="1")  # a one-process torchrun job: nothing to agree on
    assert distributed.rank_zero_value("run_dir", "b") == "b"


def test_every_torchrun_rank_gets_rank_zeros_value(env, monkeypatch):
    from torch.distributed import TCPStore

    server = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    env(TORCHELASTIC_RUN_ID="job", TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RESTART_COUNT="0",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(server.port), WORLD_SIZE="2", RANK="0")
    assert distributed.rank_zero_value("run_dir", "2026-01-01_00-00-00_aaaaaa") == "2026-01-01_00-00-00_aaaaaa"
    # rank 1 (another process in real life) composed its own name; it takes rank 0's
    monkeypatch.setattr(distributed, "_FROM_RANK_ZERO", {})
    env(RANK="1")
    assert distributed.rank_zero_value("run_dir", "2026-01-01_00-00-01_bbbbbb") == "2026-01-01_00-00-00_aaaaaa"
    # one exchange per name and process: a config composed again gets the same answer
    assert distributed.rank_zero_value("run_dir", "2026-01-01_00-00-09_cccccc") == "2026-01-01_00-00-00_aaaaaa"
    # a restarted job (torchrun --max-restarts) agrees on a new value, not the first attempt's
    monkeypatch.setattr(distributed, "_FROM_RANK_ZERO", {})
    monkeypatch.setattr(distributed, "RANK_ZERO_TIMEOUT_S", 0.5)
    env(TORCHELASTIC_RESTART_COUNT="1")
    with pytest.raises(KeelError, match=r"run_dir: rank 1 got no run_dir from rank 0 .* within 0.5 s.*"
                                        r"Fix: give every node the same run_dir=<path>"):
        distributed.rank_zero_value("run_dir", "2026-01-01_00-01-00_dddddd")


def test_rank_zero_value_refuses_when_torchrun_keeps_its_store(env):
    env(TORCHELASTIC_RUN_ID="job", TORCHELASTIC_USE_AGENT_STORE="False", WORLD_SIZE="2", RANK="1",
        MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    with pytest.raises(KeelError, match="cannot agree on one run_dir. Fix: give every node the same run_dir=<path>"):
        distributed.rank_zero_value("run_dir", "x")


def test_other_ranks_stop_writing_the_run_log(tmp_path):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "other"
    run_dir.mkdir()
    elsewhere.mkdir()
    root = logging.getLogger()
    handlers = [logging.FileHandler(run_dir / "train.log"), logging.FileHandler(elsewhere / "x.log")]
    for h in handlers:
        root.addHandler(h)
    try:
        distributed.leave_run_log_to_rank_zero(run_dir)
        assert handlers[0] not in root.handlers and handlers[1] in root.handlers
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()


def test_cpu_threads_share_this_nodes_cores(env, monkeypatch):
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert distributed.cpu_threads_per_process(4) == 4
    assert distributed.cpu_threads_per_process(32) == 1
    env(OMP_NUM_THREADS="2")  # set by you, or by torchrun for several processes per node: kept
    assert distributed.cpu_threads_per_process(4) is None
